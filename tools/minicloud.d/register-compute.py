"""minicloud: register this host's nova-compute service as its first start
would (its service record, and the node identity file
<state_path>/compute_id), before it starts: see register_compute in nova.sh.

Run by tools/minicloud as: python register-compute.py --config-file ...
"""

import socket
import sys

from nova import config
from nova import context
from nova import exception
from nova import objects
import nova.virt.node
from oslo_utils import uuidutils

config.parse_args(sys.argv)
objects.register_all()
ctx = context.get_admin_context()
host = config.CONF.host or socket.gethostname()
try:
    objects.Service.get_by_host_and_binary(ctx, host, "nova-compute")
except exception.NotFound:
    objects.Service(ctx, host=host, binary="nova-compute", topic="compute").create()
if nova.virt.node.read_local_node_uuid() is None:
    nova.virt.node.write_local_node_uuid(uuidutils.generate_uuid())
