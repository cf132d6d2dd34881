"""Hosts running CloneDriver advertise that they can launch live clones."""

from unittest import mock

from nova.compute import provider_tree
from nova.virt.libvirt import driver as libvirt_driver
import testtools

from nova_clonedriver.virt import driver as driver_mod


class TestTrait(testtools.TestCase):
    def test_live_clone_trait_added_to_libvirts_own(self):
        tree = provider_tree.ProviderTree()
        tree.new_root("node-a", "4f1c1a36-7b1e-4d3c-9d4e-2a5c8a0b1c2d")
        tree.add_traits("node-a", "COMPUTE_NET_VIRTIO")  # as if LibvirtDriver's
        driver = driver_mod.CloneDriver.__new__(driver_mod.CloneDriver)
        with mock.patch.object(libvirt_driver.LibvirtDriver, "update_provider_tree") as base:
            driver.update_provider_tree(tree, "node-a")
        base.assert_called_once_with(tree, "node-a", None)
        self.assertTrue(tree.has_traits("node-a", ["CUSTOM_LIVE_CLONE", "COMPUTE_NET_VIRTIO"]))
