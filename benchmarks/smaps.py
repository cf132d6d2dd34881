"""Where a QEMU process's host memory goes, by mapping (/proc/PID/smaps).

Categories: the guest's RAM (the mapping of the clone's memory image:
pages read from the shared page cache and pages the guest wrote, its own),
the TCG translation buffer (QEMU's one anonymous rwx mapping), thread
stacks (anonymous mappings of the stack size, 8 MiB, behind a guard page),
QEMU's heap, the other anonymous mappings, and files (QEMU's and its
libraries' code and data); plus the process's page tables (VmPTE).
"""

from __future__ import annotations

import os
from typing import Any

from nova_clonedriver.engine import hostmem

STACK_KIB = 8192
CATEGORIES = ("guest RAM", "TCG buffer", "thread stacks", "heap", "other anonymous", "files")


def _category(fields: list[str], memory_image: str) -> str:
    perms = fields[1]
    path = fields[5] if len(fields) >= 6 else ""
    if path and os.path.realpath(path) == memory_image:
        return "guest RAM"
    if path == "[heap]":
        return "heap"
    if path.startswith("/") and not path.startswith("/memfd"):
        return "files"
    if perms.startswith("rwx"):
        return "TCG buffer"
    start, end = (int(x, 16) for x in fields[0].split("-"))
    if (end - start) // 1024 == STACK_KIB and path == "":
        return "thread stacks"
    return "other anonymous"


def breakdown(pid: int, memory_image: str) -> dict[str, Any]:
    """MiB by category: ``pss`` (shared pages divided among their mappers),
    ``private_dirty`` (pages this process wrote: its own), and for the guest
    RAM ``anon_huge`` (huge pages among them); ``page_tables``."""
    image = os.path.realpath(memory_image)
    found = hostmem.smaps_kib(pid, lambda fields: _category(fields, image))
    totals = {category: found.get(category, {}) for category in CATEGORIES}
    with open(f"/proc/{pid}/status") as f:
        page_tables_kib = next(int(line.split()[1]) for line in f if line.startswith("VmPTE:"))
    result: dict[str, Any] = {
        category: {
            "pss": round(values.get("Pss", 0) / 1024, 1),
            "private_dirty": round(values.get("Private_Dirty", 0) / 1024, 1),
        }
        for category, values in totals.items()
    }
    result["guest RAM"]["anon_huge"] = round(totals["guest RAM"].get("AnonHugePages", 0) / 1024, 1)
    result["page_tables"] = round(page_tables_kib / 1024, 1)
    result["total_pss"] = round(sum(v.get("Pss", 0) for v in totals.values()) / 1024, 1)
    return result
