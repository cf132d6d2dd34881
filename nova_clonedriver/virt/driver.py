"""The nova compute driver: nova's libvirt driver plus live clones.

A thin adapter: nova concepts in, clone-engine calls out. For now it changes
nothing, so every instance behaves exactly as under LibvirtDriver.
"""

from nova.virt.libvirt import driver as libvirt_driver


class CloneDriver(libvirt_driver.LibvirtDriver):
    """Loaded with ``[DEFAULT] compute_driver = clonedriver.CloneDriver``."""
