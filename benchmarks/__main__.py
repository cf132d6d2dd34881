"""python -m benchmarks run <scenario> [options] | report"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import sys

from benchmarks import common
from benchmarks import report
from benchmarks import scenarios

RESULTS_DIR = os.path.join(os.path.dirname(__file__), "results")
RECORDED_DIR = report.RECORDED_DIR


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",")]


def _without_note(argv: list[str]) -> list[str]:
    """The command as recorded: its ``--note`` is shown apart."""
    kept: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--note":
            skip = True
        elif not arg.startswith("--note="):
            kept.append(arg)
    return kept


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run one scenario")
    run.add_argument(
        "scenario",
        choices=[
            "start",
            "burst",
            "divergence",
            "pause",
            "demo",
            "nova",
            "remote",
            "transfer",
            "hosts",
            "debian",
            "cloud",
        ],
    )
    run.add_argument("--memory-mb", type=int, default=256)
    run.add_argument("--repeat", type=int, default=5, help="start, pause: rounds")
    run.add_argument("--counts", type=_ints, default=[1, 4, 16], help="burst: N list")
    run.add_argument("--no-ksm", action="store_true", help="burst: skip the KSM baseline")
    run.add_argument(
        "--eager-max",
        type=int,
        metavar="N",
        help="burst: eager restores only up to N (larger N would not fit in memory)",
    )
    run.add_argument(
        "--tcg-tb-cache-mib",
        type=int,
        default=0,
        metavar="MIB",
        help="burst: also N clones with this TCG translation cache, in the same run",
    )
    run.add_argument(
        "--clones",
        type=int,
        default=4,
        help="divergence, demo, debian: clones; nova, cloud: servers per request",
    )
    run.add_argument("--percents", type=_ints, default=[1, 10, 50], help="divergence")
    run.add_argument("--sizes", type=_ints, default=[256, 1024], help="pause: MiB list")
    run.add_argument(
        "--delays",
        type=_ints,
        default=[0, 5],
        help="remote, transfer: link delays, ms each way",
    )
    run.add_argument(
        "--record",
        action="store_true",
        help="also keep the result for the docs (doc/source/benchmarks)",
    )
    run.add_argument("--hosts", type=int, default=8, help="hosts: compute hosts")
    run.add_argument(
        "--baseline-checkout",
        metavar="DIR",
        help="transfer: also run the page services of the checkout in DIR, in the same rounds",
    )
    run.add_argument("--json", action="store_true", help="print the result as JSON")
    run.add_argument(
        "--note", help="a sentence for the docs' table of this result (what it is compared with)"
    )
    sub.add_parser("report", help="rewrite doc/source/benchmarks.rst from recorded results")
    sub.add_parser("plot", help="draw PNG plots of recorded results (needs matplotlib)")
    args = parser.parse_args(argv)

    if args.command == "report":
        report.write()
        return 0
    if args.command == "plot":
        from benchmarks import plot

        print("\n".join(plot.write_all()))
        return 0
    started = datetime.datetime.now(datetime.timezone.utc)
    if args.scenario == "start":
        data = scenarios.start_latency(args.memory_mb, args.repeat)
    elif args.scenario == "burst":
        data = scenarios.burst_density(
            args.memory_mb, args.counts, not args.no_ksm, args.eager_max, args.tcg_tb_cache_mib
        )
    elif args.scenario == "divergence":
        data = scenarios.divergence(args.memory_mb, args.clones, args.percents)
    elif args.scenario == "pause":
        data = scenarios.bless_pause(args.sizes, args.repeat)
    elif args.scenario == "remote":
        from benchmarks import remote

        data = remote.run(args.memory_mb, args.delays)
    elif args.scenario == "transfer":
        from benchmarks import transfer

        data = transfer.run(args.memory_mb, args.delays, args.baseline_checkout)
    elif args.scenario == "hosts":
        from benchmarks import hosts

        data = hosts.run(args.memory_mb, args.hosts)
    elif args.scenario == "debian":
        from benchmarks import debian

        data = debian.run(args.memory_mb, args.clones)
    elif args.scenario == "cloud":
        from benchmarks import cloud

        data = cloud.run(args.clones)
    elif args.scenario == "nova":
        from benchmarks import nova_boot  # eventlet-patches this process

        data = nova_boot.run(args.clones)
    else:
        data = scenarios.demo(args.memory_mb, args.clones)
    if args.note:
        data["note"] = args.note
    result = {
        "scenario": args.scenario,
        "memory_mib": args.memory_mb,
        "command": "python -m benchmarks "
        + shlex.join(_without_note(sys.argv[1:] if argv is None else argv)),
        "started_at": started.isoformat(timespec="seconds"),
        "machine": common.machine(),
        "result": data,
    }
    name = f"{args.scenario}-{args.memory_mb}.json"
    for directory in [RESULTS_DIR] + ([RECORDED_DIR] if args.record else []):
        os.makedirs(directory, exist_ok=True)
        with open(os.path.join(directory, name), "w") as f:
            json.dump(result, f, indent=1)
    print(json.dumps(result, indent=1) if args.json else report.render_one(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
