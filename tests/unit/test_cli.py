"""nova-clone, run in-process on a fake engine (the engine is tested elsewhere)."""

import io
import json
import logging
import os
import types
from unittest import mock

from cliff import commandmanager
import fixtures
import libvirt
from oslo_config import fixture as config_fixture
import testtools
import yaml

from nova_clonedriver.cmd import clone
from nova_clonedriver.cmd import commands
from nova_clonedriver.engine import api
from nova_clonedriver.engine import launch as launch_mod
from nova_clonedriver.pageserver import control

GEN_ID = "3f2a9c0d" + "0" * 24
OTHER_ID = "77aa0000" + "1" * 24


class TTY(io.StringIO):
    def isatty(self):
        return True


def make_generation(generation_id=GEN_ID, source="web", pause_ms=8.1):
    return api.Generation(
        id=generation_id,
        source_domain=source,
        source_uuid="5d8e-uuid",
        created_at="2026-11-27T10:00:00+00:00",
        memory_bytes=256 << 20,
        vcpus=1,
        machine_type="pc-q35-7.2",
        main_block="pc.ram",
        chunk_size_bytes=1 << 21,
        chunks=["ab"] * 3,
        device_stream_sha256="cd",
        disks=[{"target": "vda", "format": "qcow2", "base": "vda.base"}],
        domain_xml="<domain/>",
        pause_ms=pause_ms,
        has_genid=True,
        access_key="k3y",
        directory="/nowhere",
    )


def make_clone(i, prefix="web-clone"):
    return api.Clone(
        name=f"{prefix}-{i:08x}",
        uuid=f"uuid-{i}",
        generation=GEN_ID,
        mac_addresses=[f"52:54:00:00:00:{i:02x}"],
        restore_ms=800.0 + i,
        ready_ms=900.0 + i,
        phases_ms={"libvirt_restore": 780.0 + i, "nic_swap": 15.0},
    )


def fake_launch(generation_id, count=1, name_prefix=None, specs=None, on_clone_started=None):
    clones = [make_clone(i, name_prefix or "web-clone") for i in range(count)]
    for c in reversed(clones):  # they come up in any order
        if on_clone_started is not None:
            on_clone_started(c)
    return clones


class CLITestCase(testtools.TestCase):
    def setUp(self):
        super().setUp()
        self.useFixture(config_fixture.Config(clone.CONF))
        root = logging.getLogger()
        handlers, level = root.handlers[:], root.level
        self.addCleanup(setattr, root, "handlers", handlers)
        self.addCleanup(root.setLevel, level)
        self.state_dir = self.useFixture(fixtures.TempDir()).path
        self.libvirt_open = self.useFixture(
            fixtures.MockPatch("nova_clonedriver.cmd.clone.libvirt.open")
        ).mock
        self.engine_class = self.useFixture(
            fixtures.MockPatch("nova_clonedriver.engine.api.CloneEngine", autospec=True)
        ).mock
        self.engine = self.engine_class.return_value
        self.engine.launch.side_effect = fake_launch

    def run_cli(self, *argv, stderr=None):
        """(exit status, stdout, stderr) of nova-clone ARGV."""
        clone.CONF.reset()  # a process runs nova-clone once; a test may run it twice
        stdout, stderr = io.StringIO(), stderr or io.StringIO()
        app = clone.CloneApp(stdin=io.StringIO(), stdout=stdout, stderr=stderr)
        try:
            status = app.run(["--state-dir", self.state_dir, *argv])
        except SystemExit as exc:  # argparse: usage errors; --help
            status = exc.code or 0
        return status, stdout.getvalue(), stderr.getvalue()

    def run_ok(self, *argv, **kwargs):
        status, out, err = self.run_cli(*argv, **kwargs)
        self.assertEqual(0, status, err)
        return out, err


class TestList(CLITestCase):
    def setUp(self):
        super().setUp()
        self.engine.generations.return_value = [
            make_generation(),
            make_generation(OTHER_ID, source="db"),
        ]
        self.engine.clones.side_effect = lambda g: [
            types.SimpleNamespace(name=n)
            for n in (["web-clone-1", "web-clone-2"] if g.id == GEN_ID else [])
        ]
        self.expected = [
            {
                "generation": GEN_ID,
                "source_domain": "web",
                "created_at": "2026-11-27T10:00:00+00:00",
                "memory_mib": 256,
                "clone_count": 2,
                "clones": ["web-clone-1", "web-clone-2"],
            },
            {
                "generation": OTHER_ID,
                "source_domain": "db",
                "created_at": "2026-11-27T10:00:00+00:00",
                "memory_mib": 256,
                "clone_count": 0,
                "clones": [],
            },
        ]

    def test_json(self):
        out, _ = self.run_ok("list", "-f", "json")
        self.assertEqual(self.expected, json.loads(out))

    def test_yaml(self):
        out, _ = self.run_ok("list", "-f", "yaml")
        self.assertEqual(self.expected, yaml.safe_load(out))

    def test_table(self):
        out, _ = self.run_ok("list")
        header = out.splitlines()[1]
        for column in commands.ListSnapshots.COLUMNS:
            self.assertIn(f" {column} ", header)
        [row] = [line for line in out.splitlines() if GEN_ID in line]
        self.assertIn("web-clone-1, web-clone-2", row)
        [row] = [line for line in out.splitlines() if OTHER_ID in line]
        self.assertIn("| -", row)  # no clones

    def test_value_of_one_column(self):
        out, _ = self.run_ok("list", "-f", "value", "-c", "generation")
        self.assertEqual([GEN_ID, OTHER_ID], out.split())

    def test_engine_uses_the_state_dir_and_config(self):
        config = os.path.join(self.state_dir, "nova.conf")
        with open(config, "w") as f:
            f.write(
                "[clone]\nlibvirt_uri = test:///default\nlaunch_parallelism = 3\n"
                "tcg_tb_cache_mib = 8\nstate_dir = /not/this/one\n"
            )
        self.run_ok("--config-file", config, "list")
        self.libvirt_open.assert_called_once_with("test:///default")
        self.engine_class.assert_called_once_with(
            self.libvirt_open.return_value,
            self.state_dir,
            bless_options=api.BlessOptions(
                downtime_limit_ms=10, timeout_s=300, max_disk_layers=16
            ),
            launch_options=api.LaunchOptions(
                parallelism=3, tcg_tb_cache_mib=8, agent_timeout_s=60
            ),
        )


class TestLaunch(CLITestCase):
    def test_json(self):
        out, _ = self.run_ok("launch", "3f2a", "--count", "3", "--name-prefix", "t", "-f", "json")
        self.engine.launch.assert_called_once_with("3f2a", 3, "t", on_clone_started=mock.ANY)
        clones = json.loads(out)
        self.assertEqual(["t-00000000", "t-00000001", "t-00000002"], [c["name"] for c in clones])
        self.assertEqual(
            {
                "name": "t-00000001",
                "uuid": "uuid-1",
                "generation": GEN_ID,
                "mac_addresses": ["52:54:00:00:00:01"],
                "restore_ms": 801.0,
                "ready_ms": 901.0,
                "phases_ms": {"libvirt_restore": 781.0, "nic_swap": 15.0},
            },
            clones[1],
        )

    def test_table(self):
        out, _ = self.run_ok("launch", "3f2a", "--count", "2")
        self.assertIn("web-clone-00000001", out)
        self.assertIn("52:54:00:00:00:01", out)
        self.assertNotIn("['52:54", out)  # a list reads as text in a table

    def test_some_clones_failed(self):
        launched = [make_clone(0), make_clone(1)]
        self.engine.launch.side_effect = api.LaunchError(
            "1 of 3 clones failed to start: clone web-clone-2: boom", launched
        )
        status, out, err = self.run_cli("launch", "3f2a", "--count", "3", "-f", "json")
        self.assertEqual(1, status)
        # Those that run are shown, so they can be destroyed.
        self.assertEqual([c.name for c in launched], [c["name"] for c in json.loads(out)])
        self.assertEqual(
            ["nova-clone: error: 1 of 3 clones failed to start: clone web-clone-2: boom"],
            err.splitlines(),
        )

    def test_count_must_be_positive(self):
        with mock.patch("sys.stderr", new_callable=io.StringIO) as usage:
            status, out, _ = self.run_cli("launch", "3f2a", "--count", "0")
        self.assertEqual("", out)
        self.assertEqual(2, status)
        self.assertIn("--count: must be at least 1", usage.getvalue())
        self.engine.launch.assert_not_called()


class TestBless(CLITestCase):
    def setUp(self):
        super().setUp()
        self.engine.bless.return_value = make_generation()

    def test_json(self):
        out, _ = self.run_ok("bless", "web", "-f", "json")
        self.engine.bless.assert_called_once_with("web")
        shown = json.loads(out)
        self.assertEqual(
            {
                **api.generation_summary(make_generation()),
                "access_key": make_generation().access_key,
            },
            shown,
        )
        self.assertNotIn("access_key", api.generation_summary(make_generation()))
        self.assertEqual(GEN_ID, shown["id"])
        self.assertEqual(8.1, shown["pause_ms"])
        self.assertNotIn("domain_xml", shown)
        self.assertEqual(
            [{"target": "vda", "format": "qcow2", "base": "vda.base"}], shown["disks"]
        )

    def test_yaml(self):
        out, _ = self.run_ok("bless", "web", "-f", "yaml")
        self.assertEqual(
            {
                **api.generation_summary(make_generation()),
                "access_key": make_generation().access_key,
            },
            yaml.safe_load(out),
        )

    def test_table(self):
        out, _ = self.run_ok("bless", "web")
        [row] = [line for line in out.splitlines() if "| disks" in line]
        self.assertIn("target=vda, format=qcow2, base=vda.base", row)
        [row] = [line for line in out.splitlines() if "| id " in line]
        self.assertIn(GEN_ID, row)

    def test_value_of_id(self):
        out, _ = self.run_ok("bless", "web", "-f", "value", "-c", "id")
        self.assertEqual(GEN_ID + "\n", out)


class TestStatsAndRemoval(CLITestCase):
    def test_stats_json_keeps_the_clones(self):
        entry = {
            "generation": GEN_ID,
            "source_domain": "web",
            "created_at": "t",
            "memory_mib": 256,
            "image_allocated_mib": 100.0,
            "image_cached_mib": 90.0,
            "bless_pause_ms": 8.1,
            "clones": [
                {
                    "name": "c1",
                    "uuid": "u1",
                    "private_written_mib": 1.5,
                    "image_resident_mib": 80.0,
                    "qemu_pss_mib": 30.2,
                },
                {"name": "c2", "uuid": "u2"},
            ],
        }
        self.engine.stats.return_value = [entry]
        out, _ = self.run_ok("stats", "-f", "json")
        self.assertEqual([entry], json.loads(out))
        out, _ = self.run_ok("stats")
        self.assertIn("c1: 1.5 MiB written", out)
        self.assertIn("c2: no QEMU process found", out)

    def test_discard_and_destroy(self):
        out, _ = self.run_ok("discard", "3f2a")
        self.engine.discard.assert_called_once_with("3f2a")
        self.assertEqual("discarded 3f2a\n", out)
        out, _ = self.run_ok("destroy", "web-clone-1")
        self.engine.destroy_clone.assert_called_once_with("web-clone-1")
        self.assertEqual("destroyed web-clone-1\n", out)


class TestErrors(CLITestCase):
    def assert_one_line_error(self, expected, argv):
        status, out, err = self.run_cli(*argv)
        self.assertEqual(1, status, err)
        self.assertEqual("", out)
        self.assertEqual([f"nova-clone: error: {expected}"], err.splitlines())
        self.assertNotIn("Traceback", err)

    def test_unknown_generation(self):
        self.engine.launch.side_effect = api.GenerationNotFound("no snapshot generation 'nosuch'")
        self.assert_one_line_error(
            "no snapshot generation 'nosuch'", ["launch", "nosuch", "-f", "json"]
        )

    def test_engine_errors(self):
        cases = [
            (
                "discard",
                api.GenerationInUse("snapshot 3f2a still has 1 clone(s): c1"),
                ["discard", "3f2a"],
            ),
            ("destroy_clone", api.CloneNotFound("no clone 'x'"), ["destroy", "x"]),
            ("bless", api.BlessError("domain 'web' is not running"), ["bless", "web"]),
            ("launch", api.LaunchError("snapshot 3f2a is damaged"), ["launch", "3f2a"]),
            (
                "generations",
                api.GenerationNotFound("snapshot generation 3f2a is\ndamaged"),
                ["list"],
            ),
        ]
        for method, error, argv in cases:
            getattr(self.engine, method).side_effect = error
            self.assert_one_line_error(" ".join(str(error).split()), argv)

    def test_libvirt_unreachable(self):
        self.libvirt_open.side_effect = libvirt.libvirtError("Failed to connect socket")
        self.assert_one_line_error("Failed to connect socket", ["list"])

    def test_bad_config_file(self):
        self.assert_one_line_error(
            "Failed to find some config files: /no/such.conf",
            ["--config-file", "/no/such.conf", "list"],
        )

    def test_debug_shows_the_traceback(self):
        self.engine.discard.side_effect = api.GenerationInUse("in use")
        status, _, err = self.run_cli("--debug", "discard", "3f2a")
        self.assertEqual(1, status)
        self.assertIn("Traceback", err)
        self.assertEqual("nova-clone: error: in use", err.splitlines()[-1])

    def test_unknown_command(self):
        status, out, err = self.run_cli("lst")
        self.assertEqual(2, status)
        self.assertEqual("", out)
        self.assertIn("'lst' is not a nova-clone command", err)
        self.assertIn("Did you mean list?", err)

    def test_no_command(self):
        status, out, err = self.run_cli()
        self.assertEqual(2, status)
        self.assertEqual("", out)
        self.assertIn("a command is needed", err)


class TestHelp(CLITestCase):
    OPTIONS = {
        "bless": ["DOMAIN", "-f {", "-c COLUMN", "Examples:", "nova-clone bless web"],
        "launch": [
            "SNAPSHOT",
            "--count N",
            "--name-prefix PREFIX",
            "-f {",
            "Examples:",
            "nova-clone launch 3f2a --count 16",
        ],
        "list": ["-f {", "--sort-column", "clones"],
        "stats": ["-f {", "PSS"],
        "discard": ["SNAPSHOT", "refused while any clone of it exists"],
        "destroy": ["CLONE", "name or UUID"],
        "demo": [
            "--clones N",
            "--memory-mb MIB",
            "--guest-dir DIR",
            "--no-baseline",
            "--remote-clones N",
            "-f {",
            "exit status is 1",
        ],
        "attach": [
            "SNAPSHOT",
            "--origin HOST:PORT",
            "--key KEY",
            "--prefetch {none,working-set,full}",
            "nova-clone-pageserver",
        ],
        "release": ["SNAPSHOT", "refused while any"],
        "page stats": ["-f {", "fetch latency p50/p99"],
    }

    def test_each_command_lists_its_options(self):
        for name, expected in self.OPTIONS.items():
            out, _ = self.run_ok(name, "--help")
            self.assertIn(f"usage: nova-clone {name} ", out)
            for text in expected:
                self.assertIn(text, out, f"{name} --help")
        self.engine_class.assert_not_called()  # help needs no engine nor config

    def test_app_help_explains_and_lists_commands(self):
        out, _ = self.run_ok("--help")
        for text in [
            "--config-file PATH",
            "--state-dir DIR",
            "--debug",
            "--progress",
            "A snapshot (also called a generation)",
            "A clone is",
            "Exit status:",
        ]:
            self.assertIn(text, out)
        commands_part = out.split("\nCommands:\n")[1]
        for name in self.OPTIONS:
            self.assertRegex(commands_part, rf"(?m)^  {name} +\S")

    def test_commands_come_from_the_entry_point_namespace(self):
        manager = commandmanager.CommandManager(clone.NAMESPACE)
        self.assertEqual(set(self.OPTIONS), {name for name, _ in manager})


class TestProgress(CLITestCase):
    def test_launch_progress_on_stderr_only(self):
        out, err = self.run_ok("--progress", "launch", "3f2a", "--count", "3", "-f", "json")
        self.assertEqual(3, len(json.loads(out)))  # stdout: the result only
        self.assertNotIn("running after", out)
        lines = err.splitlines()
        self.assertIn("launching 3 clone(s) of snapshot 3f2a", lines[0])
        self.assertEqual(
            [
                "clone 1/3 running after 802 ms: web-clone-00000002",
                "clone 2/3 running after 801 ms: web-clone-00000001",
                "clone 3/3 running after 800 ms: web-clone-00000000",
            ],
            lines[1:4],
        )
        self.assertIn("3 of 3 clone(s) running after", lines[4])

    def test_shown_when_stderr_is_a_terminal(self):
        _, err = self.run_ok("launch", "3f2a", "--count", "2", stderr=TTY())
        self.assertIn("clone 2/2 running after", err)

    def test_not_shown_otherwise(self):
        for argv, stderr in [([], io.StringIO()), (["--no-progress"], TTY()), (["-q"], TTY())]:
            out, err = self.run_ok(*argv, "launch", "3f2a", "--count", "2", stderr=stderr)
            self.assertNotIn("running after", err, argv)
            self.assertIn("web-clone-00000001", out)

    def test_bless_start_and_end(self):
        self.engine.bless.return_value = make_generation()
        out, err = self.run_ok("--progress", "bless", "web", "-f", "json")
        self.assertEqual(GEN_ID, json.loads(out)["id"])
        start, end = err.splitlines()
        self.assertIn("blessing web", start)
        self.assertIn(f"blessed web as snapshot {GEN_ID}", end)
        self.assertIn("master paused 8.1 ms", end)


REPORT = {
    "clones_requested": 2,
    "clones_ok": 2,
    "first_clone_start_ms": 800.0,
    "clone_start_ms": [800.0, 810.0],
    "clone_ready_ms": [900.0, 910.0],
    "clone_start_median_ms": 805.0,
    "burst_wall_ms": 1000.0,
    "bless_pause_ms": 50.0,
    "guest_memory_mib": 256,
    "pattern_mib": 200,
    "guest_memory_mib_total": 512,
    "host_memory_mib_used": 300,
    "problems": {},
    "host_memory_mib_per_clone": 150.0,
    "oversubscription": 1.71,
    "eager_restore_ms": 4000.0,
    "eager_to_clone_ratio": 5.0,
    "remote_clones_requested": 1,
    "remote_clones_ok": 1,
    "remote_clone_start_ms": [1200.0],
    "remote_fetched_mib_to_start": 40.0,
    "remote_fetched_mib_total": 230.0,
    "remote_problems": {},
}


class TestDemo(CLITestCase):
    def setUp(self):
        super().setUp()
        self.demo_run = self.useFixture(
            fixtures.MockPatch("nova_clonedriver.demo.run.run", return_value=dict(REPORT))
        ).mock
        self.useFixture(fixtures.EnvironmentVariable("NOVA_CLONE_GUEST_DIR", "/srv/guest"))

    def test_json_report_keeps_its_keys(self):
        out, _ = self.run_ok(
            "demo",
            "--clones",
            "2",
            "--memory-mb",
            "128",
            "--no-baseline",
            "--remote-clones",
            "1",
            "-f",
            "json",
        )
        self.assertEqual(REPORT, json.loads(out))
        self.demo_run.assert_called_once_with(
            self.libvirt_open.return_value,
            self.state_dir,
            clones=2,
            memory_mib=128,
            guest_dir="/srv/guest",
            baseline=False,
            remote_clones=1,
        )

    def test_guest_dir_option_wins_over_the_environment(self):
        self.run_ok("demo", "--guest-dir", "/opt/guest")
        self.assertEqual("/opt/guest", self.demo_run.call_args.kwargs["guest_dir"])

    def test_no_guest_dir_is_one_line_and_boots_nothing(self):
        self.useFixture(fixtures.EnvironmentVariable("NOVA_CLONE_GUEST_DIR"))
        status, out, err = self.run_cli("demo")
        self.assertEqual(1, status)
        self.assertEqual("", out)
        self.assertEqual(1, len(err.strip().splitlines()), err)
        self.assertIn(
            "nova-clone: error: no test guest given: build it with tools/build-guest.sh", err
        )
        self.demo_run.assert_not_called()

    def test_a_remote_clone_with_problems_exits_1(self):
        report = dict(
            REPORT,
            remote_clones_ok=0,
            remote_problems={"b1": ["pattern checksum x != master's y"]},
        )
        self.demo_run.return_value = report
        status, out, err = self.run_cli("demo", "--clones", "2")
        self.assertEqual(1, status)
        self.assertIn("b1: pattern checksum x != master's y", out)
        self.assertIn("nova-clone: error: the demo found problems", err)

    def test_remote_clones_may_be_none_but_not_negative(self):
        self.run_ok("demo", "--remote-clones", "0")
        self.assertEqual(0, self.demo_run.call_args.kwargs["remote_clones"])
        with mock.patch("sys.stderr", new_callable=io.StringIO) as usage:
            status, _, _ = self.run_cli("demo", "--remote-clones", "-1")
        self.assertEqual(2, status)
        self.assertIn("--remote-clones: must be at least 0, not -1", usage.getvalue())
        self.assertEqual(1, self.demo_run.call_count)

    def test_problems_exit_1(self):
        report = dict(REPORT, clones_ok=1, problems={"c2": ["heartbeat went backwards"]})
        self.demo_run.return_value = report
        status, out, err = self.run_cli("demo", "--clones", "2", "-f", "json")
        self.assertEqual(1, status)
        self.assertEqual(report, json.loads(out))
        self.assertIn("nova-clone: error: the demo found problems", err)
        status, out, _ = self.run_cli("demo", "--clones", "2")
        self.assertIn("c2: heartbeat went backwards", out)

    def test_phases_on_stderr(self):
        def run(*args, **kwargs):
            logging.getLogger("nova_clonedriver.engine.bless").info("Blessed %s", "m")
            return dict(REPORT)

        self.demo_run.side_effect = run
        out, err = self.run_ok("--progress", "demo", "-f", "json")
        self.assertEqual(REPORT, json.loads(out))
        lines = err.splitlines()
        self.assertEqual(3, len(lines), err)
        self.assertTrue(lines[0].startswith("demo: booting a 256 MiB test guest"), err)
        self.assertEqual("demo: Blessed m", lines[1])
        self.assertTrue(lines[2].startswith("demo: done in"), err)
        self.assertIn("3 of 3 clone(s) check out", lines[2])


class TestLaunchCallback(testtools.TestCase):
    """The engine's per-clone callback that launch progress uses."""

    def setUp(self):
        super().setUp()
        self.useFixture(fixtures.MockPatchObject(launch_mod, "verify"))
        self.store = mock.Mock()
        self.store.load.return_value = make_generation()
        self.store.clone_dir.side_effect = lambda u: f"/clones/{u}"

    def launch(self, launch_one, **kwargs):
        with mock.patch.object(launch_mod, "_launch_one", side_effect=launch_one):
            return launch_mod.launch(mock.Mock(), self.store, GEN_ID, 3, "t", **kwargs)

    def test_called_once_per_started_clone(self):
        def launch_one(conn, store, generation, spec, options):
            if spec.name == names[1]:
                raise launch_mod.LaunchError("boom")
            return api.Clone(spec.name, spec.uuid, GEN_ID, [], 1.0, 2.0)

        names = []
        self.store.clone_dir.side_effect = lambda u: names.append(f"t-{u[:8]}") or "/c"
        seen = []
        error = self.assertRaises(
            launch_mod.LaunchError, self.launch, launch_one, on_clone_started=seen.append
        )
        self.assertEqual(sorted([names[0], names[2]]), sorted(c.name for c in seen))
        self.assertEqual([names[0], names[2]], [c.name for c in error.launched])

    def test_failing_callback_loses_no_clone(self):
        def launch_one(conn, store, generation, spec, options):
            return api.Clone(spec.name, spec.uuid, GEN_ID, [], 1.0, 2.0)

        logs = self.useFixture(fixtures.FakeLogger(level=logging.ERROR))
        clones = self.launch(
            launch_one, on_clone_started=mock.Mock(side_effect=RuntimeError("progress broke"))
        )
        self.assertEqual(3, len(clones))
        self.assertIn("Progress callback failed", logs.output)


class TestPageServiceCommands(CLITestCase):
    def setUp(self):
        super().setUp()
        self.client_class = self.useFixture(
            fixtures.MockPatch(
                "nova_clonedriver.pageserver.control.PageServiceClient", autospec=True
            )
        ).mock
        self.client = self.client_class.return_value

    def test_attach_asks_the_page_service_on_the_configured_socket(self):
        self.client.attach.return_value = {
            "generation": GEN_ID,
            "local": False,
            "prefetch": "full",
            "prefetched_mib": 210.5,
        }
        out, _ = self.run_ok(
            "attach",
            GEN_ID,
            "--origin",
            "10.0.0.11:8797",
            "--key",
            "k3y",
            "--prefetch",
            "full",
            "-f",
            "json",
        )
        self.assertEqual(210.5, json.loads(out)["prefetched_mib"])
        self.client_class.assert_called_once_with(os.path.join(self.state_dir, "pageserver.sock"))
        self.client.attach.assert_called_once_with(GEN_ID, "10.0.0.11:8797", "k3y", "full")

    def test_a_bad_prefetch_choice_is_a_usage_error(self):
        with mock.patch("sys.stderr", new_callable=io.StringIO) as usage:
            status, _, _ = self.run_cli(
                "attach", GEN_ID, "--origin", "h:1", "--key", "k", "--prefetch", "most"
            )
        self.assertEqual(2, status)
        self.assertIn("invalid choice: 'most'", usage.getvalue())
        self.client.attach.assert_not_called()

    def test_page_service_errors_are_one_line(self):
        self.client.release.side_effect = control.PageServiceError(
            "generation 3f2a is not presented here"
        )
        status, _, err = self.run_cli("release", GEN_ID)
        self.assertEqual(1, status)
        self.assertEqual("nova-clone: error: generation 3f2a is not presented here\n", err)

    def test_page_stats_rows_for_remote_and_served_generations(self):
        self.client.stats.return_value = {
            "node": "node-b",
            "remote": {GEN_ID: {"origin": "10.0.0.11:8797", "bytes_fetched": 5}},
            "origin": {
                "requests": {
                    "refused_handshakes": 4,
                    "refused_requests": 1,
                    "malformed_requests": 0,
                },
                "generations": {OTHER_ID: {"node-c": {"chunks_served": 3}}},
            },
        }
        out, _ = self.run_ok("page", "stats", "-f", "json")
        self.assertEqual(
            [
                {
                    "generation": GEN_ID,
                    "role": "remote",
                    "peer": "10.0.0.11:8797",
                    "counters": {"bytes_fetched": 5},
                },
                {
                    "generation": OTHER_ID,
                    "role": "origin",
                    "peer": "node-c",
                    "counters": {"chunks_served": 3},
                },
                {
                    "generation": "-",
                    "role": "origin",
                    "peer": "all peers",
                    "counters": {
                        "refused_handshakes": 4,
                        "refused_requests": 1,
                        "malformed_requests": 0,
                    },
                },
            ],
            json.loads(out),
        )
