import os
import subprocess
import sys

import fixtures
import testtools

from nova_clonedriver import conf

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class TestOptions(testtools.TestCase):
    def test_list_opts_has_the_clone_pageserver_and_swift_groups(self):
        groups = {group.name: {o.dest for o in opts} for group, opts in conf.list_opts()}
        self.assertEqual({"clone", "pageserver", "pageserver_swift"}, set(groups))
        self.assertIn("object_store", groups["pageserver"])
        # keystoneauth's: how the page service authenticates to Swift
        self.assertTrue(
            {"auth_type", "auth_url", "endpoint_override"} <= groups["pageserver_swift"]
        )
        self.assertIn("state_dir", groups["clone"])
        self.assertIn("bless_downtime_limit_ms", groups["clone"])
        self.assertIn("tls_ca_file", groups["pageserver"])
        self.assertIn("fetch_timeout_s", groups["pageserver"])

    def test_generator_writes_a_sample_with_the_clone_group(self):
        out = os.path.join(self.useFixture(fixtures.TempDir()).path, "sample.conf")
        generator = os.path.join(os.path.dirname(sys.executable), "oslo-config-generator")
        subprocess.run(
            [
                generator,
                "--config-file",
                os.path.join(REPO, "etc", "nova-clonedriver-config-generator.conf"),
                "--output-file",
                out,
            ],
            check=True,
            cwd=REPO,
        )
        with open(out) as f:
            sample = f.read()
        self.assertIn("[clone]", sample)
        self.assertIn("#state_dir = /var/lib/nova-clonedriver", sample)
