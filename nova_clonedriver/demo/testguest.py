"""Boot the test guest under libvirt as an ordinary master domain.

Its domain is what any user's would be: anonymous RAM, a qcow2 disk, a
virtio NIC (user-mode networking, so no host bridge is needed), a serial
console logged to a file, and the agent's virtio-serial channel.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from xml.sax.saxutils import escape

import libvirt

from nova_clonedriver.demo import agent as agent_mod

CONSOLE_LOG = "console.log"
AGENT_SOCKET = "agent.sock"
DISK_SIZE_MIB = 64


class TestGuestMissing(RuntimeError):
    pass


def guest_dir_default() -> str:
    """$NOVA_CLONE_GUEST_DIR: where tools/build-guest.sh put the test guest
    (an installed package does not know where a checkout is)."""
    guest_dir = os.environ.get("NOVA_CLONE_GUEST_DIR")
    if not guest_dir:
        raise TestGuestMissing(
            "no test guest given: build it with tools/build-guest.sh "
            "and pass its folder (build/guest of the checkout) with "
            "--guest-dir or $NOVA_CLONE_GUEST_DIR"
        )
    return guest_dir


def agent_in(directory: str) -> agent_mod.AgentClient:
    """The agent of the test guest (master or clone) whose files are in
    ``directory``."""
    return agent_mod.AgentClient(os.path.join(directory, AGENT_SOCKET))


def console_log_in(directory: str) -> str:
    return os.path.join(directory, CONSOLE_LOG)


def domain_xml(
    name: str,
    memory_mib: int,
    workdir: str,
    disk_format: str = "qcow2",
    vcpus: int = 1,
    mac: str = "52:54:00:c1:00:01",
    genid: bool = True,
) -> str:
    """``genid``: with a VM generation ID (libvirt makes it)."""
    kernel = os.path.join(workdir, "vmlinuz")
    initrd = os.path.join(workdir, "initrd.img")
    w = escape(workdir)
    return f"""<domain type='qemu'>
  <name>{escape(name)}</name>
  <memory unit='MiB'>{memory_mib}</memory>
  <vcpu>{vcpus}</vcpu>
  {"<genid/>" if genid else ""}
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>{escape(kernel)}</kernel>
    <initrd>{escape(initrd)}</initrd>
    <cmdline>console=ttyS0 quiet</cmdline>
  </os>
  <features><acpi/></features>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='{disk_format}'/>
      <source file='{w}/disk.{disk_format}'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <interface type='user'>
      <mac address='{mac}'/>
      <model type='virtio'/>
    </interface>
    <serial type='file'>
      <source path='{w}/{CONSOLE_LOG}'/>
      <target port='0'/>
    </serial>
    <channel type='unix'>
      <source mode='bind' path='{w}/{AGENT_SOCKET}'/>
      <target type='virtio' name='{agent_mod.AGENT_PORT_NAME}'/>
    </channel>
    <memballoon model='none'/>
  </devices>
</domain>"""


def boot(
    conn: libvirt.virConnect,
    name: str,
    memory_mib: int,
    workdir: str,
    guest_dir: str | None = None,
    disk_format: str = "qcow2",
    genid: bool = True,
) -> tuple[libvirt.virDomain, agent_mod.AgentClient]:
    """Start a transient test guest and wait for its agent."""
    prepare(workdir, guest_dir, disk_format)
    domain = conn.createXML(domain_xml(name, memory_mib, workdir, disk_format, genid=genid), 0)
    client = agent_in(workdir)
    try:
        client.wait_ready()
    except agent_mod.AgentError:
        domain.destroy()
        raise
    return domain, client


def prepare(workdir: str, guest_dir: str | None = None, disk_format: str = "qcow2") -> None:
    """The guest's files in ``workdir`` (domain_xml's): its kernel,
    initramfs and a new, empty disk."""
    os.makedirs(workdir, exist_ok=True)
    os.chmod(workdir, 0o711)
    _copy_boot_files(guest_dir or guest_dir_default(), workdir)
    disk = os.path.join(workdir, f"disk.{disk_format}")
    # A new file, not the old one rewritten: after a bless it is a clone's
    # read-only frozen base.
    with contextlib.suppress(FileNotFoundError):
        os.unlink(disk)
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", disk_format, disk, f"{DISK_SIZE_MIB}M"], check=True
    )


def _copy_boot_files(guest_dir: str, workdir: str) -> None:
    """Next to the disk, where QEMU's user can read them (a checkout under
    /root or a mktemp folder is not reachable for it)."""
    for name in ("vmlinuz", "initrd.img"):
        source = os.path.join(guest_dir, name)
        if not os.path.exists(source):
            raise TestGuestMissing(f"{source} is missing: run tools/build-guest.sh")
        shutil.copyfile(source, os.path.join(workdir, name))


def destroy_all(conn: libvirt.virConnect, name_prefix: str) -> None:
    """Destroy, and undefine if persistent (nova defines its servers), every
    domain whose name starts with ``name_prefix`` (the clean-up of demo,
    tests and benchmarks, which name all they start so)."""
    for domain in conn.listAllDomains():
        if not domain.name().startswith(name_prefix):
            continue
        # Asked before the destroy: a transient domain is gone after it.
        try:
            persistent = domain.isPersistent()
        except libvirt.libvirtError:
            continue  # gone meanwhile (its QEMU ended)
        with contextlib.suppress(libvirt.libvirtError):
            domain.destroy()
        if persistent:
            with contextlib.suppress(libvirt.libvirtError):
                domain.undefine()
