"""The README's main command, end to end (a small run of it)."""

import json
import os
import stat
import subprocess
import sys

from tests.functional import base


class TestDemo(base.LibvirtTestCase):
    def test_demo_clones_check_out(self):
        # On a new host nothing has made the state dir yet: the demo makes it.
        state_dir = os.path.join(self.state_dir, "new", "state")
        result = subprocess.run(
            [
                os.path.join(os.path.dirname(sys.executable), "nova-clone"),
                "--state-dir",
                state_dir,
                "demo",
                "--clones",
                "2",
                "--remote-clones",
                "1",
                "-f",
                "json",
            ],
            capture_output=True,
            text=True,
        )
        # The report says what went wrong with which clone; the exit code
        # only that something did.
        report = json.loads(result.stdout or "{}")
        self.assertEqual(
            2,
            report.get("clones_ok"),
            f"problems: {report.get('problems')}\n{result.stderr[-3000:]}",
        )
        self.assertEqual(0, result.returncode, result.stderr[-3000:])
        self.assertEqual(2, report["clones_requested"])
        self.assertEqual(2, len(report["clone_start_ms"]))
        self.assertGreater(report["bless_pause_ms"], 0)
        self.assertEqual(512, report["guest_memory_mib_total"])
        self.assertGreater(report["host_memory_mib_used"], 0)
        self.assertGreater(report["eager_restore_ms"], 0)
        # The clone on node B got its memory from node A's page service: a
        # little to start, the whole pattern once it read it.
        self.assertEqual(
            (1, 1, {}),
            (
                report["remote_clones_requested"],
                report["remote_clones_ok"],
                report["remote_problems"],
            ),
        )
        self.assertGreater(report["remote_fetched_mib_to_start"], 0)
        self.assertLess(report["remote_fetched_mib_to_start"], report["pattern_mib"])
        self.assertGreaterEqual(report["remote_fetched_mib_total"], report["pattern_mib"])
        # QEMU's user reaches the files below it, and lists nothing.
        self.assertEqual(0o711, stat.S_IMODE(os.stat(state_dir).st_mode))
        # The demo cleans up after itself: no store, FUSE mount or file left.
        self.assertEqual([], os.listdir(state_dir))
        with open("/proc/self/mounts") as mounts:
            self.assertNotIn(self.state_dir, mounts.read())
