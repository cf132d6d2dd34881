"""nova must load our driver from compute_driver = clonedriver.CloneDriver."""

import os

from nova import conf as nova_conf
from nova.virt import driver as virt_driver
from nova.virt.libvirt import driver as libvirt_driver
from oslo_config import fixture as config_fixture
import testtools

CONF = nova_conf.CONF


class TestDriverLoads(testtools.TestCase):
    def setUp(self):
        super().setUp()
        # Runs the real (non-editable) install: the shim must live in nova's
        # own package directory, where nova looks.
        self.useFixture(config_fixture.Config(CONF)).config(
            compute_driver="clonedriver.CloneDriver"
        )

    def test_load_compute_driver_returns_clone_driver(self):
        from nova_clonedriver.virt.driver import CloneDriver

        driver = virt_driver.load_compute_driver(None)
        self.assertIsInstance(driver, CloneDriver)
        self.assertIsInstance(driver, libvirt_driver.LibvirtDriver)

    def test_shim_is_installed_inside_novas_package(self):
        import nova
        import nova.virt.clonedriver as shim

        nova_dir = os.path.dirname(nova.__file__)
        self.assertEqual(
            os.path.join(nova_dir, "virt", "clonedriver", "__init__.py"), shim.__file__
        )
