import os
import subprocess
import sys

import fixtures
import testtools

from nova_clonedriver import conf

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class TestOptions(testtools.TestCase):
    def test_list_opts_has_the_clone_group(self):
        [(group, opts)] = conf.list_opts()
        self.assertEqual("clone", group.name)
        names = {o.name for o in opts}
        self.assertIn("state_dir", names)
        self.assertIn("bless_downtime_limit_ms", names)

    def test_generator_writes_a_sample_with_the_clone_group(self):
        out = os.path.join(self.useFixture(fixtures.TempDir()).path, "sample.conf")
        generator = os.path.join(os.path.dirname(sys.executable), "oslo-config-generator")
        subprocess.run([generator, "--config-file",
                        os.path.join(REPO, "etc", "nova-clonedriver-config-generator.conf"),
                        "--output-file", out], check=True, cwd=REPO)
        with open(out) as f:
            sample = f.read()
        self.assertIn("[clone]", sample)
        self.assertIn("#state_dir = /var/lib/nova-clonedriver", sample)
