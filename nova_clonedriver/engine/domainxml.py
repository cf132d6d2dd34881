"""Domain XML for a clone, derived from its master's.

A clone is the master's domain with its own identity (name, UUID, VM
generation ID), its own disk overlays and console/channel paths, and guest
RAM backed by the generation's memory image, mapped privately. libvirt has
no element for "RAM from this file, copy-on-write", so the backend is added
on QEMU's command line; QEMU 7.2 lets a later ``-machine memory-backend=``
replace the one libvirt generates.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import random
import xml.etree.ElementTree as ET

QEMU_NS = "http://libvirt.org/schemas/domain/qemu/1.0"
CLONE_RAM_BACKEND_ID = "clone-ram"
AGENT_CHANNEL_NAME = "org.qemu.guest_agent.0"
# sun_path of struct sockaddr_un is 108 bytes, with the terminating zero.
SOCKET_PATH_MAX_BYTES = 107
# What a master's NIC keeps in a clone's restore XML: what the guest's
# device state must find again, and nothing that connects it anywhere.
_ISOLATED_NIC_KEEPS = ("mac", "model", "driver", "address", "alias", "mtu", "rom", "boot")
ET.register_namespace("qemu", QEMU_NS)

_MEMORY_UNITS = {
    "b": 1,
    "bytes": 1,
    "KiB": 1 << 10,
    "k": 1 << 10,
    "MiB": 1 << 20,
    "M": 1 << 20,
    "GiB": 1 << 30,
    "G": 1 << 30,
}


class DomainXMLError(Exception):
    """The master uses something a clone cannot be made of."""


@dataclasses.dataclass(frozen=True)
class DiskInfo:
    target: str
    path: str
    format: str


def parse(xml: str) -> ET.Element:
    return ET.fromstring(xml)


def to_string(root: ET.Element) -> str:
    return ET.tostring(root, encoding="unicode")


def memory_bytes(root: ET.Element) -> int:
    element = root.find("memory")
    if element is None or element.text is None:
        raise DomainXMLError("domain has no <memory>")
    return int(element.text) * _MEMORY_UNITS[element.get("unit", "KiB")]


def vcpus(root: ET.Element) -> int:
    element = root.find("vcpu")
    return int(element.text) if element is not None and element.text else 1


def writable_disks(root: ET.Element) -> list[DiskInfo]:
    """The disks a bless must freeze; refuses kinds it cannot."""
    disks = []
    for disk in root.findall("devices/disk"):
        if disk.find("readonly") is not None or disk.get("device") in ("cdrom", "floppy"):
            continue
        target = disk.find("target")
        source = disk.find("source")
        driver = disk.find("driver")
        if disk.get("type") != "file" or source is None or target is None:
            raise DomainXMLError(
                f"disk {target.get('dev') if target is not None else '?'} is of "
                f"type {disk.get('type')!r}: only file-backed disks can be frozen"
            )
        if disk.find("shareable") is not None:
            raise DomainXMLError(f"disk {target.get('dev')} is shareable")
        fmt = driver.get("type", "raw") if driver is not None else "raw"
        if fmt not in ("raw", "qcow2"):
            raise DomainXMLError(f"disk {target.get('dev')} has format {fmt!r}")
        disks.append(DiskInfo(target.get("dev", ""), source.get("file", ""), fmt))
    return disks


def has_genid(root: ET.Element) -> bool:
    return root.find("genid") is not None


def has_agent_channel(root: ET.Element) -> bool:
    """Whether the domain has qemu-guest-agent's channel (nova adds it for
    images with hw_qemu_guest_agent=yes)."""
    return any(
        target.get("name") == AGENT_CHANNEL_NAME
        for target in root.iterfind("devices/channel/target")
    )


def check_no_memory_balloon(root: ET.Element) -> None:
    """Refuse a domain with a memory balloon (libvirt adds a virtio one
    unless told ``model='none'``; nova writes one with free page reporting
    on). In a clone, QEMU discards what the balloon takes in or the guest
    reports free by punching holes into the RAM's backing file: the
    generation's memory image, which every clone maps. Other clones would
    then read zeros where their memory was, and so would later clones. A
    guest inflates its balloon whenever it likes, so no setting of the
    balloon makes it safe."""
    for balloon in root.iterfind("devices/memballoon"):
        model = balloon.get("model", "")
        if model != "none":
            raise DomainXMLError(
                f"it has a memory balloon (<memballoon model='{model}'>): in a clone, QEMU "
                "would punch holes into the memory image all its clones map. Boot the "
                "master with <memballoon model='none'/> (nova-clonedriver's nova driver "
                "boots every server so: hard-reboot one started before)"
            )


def is_clone(root: ET.Element) -> bool:
    """Whether the domain runs from a generation's memory image."""
    return any(
        f"id={CLONE_RAM_BACKEND_ID}," in (arg.get("value") or "")
        for arg in root.iterfind(f"{{{QEMU_NS}}}commandline/{{{QEMU_NS}}}arg")
    )


def random_mac() -> str:
    """A locally administered MAC in the range libvirt itself uses."""
    return "52:54:00:{:02x}:{:02x}:{:02x}".format(*tuple(random.randbytes(3)))


@dataclasses.dataclass(frozen=True)
class CloneIdentity:
    name: str
    uuid: str
    genid: str
    directory: str
    overlays: dict[str, str]  # disk target -> overlay path


def clone_xml(
    master_xml: str,
    identity: CloneIdentity,
    memory_image: str | None,
    size_bytes: int,
    tcg_tb_cache_mib: int = 0,
) -> str:
    """The restore XML of one clone. Its NICs are the master's, with the
    master's MACs (the device state has them too), but connected to nothing
    and with their link down: launch swaps them for the clone's own once it
    runs, and until then the clone must not talk with its master's address.

    Without ``memory_image`` the clone keeps libvirt's anonymous RAM and
    must be restored from a full stream: an eager copy (the benchmarks'
    baseline). ``tcg_tb_cache_mib``: the translation cache of a TCG clone
    (0: QEMU's default); KVM clones have none."""
    root = parse(master_xml)
    root.attrib.pop("id", None)
    master_name = root.find("name").text or ""  # type: ignore[union-attr]
    root.find("name").text = identity.name  # type: ignore[union-attr]
    master_uuid = root.find("uuid").text  # type: ignore[union-attr]
    root.find("uuid").text = identity.uuid  # type: ignore[union-attr]
    # libvirt refuses a <sysinfo> system UUID other than the domain's (nova
    # writes both, and by default the serial as well): the master's UUID
    # becomes the clone's there too.
    for entry in root.findall("sysinfo/system/entry"):
        if entry.get("name") == "uuid" or entry.text == master_uuid:
            entry.text = identity.uuid
    genid = root.find("genid")
    if genid is not None:
        genid.text = identity.genid
    for disk in root.findall("devices/disk"):
        target = disk.find("target")
        if target is None or target.get("dev") not in identity.overlays:
            continue
        for backing in disk.findall("backingStore"):
            disk.remove(backing)
        source, driver = disk.find("source"), disk.find("driver")
        if source is None or driver is None:
            raise ValueError(f"disk {target.get('dev')} of the domain XML has no source or driver")
        source.set("file", identity.overlays[target.get("dev", "")])
        driver.set("type", "qcow2")
    for kind in ("serial", "console", "channel", "parallel"):
        for device in root.findall(f"devices/{kind}"):
            if device.get("type") in ("file", "unix"):
                for source in device.findall("source"):
                    if source.get("path"):
                        path = _moved(source.get("path", ""), master_name, identity)
                        if device.get("type") == "unix":
                            _check_socket_path(path)
                        source.set("path", path)
            for log in device.findall("log"):
                log.set("file", _moved(log.get("file", ""), master_name, identity))
    devices = root.find("devices")
    for index, interface in enumerate(list(devices if devices is not None else [])):
        if interface.tag == "interface":
            devices[index] = _isolated(interface)  # type: ignore[index]
    if memory_image is not None:
        _add_memory_backend(root, memory_image, size_bytes)
    if tcg_tb_cache_mib and root.get("type") == "qemu":
        _set_tb_cache(root, tcg_tb_cache_mib)
    return to_string(root)


def _isolated(interface: ET.Element) -> ET.Element:
    """The NIC as the same device on an unconnected tap. A tap offers every
    virtio-net feature a bridge or direct backend does, so the master's
    negotiated features still load. User-mode networking (slirp) stays: its
    state is in the device stream, and it is a NAT private to the clone's
    QEMU, not its master's network."""
    kind = "user" if interface.get("type") == "user" else "ethernet"
    isolated = ET.Element("interface", type=kind)
    for tag in _ISOLATED_NIC_KEEPS:
        isolated.extend(copy.deepcopy(element) for element in interface.findall(tag))
    ET.SubElement(isolated, "link", state="down")
    return isolated


def _set_tb_cache(root: ET.Element, size_mib: int) -> None:
    features = root.find("features")
    if features is None:
        features = ET.SubElement(root, "features")
    tcg = features.find("tcg")
    if tcg is None:
        tcg = ET.SubElement(features, "tcg")
    for old in tcg.findall("tb-cache"):
        tcg.remove(old)
    ET.SubElement(tcg, "tb-cache", unit="MiB").text = str(size_mib)


def _moved(path: str, master_name: str, identity: CloneIdentity) -> str:
    """The clone's own file for one of its master's. A file named after the
    master (".<name>." in it) stays in its folder under the clone's name:
    nova puts the guest agent's socket in libvirt's folder as
    org.qemu.guest_agent.0.<domain name>.sock, and the clone's folder (nova's
    instance folder) would make too long a socket path. Any other file
    moves to the clone's folder."""
    base = os.path.basename(path)
    named = f".{master_name}."
    if master_name and named in base:
        renamed = base.replace(named, f".{identity.name}.")
        return os.path.join(os.path.dirname(path), renamed)
    return os.path.join(identity.directory, base)


def _check_socket_path(path: str) -> None:
    """A clear error, before libvirt's: a UNIX socket's path has at most
    SOCKET_PATH_MAX_BYTES (sockaddr_un, without its terminating zero)."""
    if len(os.fsencode(path)) > SOCKET_PATH_MAX_BYTES:
        raise ValueError(
            f"the clone's socket path {path} is longer than {SOCKET_PATH_MAX_BYTES} bytes; "
            "use a shorter clone folder"
        )


def _add_memory_backend(root: ET.Element, memory_image: str, size_bytes: int) -> None:
    commandline = root.find(f"{{{QEMU_NS}}}commandline")
    if commandline is None:
        commandline = ET.SubElement(root, f"{{{QEMU_NS}}}commandline")
    backend = (
        f"memory-backend-file,id={CLONE_RAM_BACKEND_ID},mem-path={memory_image},"
        f"share=off,size={size_bytes}"
    )
    for value in ("-object", backend, "-machine", f"memory-backend={CLONE_RAM_BACKEND_ID}"):
        ET.SubElement(commandline, f"{{{QEMU_NS}}}arg", value=value)


def interfaces(root: ET.Element) -> list[ET.Element]:
    return root.findall("devices/interface")


def mac_of(interface_xml: str) -> str:
    mac = ET.fromstring(interface_xml).find("mac")
    if mac is None or not mac.get("address"):
        raise DomainXMLError(f"interface without a MAC address: {interface_xml}")
    return mac.get("address", "")


def interface_with_mac(interface: ET.Element, mac: str) -> str:
    """A copy of ``interface`` for hot-plugging with a new MAC (libvirt picks
    a fresh PCI slot and alias)."""
    copy = ET.fromstring(ET.tostring(interface))
    for tag in ("address", "alias", "target"):
        for element in copy.findall(tag):
            copy.remove(element)
    copy.find("mac").set("address", mac)  # type: ignore[union-attr]
    return to_string(copy)
