"""oslo.config options of nova-clonedriver, in one place."""

from oslo_config import cfg

from nova_clonedriver.conf import clone
from nova_clonedriver.conf import pageserver
from nova_clonedriver.conf import swift

CONF = cfg.CONF
clone.register_opts(CONF)
pageserver.register_opts(CONF)
swift.register_opts(CONF)


def list_opts() -> list:
    """For oslo-config-generator (entry point oslo.config.opts)."""
    return [
        (clone.GROUP, clone.OPTS),
        (pageserver.GROUP, pageserver.OPTS),
        (swift.GROUP, swift.list_opts()),
    ]


__all__ = ["CONF", "list_opts"]
