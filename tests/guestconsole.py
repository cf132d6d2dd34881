"""Talking to the test guest's agent on its serial console from the host,
for tests that reach a guest only through what libvirt gave it (a nova
server's pty and console log)."""

from __future__ import annotations

from collections.abc import Callable
import json
import os
import select
import time
from typing import Any
import uuid
import xml.etree.ElementTree as ET

import libvirt


def request(
    domain: libvirt.virDomain, read_console: Callable[[], str], command: str, timeout_s: float = 30
) -> dict[str, Any]:
    """Type ``<id> <command>`` on the domain's serial console (the pty of the
    live domain) and return the agent's JSON reply, read from the console
    log by ``read_console``.

    The pty stays open until the reply is in: QEMU notices a connected pty
    only by polling (about once a second) and does not read input while
    nobody has it open. What QEMU writes back is drained and dropped;
    virtlogd's console log has it all."""
    pty = ET.fromstring(domain.XMLDesc(0)).find("devices/serial/source").get("path")
    request_id = uuid.uuid4().hex[:8]
    line = f"{request_id} {command}\n".encode()
    marker = f'{{"id":"{request_id}",'
    deadline = time.monotonic() + timeout_s
    next_send = 0.0
    fd = os.open(pty, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
    try:
        while True:
            # Whole lines only: the reply may be half written, and the
            # kernel may print into the middle of it (then it is sent again).
            for output in read_console().split("\n")[:-1]:
                if output.strip().startswith(marker):
                    try:
                        return json.loads(output)
                    except ValueError:
                        pass
            now = time.monotonic()
            if now > deadline:
                raise AssertionError(
                    f"no reply to {command!r} on the console of "
                    f"{domain.name()}: {read_console()[-1000:]!r}"
                )
            if now >= next_send:  # again, in case QEMU was not reading yet
                os.write(fd, line)
                next_send = now + 3
            # (eventlet's green os.read waits for data instead of raising
            # EAGAIN: read only what select says is there.)
            while select.select([fd], [], [], 0)[0]:
                os.read(fd, 4096)
            time.sleep(0.2)
    finally:
        os.close(fd)
