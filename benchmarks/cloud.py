"""Scenario "cloud": through the one-machine cloud's real nova and neutron
(``tools/minicloud start``; run with its openrc sourced, so that the
``openstack`` CLI is the cloud's): ``openstack server create --min N --max
N`` of the Debian guest on a tenant network, clones of a live image against
normal boots of the same image, timed from the POST to all N answering
HTTP on their own port's IP (asked from the network's DHCP namespace), and
each one's clock at its first answers.
"""

from __future__ import annotations

import os
import time
from typing import Any

from benchmarks import common
from cloudtests import test_network as net
from cloudtests.test_cloud import openstack
from nova_clonedriver.demo import debianguest

HTTP_TIMEOUT_S = 1800
NOTE = (
    "On the one-machine cloud (``tools/minicloud start``), with "
    "``/var/lib/minicloud/etc/openrc`` sourced. Servers of the Debian guest "
    "(512 MiB, 1 vCPU) on a tenant VLAN network of neutron's Open vSwitch agent "
    "(userspace datapath), in a security group that lets ping and HTTP in; "
    "clones from a live image of a master booted the same way. Each server is "
    "asked over HTTP from the network's DHCP namespace."
)


def run(count: int) -> dict[str, Any]:
    name = f"bench{os.getpid()}"
    try:
        tenant = net.make_tenant_network(name, "debian")
        rows = [
            {
                "method": "clones",
                **_servers_to_http(tenant, "clone", count, tenant.live_image, "m1.debian.clone"),
            },
            {
                "method": "normal boots",
                **_servers_to_http(tenant, "boot", count, "debian", "m1.debian"),
            },
        ]
    finally:
        net.remove_tenant_network(name)
    return {"count": count, "rows": rows, "note": NOTE}


def _servers_to_http(
    tenant: net.TenantNetwork, kind: str, count: int, image: str, flavor: str
) -> dict[str, Any]:
    prefix = f"{tenant.name}-{kind}"
    started = time.monotonic()
    openstack(
        "server",
        "create",
        "--image",
        image,
        "--flavor",
        flavor,
        "--network",
        tenant.name,
        "--security-group",
        tenant.web["id"],
        "--min",
        str(count),
        "--max",
        str(count),
        "--wait",
        prefix,
        timeout=HTTP_TIMEOUT_S,
    )
    servers = net.all_active(prefix, count, HTTP_TIMEOUT_S)
    active_s = time.monotonic() - started
    network_id = tenant.network["id"]
    skews_s, addresses = [], set()
    for server in servers.values():
        address = net.fixed_ip(server, tenant.name)
        net.answers(network_id, address, HTTP_TIMEOUT_S)
        skews_s.append(
            debianguest.clock_skew_s(address, fetch=lambda a: net.identity(network_id, a) or {})
        )
        addresses.add(address)
    http_s = time.monotonic() - started
    openstack(
        "server",
        "delete",
        "--wait",
        *[s["id"] for s in servers.values()],
        parse=False,
        timeout=HTTP_TIMEOUT_S,
    )
    if len(addresses) != count:
        raise RuntimeError(f"{count} {kind} servers answered on only {len(addresses)} addresses")
    return {
        "post_to_all_active_s": round(active_s, 1),
        "post_to_all_http_s": round(http_s, 1),
        "clock_skew_s": common.summary(skews_s),
    }
