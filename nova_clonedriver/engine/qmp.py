"""The few QMP commands bless needs and libvirt has no API for.

libvirt cannot stream a running domain's migration into a pipe we read, nor
pause it just before switch-over; QMP passthrough can. libvirt records the
domain as tainted ("custom-monitor") the first time this is used.
"""

from __future__ import annotations

import json
from typing import Any

import libvirt
import libvirt_qemu


class QMPError(RuntimeError):
    pass


def command(
    domain: libvirt.virDomain, name: str, files: list[int] | None = None, **arguments: Any
) -> Any:
    request: dict[str, Any] = {"execute": name}
    if arguments:
        request["arguments"] = arguments
    payload = json.dumps(request)
    try:
        if files:
            raw, _ = libvirt_qemu.qemuMonitorCommandWithFiles(domain, payload, files)
        else:
            raw = libvirt_qemu.qemuMonitorCommand(domain, payload, 0)
    except libvirt.libvirtError as exc:
        raise QMPError(f"QMP {name} failed: {exc}") from exc
    reply = json.loads(raw)
    if "error" in reply:
        raise QMPError(f"QMP {name} failed: {reply['error'].get('desc')}")
    return reply.get("return")
