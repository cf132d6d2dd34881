"""Glance properties of a live image, shared by the driver and the scheduler."""

LIVE = "clone_live"  # set by the user on createImage: bless instead of copy
GENERATION = "clone_generation"
ORIGIN_HOST = "clone_origin_host"
ACCESS_KEY = "clone_access_key"  # what the origin's page service asks of peers
MASTER = "clone_master"
MEMORY_MB = "clone_memory_mb"
VCPUS = "clone_vcpus"
BLESS_PAUSE_MS = "clone_bless_pause_ms"

# What the driver binds a generation to at bless (Generation.bound_to).
BOUND_IMAGE = "image"  # the live image's id
BOUND_FORK_OF = "fork_of"  # the forked server's uuid
BOUND_PROJECT = "project"  # the project of that image or server

# Server metadata (``openstack server create --property clone_of=<server>``):
# fork that running server now instead of booting the image.
CLONE_OF = "clone_of"
