"""Facts about the host's libvirt/QEMU that the engine adapts to."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import libvirt


def qemu_user_ids(conn: libvirt.virConnect) -> tuple[int, int]:
    """uid and gid QEMU runs as (libvirt's DAC base label, e.g. +64055:+107).

    The memory image is handed to QEMU by path on its command line, where
    libvirt does not relabel files, so bless gives it to this user."""
    caps = ET.fromstring(conn.getCapabilities())
    for secmodel in caps.findall("host/secmodel"):
        if secmodel.findtext("model") != "dac":
            continue
        for label in secmodel.findall("baselabel"):
            if label.get("type") in ("qemu", "kvm") and label.text:
                uid, gid = label.text.split(":")
                return int(uid.lstrip("+")), int(gid.lstrip("+"))
    return 0, 0
