"""Separate "hosts" on one machine: a network namespace per host, each with
its own address on a bridge in the root namespace.

Daemons enter only a host's *network* namespace (``nsenter --net``), not a
new mount namespace as ``ip netns exec`` would: a page service's FUSE mount
must be visible to QEMU, which libvirtd starts in the root namespace.
"""

from __future__ import annotations

import contextlib
import dataclasses
import random
import subprocess


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


@dataclasses.dataclass(frozen=True)
class Host:
    name: str
    namespace: str
    address: str

    @property
    def wrapper(self) -> tuple[str, ...]:
        """Command prefix that runs a program on this host's network."""
        return ("nsenter", f"--net=/run/netns/{self.namespace}")

    def sent_bytes(self) -> int:
        """What the host has sent on its link (what its link's end in the
        root namespace received)."""
        with open(f"/sys/class/net/{self.namespace}h/statistics/rx_bytes") as f:
            return int(f.read())


class Network:
    """``tag`` (a few letters or digits) keeps concurrent test classes apart."""

    def __init__(self, tag: str) -> None:
        self.tag = tag[-6:]
        self.bridge = f"ncdbr{self.tag}"
        # A /24 of its own per network, so concurrent classes never clash.
        self.prefix = f"10.{random.randint(100, 250)}.{random.randint(0, 255)}"
        self.gateway = f"{self.prefix}.1"  # the root namespace's address
        self.hosts: list[Host] = []
        _ip("link", "add", self.bridge, "type", "bridge")
        _ip("addr", "add", f"{self.gateway}/24", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")

    def host(self, name: str) -> Host:
        number = len(self.hosts) + 2
        host = Host(name, f"ncd{self.tag}{number}", f"{self.prefix}.{number}")
        outside, inside = f"{host.namespace}h", f"{host.namespace}n"  # see sent_bytes
        _ip("netns", "add", host.namespace)
        self.hosts.append(host)
        _ip("link", "add", outside, "type", "veth", "peer", "name", inside)
        _ip("link", "set", inside, "netns", host.namespace)
        _ip("link", "set", outside, "master", self.bridge, "up")
        for args in (
            ("addr", "add", f"{host.address}/24", "dev", inside),
            ("link", "set", inside, "up"),
            ("link", "set", "lo", "up"),
        ):
            _ip("netns", "exec", host.namespace, "ip", *args)
        return host

    def close(self) -> None:
        for host in self.hosts:
            with contextlib.suppress(subprocess.CalledProcessError):
                _ip("netns", "del", host.namespace)  # takes its veth pair along
        with contextlib.suppress(subprocess.CalledProcessError):
            _ip("link", "del", self.bridge)
