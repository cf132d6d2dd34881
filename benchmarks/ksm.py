"""Linux KSM as the baseline that shares pages after the fact."""

from __future__ import annotations

import os
import time

KSM = "/sys/kernel/mm/ksm"
_SETTINGS = ("run", "pages_to_scan", "sleep_millisecs")


def _read(name: str) -> int:
    with open(os.path.join(KSM, name)) as f:
        return int(f.read())


def _write(name: str, value: int) -> None:
    with open(os.path.join(KSM, name), "w") as f:
        f.write(str(value))


def _ksmd_cpu_s() -> float:
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().split()
        except OSError:
            continue
        if fields[1] == "(ksmd)":
            return (int(fields[13]) + int(fields[14])) / os.sysconf("SC_CLK_TCK")
    return 0.0


_saved: dict[str, int] = {}


def merge_until_converged(timeout_s: float = 600, stable_s: float = 10) -> dict[str, float]:
    """Run KSM flat out until pages_sharing stops growing (by < 1% over
    ``stable_s``) after at least two full scans; return how long it took
    and ksmd's CPU time. (Without the full scans, a ksmd starved by busy
    guests looked "converged" at 0 pages: the N >= 16 rows of one run.)"""
    if not _saved:
        _saved.update({name: _read(name) for name in _SETTINGS})
    cpu_before = _ksmd_cpu_s()
    scans_before = _read("full_scans")
    _write("pages_to_scan", 10000)
    _write("sleep_millisecs", 10)
    _write("run", 1)
    started = time.monotonic()
    last, last_change = 0, started
    converged = False
    while time.monotonic() - started < timeout_s:
        time.sleep(1)
        sharing = _read("pages_sharing")
        if sharing > last * 1.01:
            last, last_change = sharing, time.monotonic()
        elif (
            time.monotonic() - last_change >= stable_s and _read("full_scans") - scans_before >= 2
        ):
            converged = True
            break
    return {
        "seconds": round(last_change - started, 1),
        "converged": converged,
        "ksmd_cpu_s": round(_ksmd_cpu_s() - cpu_before, 1),
        "pages_sharing": _read("pages_sharing"),
    }


def stop() -> None:
    """Unmerge everything and put the host's settings back."""
    _write("run", 2)
    for name, value in _saved.items():
        if name != "run":
            _write(name, value)
    _write("run", _saved.get("run", 0))
    _saved.clear()
