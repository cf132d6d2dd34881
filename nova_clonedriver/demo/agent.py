"""Client of the test guest's clone agent (tools/guest/clone-agent.c).

Requests are lines ``<id> <command> [args]`` on a virtio-serial port that
libvirt exposes as a unix socket; replies are one JSON line with the same id.
"""

from __future__ import annotations

import itertools
import json
import re
import socket
import time
from typing import Any

AGENT_PORT_NAME = "org.nova-clonedriver.agent.0"
_HEARTBEAT = re.compile(rb"clone-agent hb=(\d+)")


class AgentError(RuntimeError):
    pass


class AgentClient:
    def __init__(self, socket_path: str, timeout_s: float = 60.0) -> None:
        self.socket_path = socket_path
        self.timeout_s = timeout_s
        self._ids = itertools.count(1)
        self._sock: socket.socket | None = None
        self._buffer = b""

    def close(self) -> None:
        if self._sock:
            self._sock.close()
            self._sock = None

    def request(self, command: str, *args: int) -> dict[str, Any]:
        """Send one command; return its reply (raises if the agent says no)."""
        request_id = f"r{next(self._ids)}"
        line = " ".join([request_id, command] + [str(a) for a in args]) + "\n"
        sock = self._connect()
        sock.sendall(line.encode())
        deadline = time.monotonic() + self.timeout_s
        while True:
            while b"\n" not in self._buffer:
                sock.settimeout(max(0.01, deadline - time.monotonic()))
                try:
                    data = sock.recv(65536)
                except TimeoutError as exc:
                    raise AgentError(f"no reply to {command!r} in {self.timeout_s} s") from exc
                if not data:
                    raise AgentError("agent channel closed")
                self._buffer += data
            raw, self._buffer = self._buffer.split(b"\n", 1)
            try:
                reply = json.loads(raw)
            except ValueError:
                continue  # a fragment of a reply meant for an earlier client
            if reply.get("id") != request_id:
                continue
            if not reply.get("ok"):
                raise AgentError(f"agent refused {command!r}: {reply.get('error')}")
            return reply

    def wait_ready(self, timeout_s: float = 120.0) -> dict[str, Any]:
        """Ping until the agent answers (the guest may still be booting)."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                saved, self.timeout_s = self.timeout_s, 2.0
                try:
                    return self.request("ping")
                finally:
                    self.timeout_s = saved
            except (OSError, AgentError):
                self.close()
                if time.monotonic() > deadline:
                    raise AgentError(
                        f"agent at {self.socket_path} not ready after {timeout_s} s"
                    ) from None
                time.sleep(0.5)

    def _connect(self) -> socket.socket:
        if self._sock is None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.connect(self.socket_path)
            self._sock = sock
            self._buffer = b""
        return self._sock


def heartbeats(console_log: str) -> list[int]:
    """The heartbeat counters the agent printed on a console log, in order."""
    with open(console_log, "rb") as f:
        return [int(m.group(1)) for m in _HEARTBEAT.finditer(f.read())]


def first_heartbeats(console_log: str, timeout_s: float = 30) -> list[int]:
    """The heartbeats so far, once there is at least one: the agent beats
    between requests, so a guest busy with a long request (a checksum of
    its whole pattern on a loaded host) may print its first beat late.
    Empty if none came within ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not (beats := heartbeats(console_log)) and time.monotonic() < deadline:
        time.sleep(0.5)
    return beats
