"""What qemu-guest-agent lets the engine fix in a clone, through libvirt.

A clone resumes at its master's bless instant: its wall clock is as old as
the generation, its hostname is the master's, and a kernel that ignores the
VM generation ID (Debian's cloud kernel is built without CONFIG_VMGENID)
goes on with the master's RNG state, so every sibling draws the same
"random" bytes. Where the guest runs qemu-guest-agent, launch fixes all
three right after the restore, before the clone's own NICs are plugged: its
DHCP request then carries its own hostname, and its kernel's random numbers
are its own before it talks to anyone.

The RNG is reseeded the way the kernel's vmgenid driver does it: fresh
bytes from the host are mixed into the input pool (a write to /dev/urandom)
and the kernel is told to rekey its CRNG from that pool at once
(``RNDRESEEDCRNG``; it would otherwise wait up to a minute). The guest needs
perl for the ioctl (perl-base is in every Debian and Ubuntu install).
"""

from __future__ import annotations

import base64
import json
import logging
import re
import secrets
import time
from typing import Any

import libvirt
import libvirt_qemu

LOG = logging.getLogger(__name__)

CHANNEL_NAME = "org.qemu.guest_agent.0"
RESEED_BYTES = 64
_POLL_INTERVAL_S = 0.05
_RNDRESEEDCRNG = 0x5207  # _IO('R', 0x07), linux/random.h
_RESEED_SCRIPT = (
    'open(my $u, ">", "/dev/urandom") or die "/dev/urandom: $!\\n";'
    f'binmode STDIN; read(STDIN, my $seed, {RESEED_BYTES}) == {RESEED_BYTES} or die "short seed";'
    f'syswrite($u, $seed) == {RESEED_BYTES} or die "write: $!\\n";'
    f'ioctl($u, {_RNDRESEEDCRNG}, 0) or die "RNDRESEEDCRNG: $!\\n";'
)
# Writes the name where Debian and most distributions keep it, then sets it.
_HOSTNAME_SCRIPT = 'printf "%s\\n" "$1" > /etc/hostname && hostname "$1"'
_HOSTNAME_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")
# The kernel's vmgenid driver binds the ACPI device QEMU's vmgenid is.
_VMGENID_PROBE = "ls /sys/bus/acpi/drivers/vmgenid 2>/dev/null | grep -q '^QEMUVGID:'"


class AgentError(RuntimeError):
    """The guest agent did not answer, or a command in the guest failed."""


def is_valid_hostname(name: str) -> bool:
    """RFC 1123: dot-separated labels of letters, digits and inner hyphens."""
    return len(name) <= 253 and all(_HOSTNAME_LABEL.match(label) for label in name.split("."))


def _guest_text(text: str, limit: int = 300) -> str:
    """What a guest says, fit for a log line: printable, one line, short
    (the guest is the tenant's, and may lie or forge log lines)."""
    printable = "".join(c if c.isprintable() else " " for c in text)
    return " ".join(printable.split())[:limit]


def _message(exc: libvirt.libvirtError) -> str:
    return exc.get_error_message() or str(exc)


class GuestAgent:
    """The qemu-guest-agent of one running domain."""

    def __init__(self, domain: libvirt.virDomain, command_timeout_s: int = 10) -> None:
        self._domain = domain
        self._timeout_s = command_timeout_s

    def command(self, name: str, **arguments: Any) -> Any:
        request: dict[str, Any] = {"execute": name}
        if arguments:
            request["arguments"] = arguments
        try:
            raw = libvirt_qemu.qemuAgentCommand(
                self._domain, json.dumps(request), self._timeout_s, 0
            )
        except libvirt.libvirtError as exc:
            raise AgentError(f"guest agent {name}: {_message(exc)}") from exc
        try:
            reply = json.loads(raw)
        except ValueError as exc:
            raise AgentError(f"guest agent {name}: a reply that is not JSON") from exc
        if not isinstance(reply, dict):
            raise AgentError(f"guest agent {name}: a reply that is not a JSON object")
        return reply.get("return")

    def _object(self, name: str, **arguments: Any) -> dict[str, Any]:
        """A command whose reply must be an object (the guest, not we,
        decides what comes back: check before use)."""
        reply = self.command(name, **arguments)
        if not isinstance(reply, dict):
            raise AgentError(f"guest agent {name}: unexpected reply {_guest_text(str(reply))!r}")
        return reply

    def wait_connected(self, timeout_s: float) -> float:
        """Wait until the agent answers; returns the seconds it took. A
        restored guest's agent answers once libvirt has reconnected its
        channel and the agent has read its next request."""
        started = time.monotonic()
        while True:
            try:
                self.command("guest-ping")
                return time.monotonic() - started
            except AgentError as exc:
                if time.monotonic() - started > timeout_s:
                    raise AgentError(
                        f"guest agent of {self._domain.name()} did not answer "
                        f"in {timeout_s:.0f} s: {exc}"
                    ) from exc
            time.sleep(_POLL_INTERVAL_S)

    def run(self, path: str, args: list[str], stdin: bytes = b"") -> bytes:
        """Run a program in the guest (guest-exec); returns its output.
        Raises AgentError when it does not exit 0 in the command timeout."""
        arguments: dict[str, Any] = {"path": path, "arg": args, "capture-output": True}
        if stdin:
            arguments["input-data"] = base64.b64encode(stdin).decode()
        pid = self._object("guest-exec", **arguments).get("pid")
        if not isinstance(pid, int):
            raise AgentError(f"guest agent guest-exec: no process id for {path}")
        deadline = time.monotonic() + self._timeout_s
        while True:
            status = self._object("guest-exec-status", pid=pid)
            if status.get("exited"):
                break
            if time.monotonic() > deadline:
                raise AgentError(f"{path} in the guest did not exit in {self._timeout_s} s")
            time.sleep(_POLL_INTERVAL_S)
        try:
            output = base64.b64decode(str(status.get("out-data", "")), validate=True)
            errors = base64.b64decode(str(status.get("err-data", "")), validate=True)
        except ValueError as exc:
            raise AgentError(f"guest agent guest-exec-status: bad output of {path}") from exc
        if status.get("exitcode") != 0:
            raise AgentError(
                f"{path} in the guest failed (exit code "
                f"{_guest_text(str(status.get('exitcode')))}): "
                f"{_guest_text(errors.decode(errors='replace'))}"
            )
        return output

    def kernel_uses_genid(self) -> bool:
        """Whether the guest's kernel reacts to a new VM generation ID."""
        try:
            self.run("/bin/sh", ["-c", _VMGENID_PROBE])
        except AgentError:
            return False
        return True

    def reseed_rng(self) -> None:
        """Give the guest's kernel RNG host randomness and rekey it now."""
        self.run("/usr/bin/perl", ["-e", _RESEED_SCRIPT], secrets.token_bytes(RESEED_BYTES))

    def set_time(self) -> None:
        """Set the guest's clock to the host's (as nova's sync_guest_time)."""
        now = time.time()
        seconds = int(now)
        try:
            self._domain.setTime({"seconds": seconds, "nseconds": int((now - seconds) * 1e9)}, 0)
        except libvirt.libvirtError as exc:
            raise AgentError(f"setting the guest's clock: {_message(exc)}") from exc

    def set_hostname(self, hostname: str) -> None:
        if not is_valid_hostname(hostname):
            raise AgentError(f"{hostname!r} is not a valid hostname")
        self.run("/bin/sh", ["-c", _HOSTNAME_SCRIPT, "sh", hostname])
