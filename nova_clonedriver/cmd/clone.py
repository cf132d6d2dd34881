"""nova-clone: the operator's CLI, working on libvirt domains directly."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

import libvirt
from oslo_config import cfg
from oslo_log import log as logging

from nova_clonedriver import conf
from nova_clonedriver import demo
from nova_clonedriver.engine import api

CONF = conf.CONF
LOG = logging.getLogger(__name__)
DEFAULT_CONFIG_FILES = ["/etc/nova/nova.conf", "/etc/nova/nova-compute.conf"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nova-clone",
        description="Bless running libvirt domains into live snapshots and "
                    "launch memory-lazy clones of them.")
    parser.add_argument("--config-file", action="append",
                        help="nova config file(s) with a [clone] section "
                             "(default: those of /etc/nova that exist)")
    parser.add_argument("--state-dir", help="snapshot store (overrides [clone] state_dir)")
    parser.add_argument("--debug", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", required=True)

    bless = sub.add_parser("bless", help="freeze a running domain into a snapshot")
    bless.add_argument("domain", help="name of a running libvirt domain")

    launch = sub.add_parser("launch", help="start clones of a snapshot")
    launch.add_argument("snapshot", help="generation id (or a unique prefix)")
    launch.add_argument("--count", type=int, default=1, help="how many clones")
    launch.add_argument("--name-prefix", help="clone names start with this")

    sub.add_parser("list", help="snapshots and their clones")
    sub.add_parser("stats", help="memory use of snapshots and clones")

    discard = sub.add_parser("discard", help="free a snapshot without clones")
    discard.add_argument("snapshot")

    destroy = sub.add_parser("destroy", help="stop a clone and free its overlay")
    destroy.add_argument("clone", help="clone name or UUID")

    run_demo = sub.add_parser("demo", help="boot the test guest, bless it, launch "
                                           "clones, check and measure them")
    run_demo.add_argument("--clones", type=int, default=8)
    run_demo.add_argument("--memory-mb", type=int, default=256)
    run_demo.add_argument("--guest-dir", help="test guest kernel and initrd "
                                              "(default build/guest)")
    run_demo.add_argument("--no-baseline", action="store_true",
                          help="skip the eager-restore baseline")
    for command in (bless, launch, sub.choices["list"], sub.choices["stats"], run_demo):
        command.add_argument("--json", action="store_true", help="print JSON")
    return parser


def _load_config(args: argparse.Namespace) -> None:
    files = args.config_file or [f for f in DEFAULT_CONFIG_FILES if os.path.exists(f)]
    logging.register_options(CONF)
    CONF([], project="nova", default_config_files=files)
    CONF.set_override("debug", args.debug)
    CONF.set_override("use_stderr", True)  # stdout is for results (--json)
    logging.setup(CONF, "nova-clone")
    if args.state_dir:
        CONF.set_override("state_dir", os.path.abspath(args.state_dir), group="clone")


def _engine() -> api.CloneEngine:
    return api.CloneEngine(
        libvirt.open(CONF.clone.libvirt_uri), CONF.clone.state_dir,
        bless_downtime_limit_ms=CONF.clone.bless_downtime_limit_ms,
        bless_timeout_s=CONF.clone.bless_timeout_s,
        launch_parallelism=CONF.clone.launch_parallelism)


def _print(data: Any, as_json: bool, text: str) -> None:
    print(json.dumps(data, indent=2, sort_keys=True) if as_json else text)


def _run(args: argparse.Namespace) -> int:
    if args.command == "demo":
        result = demo.run(libvirt.open(CONF.clone.libvirt_uri), CONF.clone.state_dir,
                          clones=args.clones, memory_mib=args.memory_mb,
                          guest_dir=args.guest_dir, baseline=not args.no_baseline)
        _print(result, args.json, demo.format_table(result))
        return 0 if result["clones_ok"] == result["clones_requested"] else 1
    engine = _engine()
    if args.command == "bless":
        generation = engine.bless(args.domain)
        _print(api.generation_summary(generation), args.json,
               f"snapshot {generation.id} of {generation.source_domain} "
               f"(master paused {generation.pause_ms} ms)")
    elif args.command == "launch":
        clones = engine.launch(args.snapshot, args.count, args.name_prefix)
        _print([c.__dict__ for c in clones], args.json, "\n".join(
            f"{c.name} {c.uuid} running after {c.restore_ms:.0f} ms, "
            f"MAC {','.join(c.mac_addresses) or '-'}" for c in clones))
    elif args.command == "list":
        rows = [{"generation": g.id, "source_domain": g.source_domain,
                 "created_at": g.created_at, "memory_mib": g.memory_bytes >> 20,
                 "clones": [r.name for r in engine.clones(g)]}
                for g in engine.generations()]
        _print(rows, args.json, "\n".join(
            f"{r['generation']}  {r['source_domain']}  {r['memory_mib']} MiB  "
            f"{r['created_at']}  clones: {', '.join(r['clones']) or '-'}"
            for r in rows) or "no snapshots")
    elif args.command == "stats":
        stats = engine.stats()
        _print(stats, args.json, json.dumps(stats, indent=2))
    elif args.command == "discard":
        engine.discard(args.snapshot)
        print(f"discarded {args.snapshot}")
    elif args.command == "destroy":
        engine.destroy_clone(args.clone)
        print(f"destroyed {args.clone}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    _load_config(args)
    try:
        return _run(args)
    except (api.BlessError, api.LaunchError, api.GenerationNotFound,
            api.GenerationInUse, api.CloneNotFound, cfg.Error,
            libvirt.libvirtError) as exc:
        print(f"nova-clone: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
