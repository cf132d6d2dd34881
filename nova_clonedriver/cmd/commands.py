"""The commands of nova-clone, registered in setup.cfg under the entry-point
namespace ``nova_clonedriver.cli``.

Each command makes one engine call and hands its result to cliff's
formatters (-f table, json, yaml, value...): a ShowOne for one object, a
Lister for rows, a plain Command when there is nothing to show. Lists and
dicts stay lists and dicts in JSON and YAML; a table shows them as text.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
import dataclasses
from typing import Any
from typing import cast

from cliff import app as cliff_app
from cliff import columns
from cliff import command
from cliff import lister
from cliff import show

from nova_clonedriver.cmd import clone as clone_app
from nova_clonedriver.cmd import progress as progress_mod
from nova_clonedriver.demo import run as demo_mod
from nova_clonedriver.demo import testguest
from nova_clonedriver.engine import api
from nova_clonedriver.pageserver import control
from nova_clonedriver.pageserver.remote import PREFETCH_CHOICES

SNAPSHOT_HELP = (
    "the snapshot: its generation id as 'nova-clone list' shows it, "
    "or any unique prefix of that id"
)


def _whole_number_at_least(minimum: int) -> Callable[[str], int]:
    """An argparse type: a whole number, ``minimum`` or more."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, not {value}")
        return value

    return parse


positive_int = _whole_number_at_least(1)
non_negative_int = _whole_number_at_least(0)


class ListColumn(columns.FormattableColumn[list[Any]]):
    """A list: comma-separated in a table."""

    def human_readable(self) -> str:
        return ", ".join(str(v) for v in self._value) or "-"


class DictColumn(columns.FormattableColumn[dict[str, Any]]):
    """A dict: one "key: value" line per entry in a table."""

    def human_readable(self) -> str:
        return "\n".join(f"{k}: {v}" for k, v in self._value.items()) or "-"


class RecordsColumn(columns.FormattableColumn[list[dict[str, Any]]]):
    """A list of dicts (a snapshot's disks): one line per entry in a table."""

    def human_readable(self) -> str:
        return (
            "\n".join(", ".join(f"{k}={v}" for k, v in item.items()) for item in self._value)
            or "-"
        )


class ProblemsColumn(columns.FormattableColumn[dict[str, list[str]]]):
    """The demo's problems per clone: one line per clone in a table."""

    def human_readable(self) -> str:
        return (
            "\n".join(f"{name}: {'; '.join(problems)}" for name, problems in self._value.items())
            or "none"
        )


class CloneMemoryColumn(columns.FormattableColumn[list[dict[str, Any]]]):
    """stats: each clone's memory, one line per clone in a table."""

    def human_readable(self) -> str:
        lines = []
        for clone in self._value:
            if "qemu_pss_mib" in clone:
                lines.append(
                    f"{clone['name']}: {clone['private_written_mib']} MiB "
                    f"written, {clone['image_resident_mib']} MiB of the "
                    f"snapshot resident, {clone['qemu_pss_mib']} MiB PSS"
                )
            else:
                lines.append(f"{clone['name']}: no QEMU process found")
        return "\n".join(lines) or "-"


def formattable(value: Any) -> Any:
    """Lists and dicts readable in a table, unchanged in JSON and YAML."""
    if isinstance(value, dict):
        return DictColumn(value)
    if isinstance(value, list):
        if value and all(isinstance(v, dict) for v in value):
            return RecordsColumn(value)
        return ListColumn(value)
    return value


class _Base:
    """What every nova-clone command does around its work: read the
    configuration first, and turn the engine's errors into one line on
    stderr and exit status 1 (instead of a log message or a traceback)."""

    app: cliff_app.App
    examples = ""  # the help's epilog
    _error: Exception | None = None  # reported after the output (launch)

    @property
    def cli(self) -> clone_app.CloneApp:
        """The application as its own class (cliff types it as any App)."""
        return cast(clone_app.CloneApp, self.app)

    def get_epilog(self) -> str:
        return self.examples

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        parser = super().get_parser(prog_name)  # type: ignore[misc]
        parser.formatter_class = clone_app.HelpFormatter
        return parser

    @property
    def progress(self) -> progress_mod.Progress:
        return self.cli.progress

    def run(self, parsed_args: argparse.Namespace) -> int:
        try:
            self.cli.setup()
            status = super().run(parsed_args)  # type: ignore[misc]
            if self._error is not None:
                raise self._error
            return status
        except clone_app.ERRORS as exc:
            return self.cli.report_error(exc)


class Bless(_Base, show.ShowOne):
    """Freeze a running domain into a snapshot to start clones from.

    The domain (the master) keeps running: its memory is copied while it
    runs, then it pauses for the last pages (milliseconds; tens of
    milliseconds for a TCG domain) while its disks switch to new overlays,
    and resumes. The snapshot, also called a generation, holds its memory,
    device state and frozen disks in the snapshot store (--state-dir).
    Shows the new snapshot; its "id" (or a unique prefix) names it in the
    other commands.

    Requirements: a running libvirt/QEMU domain with file-backed raw or
    qcow2 disks and a single memory block; with <genid/> in its XML, or its
    clones cannot tell their guest it was cloned (a warning is logged).
    """

    examples = """\
Examples:
  nova-clone bless web                # snapshot the running domain "web"
  nova-clone bless web -f value -c id # only the new snapshot's id (for scripts)
  id=$(nova-clone bless web -f value -c id) && nova-clone launch "$id" --count 4"""

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        parser = super().get_parser(prog_name)
        parser.add_argument(
            "domain", metavar="DOMAIN", help="name of a running libvirt domain (the master)"
        )
        return parser

    def take_action(self, parsed_args: argparse.Namespace) -> tuple[Any, Any]:
        engine = self.cli.engine()
        watch = progress_mod.Stopwatch()
        self.progress(f"blessing {parsed_args.domain}: copying its memory while it runs")
        generation = engine.bless(parsed_args.domain)
        self.progress(
            f"blessed {parsed_args.domain} as snapshot {generation.id} in "
            f"{watch.seconds:.1f} s (master paused {generation.pause_ms:.1f} ms)"
        )
        # The key goes to those who may attach the snapshot on other nodes.
        summary = {**api.generation_summary(generation), "access_key": generation.access_key}
        return tuple(summary), tuple(formattable(v) for v in summary.values())


CLONE_COLUMNS = tuple(f.name for f in dataclasses.fields(api.Clone))


class Launch(_Base, lister.Lister):
    """Start clones of a snapshot.

    Each clone is a new transient libvirt domain that resumes where the
    master was when the snapshot was taken, with its own name, UUID, MAC
    addresses and disk overlay; its memory is shared with the snapshot until
    it writes it. Clones start in parallel (up to [clone]
    launch_parallelism at once). Shows one row per clone: restore_ms is the
    time until it ran, ready_ms until its own NICs were plugged, phases_ms
    where that time went.

    If some clones fail to start, those that did are shown and still run
    (end them with 'nova-clone destroy'); the failed ones leave nothing
    behind, and the exit status is 1.
    """

    examples = """\
Examples:
  nova-clone launch 3f2a                       # one clone of snapshot 3f2a...
  nova-clone launch 3f2a --count 16 --name-prefix web-test
  nova-clone launch 3f2a --count 4 -f value -c name   # only the names"""

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        parser = super().get_parser(prog_name)
        parser.add_argument("snapshot", metavar="SNAPSHOT", help=SNAPSHOT_HELP)
        parser.add_argument(
            "--count",
            type=positive_int,
            default=1,
            metavar="N",
            help="how many clones to start (default: 1)",
        )
        parser.add_argument(
            "--name-prefix",
            metavar="PREFIX",
            help="clone names are PREFIX-<8 hex digits> (default: <master's name>-clone)",
        )
        return parser

    def take_action(self, parsed_args: argparse.Namespace) -> tuple[Any, Any]:
        engine = self.cli.engine()
        count = parsed_args.count
        watch = progress_mod.Stopwatch()
        started = 0

        def on_clone_started(clone: api.Clone) -> None:
            nonlocal started
            started += 1
            self.progress(
                f"clone {started}/{count} running after {clone.restore_ms:.0f} ms: {clone.name}"
            )

        self.progress(f"launching {count} clone(s) of snapshot {parsed_args.snapshot}")
        try:
            clones = engine.launch(
                parsed_args.snapshot,
                count,
                parsed_args.name_prefix,
                on_clone_started=on_clone_started,
            )
        except api.LaunchError as exc:
            if not exc.launched:
                raise
            self._error, clones = exc, exc.launched  # show those that run, then fail
        self.progress(f"{len(clones)} of {count} clone(s) running after {watch.seconds:.1f} s")
        return CLONE_COLUMNS, [
            tuple(formattable(getattr(c, name)) for name in CLONE_COLUMNS) for c in clones
        ]


class ListSnapshots(_Base, lister.Lister):
    """List the snapshots and the clones of each.

    One row per snapshot (generation): its id, the domain it was taken
    from, when, its memory size, and its clones. A clone whose domain is
    gone (destroyed with virsh, or shut down by its guest) is dropped from
    the list and its overlay freed.
    """

    examples = """\
Examples:
  nova-clone list
  nova-clone list -f json
  nova-clone list -f value -c generation   # only the ids"""

    COLUMNS = ("generation", "source_domain", "created_at", "memory_mib", "clone_count", "clones")

    def take_action(self, parsed_args: argparse.Namespace) -> tuple[Any, Any]:
        engine = self.cli.engine()
        rows = []
        for generation in engine.generations():
            names = [ref.name for ref in engine.clones(generation)]
            rows.append(
                (
                    generation.id,
                    generation.source_domain,
                    generation.created_at,
                    generation.memory_bytes >> 20,
                    len(names),
                    ListColumn(names),
                )
            )
        return self.COLUMNS, rows


class Stats(_Base, lister.Lister):
    """Show the host memory used by snapshots and their clones.

    One row per snapshot: memory_mib is the guest's memory,
    image_allocated_mib what its memory image takes on disk,
    image_cached_mib how much of it is in the page cache (shared by all its
    clones). Per clone: MiB it has written (its private memory), MiB of the
    snapshot it has read (resident), and its QEMU's share of host memory
    (PSS). page_service: what this node's page service fetched for the
    snapshot (one of another node) or served of it to each peer node (one
    of this node); empty when the page service does not answer. See also
    'nova-clone page stats'.
    """

    COLUMNS = (
        "generation",
        "source_domain",
        "created_at",
        "memory_mib",
        "image_allocated_mib",
        "image_cached_mib",
        "bless_pause_ms",
        "clones",
        "page_service",
    )

    def take_action(self, parsed_args: argparse.Namespace) -> tuple[Any, Any]:
        try:
            service = self.cli.page_service().stats()
        except control.PageServiceError:
            service = {"remote": {}, "origin": {"generations": {}}}
        rows = []
        for entry in self.cli.engine().stats():
            generation_id = entry["generation"]
            entry["page_service"] = service["remote"].get(
                generation_id, service["origin"]["generations"].get(generation_id, {})
            )
            rows.append(
                tuple(
                    CloneMemoryColumn(entry[c])
                    if c == "clones"
                    else formattable(entry[c])
                    if c == "page_service"
                    else entry[c]
                    for c in self.COLUMNS
                )
            )
        return self.COLUMNS, rows


class Discard(_Base, command.Command):
    """Free a snapshot (refused while any clone of it exists).

    Deletes its memory image, device state and frozen disks. Refused while
    any clone of the snapshot exists (the clones run on its memory and
    disks): end them with 'nova-clone destroy' first. The master it was
    taken from is not touched.
    """

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        parser = super().get_parser(prog_name)
        parser.add_argument("snapshot", metavar="SNAPSHOT", help=SNAPSHOT_HELP)
        return parser

    def take_action(self, parsed_args: argparse.Namespace) -> int:
        self.cli.engine().discard(parsed_args.snapshot)
        self.app.stdout.write(f"discarded {parsed_args.snapshot}\n")
        return 0


class Destroy(_Base, command.Command):
    """End a clone: stop its domain and free its files.

    The snapshot it was started from stays (free it with 'nova-clone
    discard' once it has no clones left).
    """

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        parser = super().get_parser(prog_name)
        parser.add_argument(
            "clone",
            metavar="CLONE",
            help="the clone's name or UUID, as 'nova-clone list' or 'nova-clone launch' show them",
        )
        return parser

    def take_action(self, parsed_args: argparse.Namespace) -> int:
        self.cli.engine().destroy_clone(parsed_args.clone)
        self.app.stdout.write(f"destroyed {parsed_args.clone}\n")
        return 0


class Demo(_Base, show.ShowOne):
    """Fork a test VM into clones, check each one and measure them.

    Boots the test guest (tools/build-guest.sh builds it) as a master, fills
    most of its memory with a pattern, blesses it, launches clones (one
    alone, then the rest together) and checks that every clone carries on
    from the master's state (heartbeat, pattern checksum), has its own MAC
    and its own random numbers. Measures the clones' start times and the
    host memory they use, and, as a baseline, an eager restore of a full
    save of the same master. Then starts two page services of its own
    (node A with the snapshot, node B without) and launches clones on node
    B, whose memory B's page service fetches from A over TLS as they touch
    it. Removes everything it made afterwards. Takes a minute or two.

    Shows the report; the exit status is 1 when any clone had a problem
    (listed under "problems").
    """

    examples = """\
Examples:
  nova-clone demo
  nova-clone demo --clones 16 --memory-mb 1024 -f json"""

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        parser = super().get_parser(prog_name)
        parser.add_argument(
            "--clones",
            type=positive_int,
            default=8,
            metavar="N",
            help="how many clones to launch (default: 8)",
        )
        parser.add_argument(
            "--memory-mb",
            type=positive_int,
            default=256,
            metavar="MIB",
            help="the master's memory in MiB (default: 256)",
        )
        parser.add_argument(
            "--guest-dir",
            metavar="DIR",
            help="test guest kernel and initrd (default: "
            "$NOVA_CLONE_GUEST_DIR; tools/demo.sh sets it "
            "to the checkout's build/guest)",
        )
        parser.add_argument(
            "--no-baseline", action="store_true", help="skip the eager-restore baseline"
        )
        parser.add_argument(
            "--remote-clones",
            type=non_negative_int,
            default=2,
            metavar="N",
            help="clones to launch on node B through the page "
            "service (default: 2; 0 starts no page service)",
        )
        return parser

    def take_action(self, parsed_args: argparse.Namespace) -> tuple[Any, Any]:
        watch = progress_mod.Stopwatch()
        guest_dir = parsed_args.guest_dir or testguest.guest_dir_default()
        self.progress(
            f"demo: booting a {parsed_args.memory_mb} MiB test guest, filling "
            f"its memory, blessing it, then launching {parsed_args.clones} "
            "clone(s) and checking each"
        )
        with self.progress.echo_logs("demo: "):
            result = demo_mod.run(
                self.cli.connection(),
                clone_app.CONF.clone.state_dir,
                clones=parsed_args.clones,
                memory_mib=parsed_args.memory_mb,
                guest_dir=guest_dir,
                baseline=not parsed_args.no_baseline,
                remote_clones=parsed_args.remote_clones,
            )
        ok = result["clones_ok"] + result.get("remote_clones_ok", 0)
        requested = result["clones_requested"] + result.get("remote_clones_requested", 0)
        self.progress(
            f"demo: done in {watch.seconds:.0f} s; {ok} of {requested} clone(s) check out"
        )
        self._all_ok = ok == requested
        names = sorted(result)
        return names, tuple(
            ProblemsColumn(result[n])
            if n in ("problems", "remote_problems")
            else formattable(result[n])
            for n in names
        )

    def run(self, parsed_args: argparse.Namespace) -> int:
        self._all_ok = True
        status = super().run(parsed_args)
        if status == 0 and not self._all_ok:
            return self.cli.fail(
                "the demo found problems with some clones (see 'problems' in its report)"
            )
        return status


class Attach(_Base, show.ShowOne):
    """Present a snapshot of another node here, to launch clones of it.

    Asks this node's page service (nova-clone-pageserver) to open the
    snapshot at its origin node's page service and publish it in this
    node's store; 'nova-clone launch' then starts clones of it whose memory
    (and frozen disks) are fetched on first touch, once per node. The nova
    driver does this by itself for live images of other hosts.
    """

    examples = """\
Examples:
  nova-clone attach 3f2a9c0d1e2b4a5f8c7d6e5f4a3b2c1d --origin 10.0.0.11:8797 --key 9b1e...
  nova-clone attach 3f2a... --origin compute-1:8797 --key 9b1e... --prefetch working-set"""

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        parser = super().get_parser(prog_name)
        parser.add_argument(
            "snapshot",
            metavar="SNAPSHOT",
            help="the snapshot's full generation id (as its origin's "
            "'nova-clone list' or the live image shows it)",
        )
        parser.add_argument(
            "--origin",
            metavar="HOST:PORT",
            required=True,
            help="the page service of the node the snapshot was blessed on",
        )
        parser.add_argument(
            "--key",
            required=True,
            help="the snapshot's access key (access_key in the output "
            "of 'nova-clone bless' on the origin; a live image's "
            "clone_access_key): the origin refuses others",
        )
        parser.add_argument(
            "--prefetch",
            choices=PREFETCH_CHOICES,
            default="none",
            help="fetch up front: nothing (pages on first touch), "
            "the working set the first node's clones touched, "
            "or everything (default: none)",
        )
        return parser

    def take_action(self, parsed_args: argparse.Namespace) -> tuple[Any, Any]:
        reply = self.cli.page_service().attach(
            parsed_args.snapshot, parsed_args.origin, parsed_args.key, parsed_args.prefetch
        )
        return tuple(reply), tuple(formattable(v) for v in reply.values())


class Release(_Base, command.Command):
    """Drop a snapshot of another node from this one (refused while any
    clone here uses it); its origin forgets this node's reference."""

    def get_parser(self, prog_name: str) -> argparse.ArgumentParser:
        parser = super().get_parser(prog_name)
        parser.add_argument(
            "snapshot", metavar="SNAPSHOT", help="the snapshot's full generation id"
        )
        return parser

    def take_action(self, parsed_args: argparse.Namespace) -> int:
        self.cli.page_service().release(parsed_args.snapshot)
        self.app.stdout.write(f"released {parsed_args.snapshot}\n")
        return 0


class PageStats(_Base, lister.Lister):
    """Show what this node's page service fetched and served, per snapshot.

    Remote snapshots (presented here): chunks cached of each file, bytes
    fetched, cache hits, fetch failures, fetch latency p50/p99. Snapshots
    of this node: chunks and bytes served to each peer node; and, of all
    peers, refused TLS handshakes, refused and malformed requests.
    """

    COLUMNS = ("generation", "role", "peer", "counters")

    def take_action(self, parsed_args: argparse.Namespace) -> tuple[Any, Any]:
        stats = self.cli.page_service().stats()
        rows = [
            (generation, "remote", data.pop("origin", "-"), formattable(data))
            for generation, data in stats["remote"].items()
        ]
        for generation, peers in stats["origin"]["generations"].items():
            rows += [
                (generation, "origin", peer, formattable(counters))
                for peer, counters in peers.items()
            ]
        # Refused handshakes and requests are not of one generation or peer.
        rows.append(("-", "origin", "all peers", formattable(stats["origin"]["requests"])))
        return self.COLUMNS, rows
