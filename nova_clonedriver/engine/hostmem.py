"""How much host memory QEMU processes and snapshot images really use."""

from __future__ import annotations

from collections.abc import Callable
import os


def mem_available_mib() -> int:
    """The kernel's estimate of memory available without swapping."""
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) // 1024
    raise OSError("no MemAvailable in /proc/meminfo")


def qemu_pid(domain_name: str) -> int | None:
    """PID of a running domain's QEMU (libvirt's pid file)."""
    try:
        with open(f"/run/libvirt/qemu/{domain_name}.pid") as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def domains_pss_mib(domain_names: list[str]) -> float:
    """Host memory the domains' QEMU processes use: the sum of their PSS
    (pages shared by k processes count 1/k each, page cache included)."""
    total_kib = 0
    for name in domain_names:
        pid = qemu_pid(name)
        if pid:
            total_kib += rollup_kib(pid)["Pss"]
    return round(total_kib / 1024, 1)


def rollup_kib(pid: int) -> dict[str, int]:
    """/proc/<pid>/smaps_rollup as numbers (KiB): Rss, Pss, Pss_Anon, ..."""
    values = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            parts = line.split()
            if len(parts) == 3 and parts[2] == "kB":
                values[parts[0].rstrip(":")] = int(parts[1])
    return values


def smaps_kib(pid: int, group: Callable[[list[str]], str | None]) -> dict[str, dict[str, int]]:
    """/proc/<pid>/smaps fields (KiB) summed by group of mappings: ``group``
    names the group of a mapping from the fields of its header line
    (address range, permissions, offset, device, inode, path); None leaves
    the mapping out."""
    totals: dict[str, dict[str, int]] = {}
    current = None
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            parts = line.split()
            if not parts:
                continue
            if "-" in parts[0] and not parts[0].endswith(":"):
                current = group(parts)
            elif current is not None and len(parts) == 3 and parts[2] == "kB":
                values = totals.setdefault(current, {})
                key = parts[0].rstrip(":")
                values[key] = values.get(key, 0) + int(parts[1])
    return totals


def mapping_kib(pid: int, path: str) -> dict[str, int]:
    """smaps fields summed over the process's mappings of ``path``.

    For a clone's mapping of its memory image, Private_Dirty is what the
    guest wrote (its own copies) and Shared_Clean / Private_Clean what it
    reads from the shared page cache."""

    def of_path(fields: list[str]) -> str | None:
        return path if len(fields) >= 6 and os.path.realpath(fields[5]) == path else None

    return smaps_kib(pid, of_path).get(path, {})
