"""Options of the [pageserver_swift] group: how the page service reaches
OpenStack Swift when ``[pageserver] object_store = swift``. The usual
keystoneauth options (auth_type, auth_url, username, ...; the session's
TLS options; the endpoint's service_type, region_name, interface,
endpoint_override), as for nova's other services."""

from keystoneauth1 import loading as ks_loading
from oslo_config import cfg

GROUP = cfg.OptGroup(
    "pageserver_swift",
    title="Page service: OpenStack Swift",
    help="The Swift account the page service publishes generations to and "
    "reads them from ([pageserver] object_store = swift). Every compute "
    "node of a deployment uses the same account (a service user's).",
)


def register_opts(conf: cfg.ConfigOpts) -> None:
    conf.register_group(GROUP)
    ks_loading.register_session_conf_options(conf, GROUP.name)
    ks_loading.register_auth_conf_options(conf, GROUP.name)
    ks_loading.register_adapter_conf_options(conf, GROUP.name)
    conf.set_default("service_type", "object-store", group=GROUP.name)


def list_opts() -> list[cfg.Opt]:
    return (
        ks_loading.get_session_conf_options()
        + ks_loading.get_auth_common_conf_options()
        + ks_loading.get_auth_plugin_conf_options("password")
        + ks_loading.get_adapter_conf_options(include_deprecated=False)
    )
