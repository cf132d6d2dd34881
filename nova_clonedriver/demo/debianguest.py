"""Boot the Debian 12 test guest (tools/build-debian-guest.sh) under libvirt.

Unlike the busybox test guest it runs nothing of ours but a tiny HTTP
service: systemd, ifupdown with DHCP on every NIC, qemu-guest-agent and
openssh-server, as a cloud image does. It sits on a libvirt network with
DHCP (dnsmasq), so every guest, master or clone, takes an address from a
real DHCP server and answers HTTP on it, where the host can reach it.
"""

from __future__ import annotations

from collections.abc import Callable
import contextlib
import json
import os
import shutil
import subprocess
import time
from typing import Any
import urllib.error
import urllib.request
from xml.sax.saxutils import escape

import libvirt

from nova_clonedriver.engine import domainxml

NETWORK_NAME = "nova-clone-test"
NETWORK_BRIDGE = "virbr-nclone"
NETWORK_PREFIX = "192.168.150"
CONSOLE_LOG = "console.log"
IDENTITY_PATH = "/cgi-bin/identity"
KERNEL_FLAVOURS = ("generic", "cloud")  # linux-image-amd64, linux-image-cloud-amd64
_POLL_INTERVAL_S = 0.5


class DebianGuestMissing(RuntimeError):
    pass


def guest_dir_default() -> str:
    guest_dir = os.environ.get("NOVA_CLONE_DEBIAN_GUEST_DIR")
    if not guest_dir:
        raise DebianGuestMissing(
            "no Debian test guest given: build it with tools/build-debian-guest.sh "
            "and pass its folder (build/debian-guest) in $NOVA_CLONE_DEBIAN_GUEST_DIR"
        )
    return guest_dir


def ensure_network(conn: libvirt.virConnect) -> libvirt.virNetwork:
    """The test network (a NAT bridge with DHCP), started if it is not."""
    with contextlib.suppress(libvirt.libvirtError):
        network = conn.networkLookupByName(NETWORK_NAME)
        if not network.isActive():
            network.create()
        return network
    return conn.networkCreateXML(f"""<network>
  <name>{NETWORK_NAME}</name>
  <forward mode='nat'/>
  <bridge name='{NETWORK_BRIDGE}' stp='off'/>
  <ip address='{NETWORK_PREFIX}.1' netmask='255.255.255.0'>
    <dhcp><range start='{NETWORK_PREFIX}.10' end='{NETWORK_PREFIX}.250'/></dhcp>
  </ip>
</network>""")


def domain_xml(
    name: str, memory_mib: int, workdir: str, guest_agent: bool = True, guest_hook: bool = False
) -> str:
    """The domain of a guest whose files prepare() put in ``workdir`` (its
    kernel's flavour among them); ``guest_agent``: with
    qemu-guest-agent's channel (as nova gives images with
    hw_qemu_guest_agent=yes); ``guest_hook``: with tools/guest-hook/
    running in the guest (it is installed, and switched off on the kernel
    command line unless asked for)."""
    w = escape(workdir)
    cmdline = "root=/dev/vda rw console=ttyS0 quiet"
    if not guest_hook:
        cmdline += " nova_clone_hook=off"
    agent = (
        f"""<channel type='unix'>
      <source mode='bind' path='{w}/agent.sock'/>
      <target type='virtio' name='{domainxml.AGENT_CHANNEL_NAME}'/>
    </channel>"""
        if guest_agent
        else ""
    )
    return f"""<domain type='qemu'>
  <name>{escape(name)}</name>
  <memory unit='MiB'>{memory_mib}</memory>
  <vcpu>1</vcpu>
  <genid/>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>{w}/vmlinuz</kernel>
    <initrd>{w}/initrd.img</initrd>
    <cmdline>{cmdline}</cmdline>
  </os>
  <features><acpi/></features>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='{w}/disk.qcow2'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <interface type='network'>
      <mac address='{domainxml.random_mac()}'/>
      <source network='{NETWORK_NAME}'/>
      <model type='virtio'/>
    </interface>
    <serial type='file'>
      <source path='{w}/{CONSOLE_LOG}'/>
      <target port='0'/>
    </serial>
    {agent}
    <memballoon model='none'/>
  </devices>
</domain>"""


def prepare(
    workdir: str, flavour: str, guest_dir: str | None = None, base: str | None = None
) -> None:
    """The guest's files in ``workdir``, where QEMU's user can read them: its
    kernel and initramfs, and a disk of its own on a copy of the built one
    (or on ``base``, another guest's copy: many guests, one copy)."""
    if flavour not in KERNEL_FLAVOURS:
        raise ValueError(f"kernel flavour {flavour!r} is not one of {KERNEL_FLAVOURS}")
    source = guest_dir or guest_dir_default()
    os.makedirs(workdir, exist_ok=True)
    os.chmod(workdir, 0o711)
    copies = [(f"vmlinuz-{flavour}", "vmlinuz"), (f"initrd-{flavour}", "initrd.img")]
    if base is None:
        copies.append(("disk.qcow2", "base.qcow2"))
    for built, copy in copies:
        path = os.path.join(source, built)
        if not os.path.exists(path):
            raise DebianGuestMissing(f"{path} is missing: run tools/build-debian-guest.sh")
        shutil.copyfile(path, os.path.join(workdir, copy))
    disk = os.path.join(workdir, "disk.qcow2")
    if base is None:
        base = os.path.join(workdir, "base.qcow2")
        os.chmod(base, 0o444)
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", base, disk],
        check=True,
    )


def boot(
    conn: libvirt.virConnect,
    name: str,
    memory_mib: int,
    workdir: str,
    flavour: str = "generic",
    guest_agent: bool = True,
    guest_hook: bool = False,
    timeout_s: float = 300,
) -> tuple[libvirt.virDomain, str]:
    """Start a transient Debian guest; returns it and its IPv4 address once
    its HTTP service answers there."""
    prepare(workdir, flavour)
    ensure_network(conn)
    domain = conn.createXML(domain_xml(name, memory_mib, workdir, guest_agent, guest_hook), 0)
    try:
        address = wait_for_address(conn, domain, timeout_s)
        wait_for_identity(address, timeout_s)
    except Exception:
        domain.destroy()
        raise
    return domain, address


def macs(domain: libvirt.virDomain) -> list[str]:
    return [
        mac.get("address", "")
        for mac in domainxml.parse(domain.XMLDesc(0)).iterfind("devices/interface/mac")
    ]


def wait_for_address(
    conn: libvirt.virConnect, domain: libvirt.virDomain, timeout_s: float, mac: str | None = None
) -> str:
    """The IPv4 address the test network's DHCP server leased to the
    domain's (first, or ``mac``) NIC."""
    deadline = time.monotonic() + timeout_s
    network = conn.networkLookupByName(NETWORK_NAME)
    while True:
        wanted = mac or next(iter(macs(domain)), None)
        if wanted:
            leases = network.DHCPLeases(wanted)
            if leases:
                return str(max(leases, key=lambda lease: lease["expirytime"])["ipaddr"])
        if time.monotonic() > deadline:
            raise TimeoutError(f"{domain.name()} got no DHCP lease in {timeout_s:.0f} s")
        time.sleep(_POLL_INTERVAL_S)


def identity(address: str, timeout_s: float = 10) -> dict[str, Any]:
    """What the guest at ``address`` says it is (tools/debian-guest/identity.cgi)."""
    with urllib.request.urlopen(f"http://{address}{IDENTITY_PATH}", timeout=timeout_s) as reply:
        data: dict[str, Any] = json.load(reply)
    return data


def clock_skew_s(
    address: str, tries: int = 3, fetch: Callable[[str], dict[str, Any]] = identity
) -> float:
    """The guest's clock against the host's at the middle of one identity
    request (the guest reads its clock somewhere in it), from the request
    with the shortest round trip of ``tries``: its error is at most half
    of that round trip, which under a loaded TCG host can be seconds.
    ``fetch``: how to ask (default: HTTP from this host)."""
    samples = []
    for _ in range(tries):
        before_s = time.time()
        guest_s = float(fetch(address)["time_s"])
        after_s = time.time()
        samples.append((after_s - before_s, guest_s - (before_s + after_s) / 2))
    return min(samples)[1]


def wait_for_identity(address: str, timeout_s: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return identity(address)
        except (OSError, ValueError, urllib.error.URLError):
            if time.monotonic() > deadline:
                raise
        time.sleep(_POLL_INTERVAL_S)
