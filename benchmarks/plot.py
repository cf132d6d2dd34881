"""PNG plots of recorded results (``python -m benchmarks plot``; ``tox -e
docs`` runs it before Sphinx). Generated, like the tables, from the JSON in
doc/source/benchmarks/, into doc/source/benchmarks/plots/ (not committed)."""

from __future__ import annotations

import json
import os
from typing import Any

from benchmarks import report

PLOTS_DIR = os.path.join(report.RECORDED_DIR, "plots")


def _by_count(axis: Any, counts: list[int], ylabel: str) -> None:
    """An axis over the burst sizes (log scale, a tick per N) with its legend."""
    axis.set(
        xlabel="VMs launched at once",
        ylabel=ylabel,
        xscale="log",
        xticks=counts,
        xticklabels=[str(c) for c in counts],
    )
    axis.legend(fontsize="small")


def burst(result: dict[str, Any], axes: Any) -> None:
    rows = result["result"]["rows"]
    counts = [r["count"] for r in rows]
    left, right = axes
    for key, label in (
        ("clone_host_mib_idle", "clones (idle)"),
        ("clone_host_mib_after_read", "clones (all read their pattern)"),
        ("eager_host_mib", "eager restores"),
        ("ksm_host_mib", "eager restores + KSM (converged)"),
        ("tb_clone_host_mib_after_read", "clones, smaller TCG translation cache (all read)"),
    ):
        points = [(r["count"], r[key]) for r in rows if key in r]
        left.plot(*zip(*points, strict=True), marker="o", label=label)
    left.plot(counts, [r["guest_memory_mib"] for r in rows], "k--", label="guest memory seen")
    _by_count(left, counts, "host MiB (PSS)")
    for key, label in (("clone_all_ready_ms", "clones"), ("eager_all_ready_ms", "eager")):
        points = [(r["count"], r[key] / 1000) for r in rows if key in r]
        right.plot(*zip(*points, strict=True), marker="o", label=label)
    _by_count(right, counts, "s until all run their agent")


def remote(result: dict[str, Any], axes: Any) -> None:
    data = result["result"]
    rows = data["rows"]
    labels = [f"{r['prefetch']}\n{r['delay_ms']} ms" for r in rows]
    left, right = axes
    positions = range(len(rows))
    left.bar(
        [p - 0.2 for p in positions],
        [r["attach_ms"] for r in rows],
        0.4,
        label="attach (incl. prefetch)",
    )
    left.bar(
        [p + 0.2 for p in positions],
        [r["first_clone"]["start_ms"] for r in rows],
        0.4,
        label="1st clone: launch to agent",
    )
    left.axhline(
        data["local_clone"]["start_ms"],
        color="k",
        linestyle="--",
        label="local clone on the origin",
    )
    left.set(ylabel="ms", xticks=list(positions), xticklabels=labels)
    left.legend(fontsize="small")
    for which, offset in (("first_clone", -0.2), ("second_clone", 0.2)):
        right.bar(
            [p + offset for p in positions],
            [r[which]["read_pattern_ms"] for r in rows],
            0.4,
            label=f"{which.replace('_', ' ')}: read whole pattern",
        )
    right.axhline(
        data["local_clone"]["read_pattern_ms"], color="k", linestyle="--", label="local clone"
    )
    right.set(ylabel="ms", xticks=list(positions), xticklabels=labels)
    right.legend(fontsize="small")


PLOTTERS = {"burst": burst, "remote": remote}
assert set(PLOTTERS) == set(report.PLOTTED)


def write_all() -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    os.makedirs(PLOTS_DIR, exist_ok=True)
    written = []
    for name in sorted(os.listdir(report.RECORDED_DIR)):
        kind = name.split("-")[0]
        if not name.endswith(".json") or kind not in PLOTTERS:
            continue
        with open(os.path.join(report.RECORDED_DIR, name)) as f:
            result = json.load(f)
        figure, axes = pyplot.subplots(1, 2, figsize=(12, 4.5))
        PLOTTERS[kind](result, axes)
        figure.suptitle(
            f"{report.TITLES[kind]}, {result['memory_mib']} MiB master "
            f"({result['machine']['cores']} cores, TCG)"
        )
        figure.tight_layout()
        path = os.path.join(PLOTS_DIR, os.path.splitext(name)[0] + ".png")
        figure.savefig(path, dpi=80)
        pyplot.close(figure)
        written.append(path)
    return written


if __name__ == "__main__":
    for written_path in write_all():
        print(written_path)
