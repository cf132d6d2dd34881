"""nova-clone-pageserver: the daemon every compute node runs."""

from __future__ import annotations

import asyncio
import sys

import libvirt
from oslo_config import cfg
from oslo_log import log as logging

from nova_clonedriver import conf
from nova_clonedriver.pageserver import fusefront
from nova_clonedriver.pageserver import objectstore
from nova_clonedriver.pageserver import service

CONF = conf.CONF
LOG = logging.getLogger(__name__)


def service_config(config: cfg.ConfigOpts) -> service.ServiceConfig:
    """The daemon's settings from the [clone] and [pageserver] options."""
    options = config.pageserver
    return service.ServiceConfig(
        state_dir=config.clone.state_dir,
        libvirt_uri=config.clone.libvirt_uri,
        listen_host=options.listen_host,
        listen_port=options.listen_port,
        tls_cert_file=options.tls_cert_file,
        tls_key_file=options.tls_key_file,
        tls_ca_file=options.tls_ca_file,
        node_name=options.node_name,
        control_socket=options.control_socket,
        control_socket_group=options.control_socket_group,
        mount_dir=options.mount_dir,
        metrics_host=options.metrics_host,
        metrics_port=options.metrics_port,
        reconcile_interval_s=options.reconcile_interval_s,
        object_store=(
            objectstore.load(options.object_store, config) if options.object_store else None
        ),
        remote={
            "fetch_timeout_s": options.fetch_timeout_s,
            "max_inflight_fetches": options.max_inflight_fetches,
            "connections_per_origin": options.connections_per_origin,
            "readahead_max_chunks": options.readahead_max_chunks,
            "working_set_window_s": options.working_set_window_s,
            "background_fetch_mib_per_s": options.background_fetch_mib_per_s,
            "release_idle_s": options.release_idle_s,
        },
    )


def main(argv: list[str] | None = None) -> int:
    logging.register_options(CONF)
    # nova's config files (nova.conf and nova-clone-pageserver.conf in
    # /etc/nova): the [clone] state_dir is the nova driver's.
    CONF(sys.argv[1:] if argv is None else argv, project="nova", prog="nova-clone-pageserver")
    logging.setup(CONF, "nova-clone-pageserver")
    try:
        page_service = service.PageService(service_config(CONF))
        asyncio.run(page_service.run())
    except (OSError, ValueError, libvirt.libvirtError, fusefront.FrontError) as exc:
        # certificates, ports, mount point, libvirt, the FUSE front
        LOG.error("nova-clone-pageserver cannot run: %s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
