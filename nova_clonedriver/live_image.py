"""Glance properties of a live image, shared by the driver and the scheduler."""

LIVE = "clone_live"  # set by the user on createImage: bless instead of copy
GENERATION = "clone_generation"
ORIGIN_HOST = "clone_origin_host"
ORIGIN_ADDRESS = "clone_origin_address"  # host:port of the origin's page service
MASTER = "clone_master"
MEMORY_MB = "clone_memory_mb"
VCPUS = "clone_vcpus"
BLESS_PAUSE_MS = "clone_bless_pause_ms"

# Server metadata (``openstack server create --property clone_of=<server>``):
# fork that running server now instead of booting the image.
CLONE_OF = "clone_of"
