"""Options of the [pageserver] group (nova-clone-pageserver, and the nova
driver that asks it to present generations of other nodes)."""

from oslo_config import cfg

GROUP = cfg.OptGroup(
    "pageserver",
    title="Page service",
    help="nova-clone-pageserver: serves this node's snapshot memory and disks "
    "to other nodes and presents theirs here, over mutually "
    "authenticated TLS.",
)

OPTS = [
    cfg.StrOpt(
        "node_name",
        help="This node's name as its peers know it; must equal the "
        "common name (CN) of tls_cert_file. Defaults to that CN.",
    ),
    cfg.HostAddressOpt(
        "listen_host",
        default="0.0.0.0",  # noqa: S104 - peers reach it
        help="Address peers connect to.",
    ),
    cfg.PortOpt("listen_port", default=8797, help="TCP port of the page service."),
    cfg.StrOpt(
        "advertise_address",
        help="<host>:<port> at which other nodes reach this node's page "
        "service; live images blessed here carry it. Defaults to "
        "nova's [DEFAULT] my_ip and listen_port.",
    ),
    cfg.StrOpt(
        "tls_cert_file",
        default="/etc/nova-clonedriver/pki/node.crt",
        help="This node's certificate (PEM), used as server and as "
        "client certificate. Needs both the serverAuth and "
        "clientAuth extended key usages if it has any.",
    ),
    cfg.StrOpt(
        "tls_key_file",
        default="/etc/nova-clonedriver/pki/node.key",
        help="Private key of tls_cert_file (PEM).",
    ),
    cfg.StrOpt(
        "tls_ca_file",
        default="/etc/nova-clonedriver/pki/ca.crt",
        help="CA certificate(s) (PEM) that sign every node's "
        "certificate. Peers without a certificate from it are "
        "refused: snapshot memory is a tenant's RAM.",
    ),
    cfg.HostAddressOpt(
        "metrics_host",
        default="127.0.0.1",
        help="Address of the Prometheus text endpoint (GET /metrics): the page service's stats.",
    ),
    cfg.PortOpt(
        "metrics_port", default=9798, help="Port of the Prometheus endpoint; 0 turns it off."
    ),
    cfg.StrOpt(
        "control_socket",
        help="Unix socket on which the local nova driver and nova-clone "
        "ask the service to present a generation of another node. "
        "Defaults to <[clone] state_dir>/pageserver.sock.",
    ),
    cfg.StrOpt(
        "control_socket_group",
        help="Group that may use the control socket (mode 0660), for "
        "a nova-compute that does not run as the page service's "
        "user (root). Unset: mode 0600, the service's user only.",
    ),
    cfg.StrOpt(
        "mount_dir",
        help="Where the service mounts its FUSE file system that "
        "presents other nodes' generations. Defaults to "
        "<[clone] state_dir>/remote.",
    ),
    cfg.IntOpt(
        "fetch_timeout_s",
        default=60,
        min=1,
        help="How long a fetch from an origin node may keep failing "
        "(connection refused or lost, the origin restarting) "
        "before it is given up: the clone's read then fails with "
        "EIO and the failure is logged and counted in stats.",
    ),
    cfg.IntOpt(
        "max_inflight_fetches",
        default=8,
        min=1,
        help="FETCH requests sent to one origin without waiting for "
        "the replies of earlier ones (pipelining).",
    ),
    cfg.IntOpt(
        "connections_per_origin",
        default=2,
        min=1,
        max=16,
        help="TLS connections to each origin node, each with a thread "
        "of its own; FETCH requests are spread over them, so that "
        "decrypting (and the origin's encrypting) uses more than "
        "one core.",
    ),
    cfg.IntOpt(
        "readahead_max_chunks",
        default=32,
        min=0,
        help="Once a clone has read 5 chunks of a remote memory image "
        "or disk in a row, keep up to this many chunks (1 MiB "
        "each by default) ahead of it on their way before it asks, "
        "the window doubling from 2 while the run goes on. Clones read most "
        "of their memory in ascending runs; at the end of a run "
        "up to this many chunks are fetched that nobody reads. 0 "
        "fetches only what is read.",
    ),
    cfg.IntOpt(
        "working_set_window_s",
        default=20,
        min=0,
        help="The chunks the first clone of a remote generation reads "
        "in its first seconds on this node are recorded as the "
        "generation's working set and sent to the origin, which "
        "hands it to later nodes (prefetch 'working-set'). "
        "0 records nothing.",
    ),
    cfg.IntOpt(
        "background_fetch_mib_per_s",
        default=0,
        min=0,
        help="Complete remote generations in the background at this "
        "rate so that their clones stop depending on the origin "
        "node; 0 fetches only what clones read.",
    ),
    cfg.IntOpt(
        "release_idle_s",
        default=300,
        min=0,
        help="Release a remote generation (at its origin, and its "
        "cache here) once no clone on this node has used it for "
        "this long.",
    ),
    cfg.StrOpt(
        "object_store",
        help="Publish the generations blessed on this node to this object "
        "store (a plugin: 'swift', configured in [pageserver_swift]), "
        "and read other nodes' generations from it where their "
        "origins published them. Chunks are stored sealed with a key "
        "only the origin hands out, to nodes it admits. Unset: peers "
        "get every chunk from the origin's page service.",
    ),
    cfg.IntOpt(
        "reconcile_interval_s",
        default=10,
        min=1,
        help="How often the service compares the clones of remote "
        "generations with what it told their origins, and "
        "releases (and frees the cache of) generations that no "
        "clone on this node uses any more.",
    ),
]


def register_opts(conf: cfg.ConfigOpts) -> None:
    conf.register_group(GROUP)
    conf.register_opts(OPTS, group=GROUP)
