"""Tables from benchmark results, for the terminal and for the docs page."""

from __future__ import annotations

import glob
import json
import os
from typing import Any

from benchmarks import smaps

DOC_DIR = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "doc", "source"
)
RECORDED_DIR = os.path.join(DOC_DIR, "benchmarks")
PAGE = os.path.join(DOC_DIR, "benchmarks.rst")

TITLES = {
    "start": "Start latency",
    "burst": "Burst and density",
    "divergence": "Divergence",
    "pause": "Bless pause",
    "demo": "The demo",
    "nova": "Through nova",
    "remote": "Remote clones",
    "transfer": "Page service throughput (no guest)",
    "hosts": "Clones on many hosts: from the origin or from Swift",
    "debian": "Debian guests: clones against cold boots",
    "cloud": "Debian guests through the one-machine cloud, on a tenant network",
}


PLOTTED = ("burst", "remote")


def _spread(s: dict[str, float]) -> str:
    return f"{s['median']:.0f} ({s['min']:.0f}-{s['max']:.0f}, n={s['n']})"


def _ksm_time(row: dict[str, Any]) -> str:
    if "ksm_converge_s" not in row:
        return "-"
    unfinished = "" if row.get("ksm_converged", True) else " (not converged)"
    return f"{row['ksm_converge_s']}{unfinished} / {row['ksm_cpu_s']}"


def table(result: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    data = result["result"]
    kind = result["scenario"]
    if kind == "start":
        clone = data["clone_to_agent_ms"]["median"]
        rows = [
            [label, _spread(data[key]), f"{data[key]['median'] / clone:.2f}"]
            for label, key in (
                ("clone (launch to agent answer)", "clone_to_agent_ms"),
                ("eager restore of a full save", "eager_restore_to_agent_ms"),
                ("cold boot", "cold_boot_to_agent_ms"),
            )
        ]
        rows.append(["clone (launch to running)", _spread(data["clone_running_ms"]), "1.00"])
        if "eager_restore_running_ms" in data:  # recorded since 2026-12-02
            running = data["clone_running_ms"]["median"]
            rows.append(
                [
                    "eager restore (to running)",
                    _spread(data["eager_restore_running_ms"]),
                    f"{data['eager_restore_running_ms']['median'] / running:.2f}",
                ]
            )
            rows.append(
                [
                    "clone start phases: " + " / ".join(data["clone_phases_ms"]),
                    " / ".join(f"{v:.0f}" for v in data["clone_phases_ms"].values()),
                    "",
                ]
            )
            cpu = data["clone_cpu"]
            rows.append(
                [
                    "host CPU ms of one clone: libvirtd / QEMU until running / "
                    f"its first {cpu['settle_s']:.0f} s running",
                    f"{cpu['libvirtd_ms']} / {cpu['qemu_to_running_ms']} / "
                    f"{cpu['guest_settle_ms']}",
                    "",
                ]
            )
            rows.append(["host CPU % of an idle clone", f"{cpu['idle_percent']}", ""])
        return ["method", "ms: median (min-max)", "x clone"], rows
    if kind == "burst":
        header = [
            "N",
            "guest MiB",
            "clones all running ms (x N=1)",
            "clones all ready ms",
            "clones host MiB (idle / all read)",
            "eager all ready ms",
            "eager host MiB",
            "eager+KSM host MiB",
            "KSM converge s / ksmd CPU s",
            "oversubscription clones (all read)",
        ]
        tb_mib = data.get("tcg_tb_cache_mib")
        if tb_mib:
            header += [
                f"tb-cache {tb_mib} MiB: clones host MiB (idle / all read)",
                f"tb-cache {tb_mib} MiB: oversubscription (all read)",
            ]
        rows = []
        one = next((r["clone_all_running_ms"] for r in data["rows"] if r["count"] == 1), None)
        for row in data["rows"]:
            running = f"{row['clone_all_running_ms']:.0f}"
            line = [
                str(row["count"]),
                str(row["guest_memory_mib"]),
                f"{running} ({row['clone_all_running_ms'] / one:.1f}x)" if one else running,
                f"{row['clone_all_ready_ms']:.0f}",
                f"{row['clone_host_mib_idle']:.0f} / {row['clone_host_mib_after_read']:.0f}",
                f"{row['eager_all_ready_ms']:.0f}" if "eager_all_ready_ms" in row else "-",
                f"{row['eager_host_mib']:.0f}" if "eager_host_mib" in row else "-",
                f"{row['ksm_host_mib']:.0f}" if "ksm_host_mib" in row else "-",
                _ksm_time(row),
                f"{row['guest_memory_mib'] / row['clone_host_mib_after_read']:.1f}x",
            ]
            if tb_mib:
                line += [
                    f"{row['tb_clone_host_mib_idle']:.0f} / "
                    f"{row['tb_clone_host_mib_after_read']:.0f}",
                    f"{row['guest_memory_mib'] / row['tb_clone_host_mib_after_read']:.1f}x",
                ]
            rows.append(line)
        return header, rows
    if kind == "divergence":
        if "step" not in data["rows"][0]:  # recorded before 2026-12-05
            return (
                ["rewritten %", "host MiB per clone"],
                [[str(r["percent"]), f"{r['host_mib_per_clone']:.1f}"] for r in data["rows"]],
            )
        others = smaps.CATEGORIES[1:]  # after the guest RAM
        header = [
            "step",
            "host MiB per clone (PSS)",
            "1st clone, guest RAM: PSS / its own (written) MiB",
            *others,
            "page tables",
        ]
        rows = []
        for r in data["rows"]:
            first = r["first_clone"]
            rows.append(
                [
                    r["step"],
                    f"{r['host_mib_per_clone']:.1f}",
                    f"{first['guest RAM']['pss']} / {first['guest RAM']['private_dirty']}",
                    *(f"{first[c]['pss']}" for c in others),
                    f"{first['page_tables']}",
                ]
            )
        return header, rows
    if kind == "pause":
        return (
            ["guest MiB", "pattern MiB", "master pause ms", "whole bless ms"],
            [
                [
                    str(r["memory_mib"]),
                    str(r["pattern_mib"]),
                    _spread(r["pause_ms"]),
                    _spread(r["bless_total_ms"]),
                ]
                for r in data["rows"]
            ],
        )
    if kind == "demo":
        return (
            [
                "first clone ms",
                "eager restore ms",
                "ratio",
                "median of N ms",
                "bless pause ms",
                "host MiB per clone",
                "oversubscription",
            ],
            [
                [
                    f"{data['first_clone_start_ms']:.0f}",
                    f"{data['eager_restore_ms']:.0f}",
                    f"{data['eager_to_clone_ratio']}",
                    f"{data['clone_start_median_ms']:.0f}",
                    f"{data['bless_pause_ms']}",
                    f"{data['host_memory_mib_per_clone']}",
                    f"{data['oversubscription']}x",
                ]
            ],
        )
    if kind == "nova":
        clones_s = data["rows"][0]["post_to_all_guests_running_s"]
        return (
            [
                "method",
                "servers",
                "POST to all ACTIVE s",
                "POST to all guests running s",
                "x clones (running)",
            ],
            [
                [
                    r["method"],
                    str(r["count"]),
                    f"{r['post_to_all_active_s']}",
                    f"{r['post_to_all_guests_running_s']}",
                    f"{r['post_to_all_guests_running_s'] / clones_s:.2f}",
                ]
                for r in data["rows"]
            ],
        )
    if kind == "remote":
        local = data["local_clone"]
        header = [
            "delay ms each way",
            "prefetch",
            "attach ms (MiB prefetched)",
            "1st clone: start ms / MiB fetched to start / read pattern ms",
            "2nd clone: start ms / MiB fetched / read pattern ms",
            "fetch p50 / p99 ms",
            "bulk MiB/s: prefetch / TCP / TLS",
        ]
        rows = [
            [
                "-",
                "local clone on the origin",
                "-",
                f"{local['start_ms']:.0f} / 0 / {local['read_pattern_ms']:.0f}",
                "-",
                "-",
                "-",
            ]
        ]
        for r in data["rows"]:
            first, second, latency = r["first_clone"], r["second_clone"], r["fetch_latency_ms"]
            rows.append(
                [
                    str(r["delay_ms"]),
                    r["prefetch"],
                    f"{r['attach_ms']:.0f} ({r['prefetched_mib']})",
                    f"{first['start_ms']:.0f} / {first['fetched_mib_to_start']} / "
                    f"{first['read_pattern_ms']:.0f}",
                    f"{second['start_ms']:.0f} / {second['fetched_mib_total']} / "
                    f"{second['read_pattern_ms']:.0f}",
                    f"{latency.get('p50', '-')} / {latency.get('p99', '-')}",
                    f"{r.get('prefetch_mib_s', '-')} / {r['tcp_stream_mib_s']} / "
                    f"{r['tls_stream_mib_s']}",
                ]
            )
        return header, rows
    if kind == "transfer":
        versions = [""] + (["-baseline"] if data.get("baseline") else [])
        header = [
            "delay ms each way",
            "code",
            "streams MiB/s: TCP / TLS",
            "full prefetch MiB/s (x TLS)",
            "reading in order MiB/s (x TLS)",
            "receiving node CPU s per GiB: prefetch / reading",
            "origin CPU s per GiB",
        ]
        rows = [
            [
                str(r["delay_ms"]),
                "this" if not version else f"baseline: {data['baseline']}",
                f"{_spread(r['tcp_mib_s'])} / {_spread(r['tls_mib_s'])}",
                f"{_spread(r[f'prefetch{version}_mib_s'])} ({r[f'prefetch{version}_of_tls']:.2f})",
                f"{_spread(r[f'read{version}_mib_s'])} ({r[f'read{version}_of_tls']:.2f})",
                f"{r[f'prefetch{version}_cpu_s_per_gib']['median']} / "
                f"{r[f'read{version}_cpu_s_per_gib']['median']}",
                f"{r[f'origin{version}_cpu_s_per_gib']['median']}",
            ]
            for r in data["rows"]
            for version in versions
        ]
        return header, rows
    if kind == "hosts":
        killed = {r["path"]: r for r in data["origin_killed"]}
        publish = data["publish"]
        header = [
            "memory from",
            "clones (one per host)",
            "all answering s",
            "all read their pattern s",
            "origin host sent MiB",
            "origin's page service killed before they read: clones that read all of it",
        ]
        rows = [
            [
                "(publishing the generation to Swift, once)",
                "-",
                "-",
                f"{publish['publish_s']} (published)",
                f"{publish['origin_sent_mib']}",
                "-",
            ]
        ]
        for r in data["rows"]:
            survived = killed[r["path"]]
            rows.append(
                [
                    "the origin's page service" if r["path"] == "origin" else "Swift",
                    str(data["hosts"]),
                    f"{r['all_answering_s']}",
                    f"{r['all_read_s']}",
                    f"{r['origin_sent_mib']}",
                    f"{survived['read_their_memory']} of {survived['clones']}",
                ]
            )
        return header, rows
    if kind == "debian":
        clones_s = data["rows"][0]["to_all_http_s"]
        return (
            [
                "method",
                "guests",
                "launch s",
                "to all answering HTTP on their own IP s",
                "x clones (agent)",
                "generation age at launch s",
                "clock skew s at its first answers: median (min to max)",
            ],
            [
                [
                    r["method"],
                    str(data["count"]),
                    "-" if r["launch_s"] is None else f"{r['launch_s']}",
                    f"{r['to_all_http_s']}",
                    f"{r['to_all_http_s'] / clones_s:.2f}",
                    "-" if r["generation_age_s"] is None else f"{r['generation_age_s']}",
                    _skew(r["clock_skew_s"]),
                ]
                for r in data["rows"]
            ],
        )
    if kind == "cloud":
        clones_s = data["rows"][0]["post_to_all_http_s"]
        return (
            [
                "method",
                "servers",
                "POST to all ACTIVE s",
                "POST to all answering HTTP on their port's IP s",
                "x clones (HTTP)",
                "clock skew s at its first answers: median (min to max)",
            ],
            [
                [
                    r["method"],
                    str(data["count"]),
                    f"{r['post_to_all_active_s']}",
                    f"{r['post_to_all_http_s']}",
                    f"{r['post_to_all_http_s'] / clones_s:.2f}",
                    _skew(r["clock_skew_s"]),
                ]
                for r in data["rows"]
            ],
        )
    raise ValueError(f"unknown scenario {kind}")


def _skew(summary: dict[str, float]) -> str:
    return f"{summary['median']:+.1f} ({summary['min']:+.1f} to {summary['max']:+.1f})"


def render_one(result: dict[str, Any]) -> str:
    header, rows = table(result)
    widths = [max(len(c) for c in column) for column in zip(header, *rows, strict=True)]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True))
        for line in [header, *rows]
    ]
    return "\n".join(
        [f"{result['scenario']} ({result['memory_mib']} MiB): {result['command']}", *lines]
    )


def _section(result: dict[str, Any], plot: str | None = None) -> str:
    header, rows = table(result)
    machine = result["machine"]
    title = f"{TITLES[result['scenario']]}, {result['memory_mib']} MiB master"
    csv = "\n".join("   " + ", ".join(f'"{c}"' for c in row) for row in rows)
    header_csv = ", ".join(f'"{h}"' for h in header)
    return (
        f"{title}\n{'-' * len(title)}\n\n"
        f"``{result['command']}`` ({result['started_at']}; {machine['cores']} cores, "
        f"{machine['memory_gib']} GiB, {machine['accelerator']}, {machine['qemu']}, "
        f"libvirt {machine['libvirt']})\n\n"
        + (f"{result['result']['note']}\n\n" if "note" in result["result"] else "")
        + f".. csv-table::\n   :header: {header_csv}\n\n"
        f"{csv}\n" + (f"\n.. image:: benchmarks/plots/{plot}\n" if plot else "")
    )


INTRO = """==========
Benchmarks
==========

Generated by ``python -m benchmarks report`` from the results recorded in
``doc/source/benchmarks/`` (``python -m benchmarks run <scenario> --record``).
Each scenario runs its baselines in the same process, on the same master,
one after another; times are medians with the range over the rounds. The
machine is shared and noisy: compare ratios within one run, not absolute
times across runs. All guests run under TCG (no nested KVM here), which
makes every guest-side step slower than on real hardware.

* **clone**: ``CloneEngine.launch`` of a blessed generation (RAM mapped
  privately from the memory image, nothing copied).
* **eager restore**: libvirt restore of a full save of the same master (all
  RAM read into the new process), each copy with its own identity.
* **cold boot**: the same test guest booted from its kernel.
* **host MiB**: the sum of the QEMU processes' PSS (proportional set size:
  pages shared by k processes count 1/k each, page cache included).

"""


def write() -> None:
    sections = []
    order = list(TITLES)
    for path in sorted(
        glob.glob(os.path.join(RECORDED_DIR, "*.json")),
        key=lambda p: (order.index(os.path.basename(p).split("-")[0]), p),
    ):
        with open(path) as f:
            result = json.load(f)
        # benchmarks/plot.py draws these (tox -e docs runs it first).
        plot = (
            os.path.splitext(os.path.basename(path))[0] + ".png"
            if result["scenario"] in PLOTTED
            else None
        )
        sections.append(_section(result, plot))
    with open(PAGE, "w") as f:
        f.write(INTRO + "\n".join(sections))


if __name__ == "__main__":
    write()
