"""Clones of the Debian guest on a tenant network of the minicloud.

Each clone gets its own neutron port, its guest takes that port's fixed IP
from neutron's DHCP and its own hostname (through qemu-guest-agent, or,
for an image without it, the guest hook and neutron's metadata service),
answers ping and HTTP on that IP, and its security groups apply. Heat
clusters of them (a ResourceGroup grown 4 -> 12, an AutoScalingGroup
scaled by its policy's signal) serve HTTP on every member, against the
same stack with the normal flavor. Only the openstack CLI, as a user
would; the guests are reached from the host through the DHCP namespace
``qdhcp-<network id>``, as a neighbour on the network would reach them
(the cloud has no router).
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import time
import unittest

from cloudtests import test_cloud as cloud
from cloudtests.test_cloud import openstack
from tests import waiting

SUBNET_CIDR = "10.77.0.0/24"
BOOT_TIMEOUT_S = 600
CLONE_TIMEOUT_S = 300
# Twelve cold boots of the Debian guest side by side under TCG on 2 cores.
COLD_CLUSTER_TIMEOUT_S = 1500
CLONES = 3
CLUSTER_TEMPLATE = os.path.join(cloud.REPO, "etc", "heat", "clone-cluster.yaml")
AUTOSCALING_TEMPLATE = os.path.join(cloud.REPO, "etc", "heat", "clone-autoscaling.yaml")
NAME = f"{cloud.PREFIX}-net"


def in_namespace(network_id: str, *command: str,
                 timeout_s: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", "netns", "exec", f"qdhcp-{network_id}", *command],
                          capture_output=True, text=True, timeout=timeout_s)


def identity(network_id: str, address: str) -> dict | None:
    """What the guest at ``address`` says it is, or None if it does not answer."""
    reply = in_namespace(network_id, "curl", "-sf", "-m", "10",
                         f"http://{address}/cgi-bin/identity")
    return json.loads(reply.stdout) if reply.returncode == 0 else None


def pings(network_id: str, address: str) -> bool:
    return in_namespace(network_id, "ping", "-c", "1", "-W", "3", address).returncode == 0


def fixed_ip(server: dict, network: str) -> str:
    [address] = server["addresses"][network]
    return address


@dataclasses.dataclass
class TenantNetwork:
    """A tenant network with a subnet, a security group ``web`` that lets
    ping and HTTP in and one ``ping_only`` that lets only ping in, and a
    master on it with its live image."""

    name: str
    network: dict
    web: dict
    ping_only: dict
    master: dict
    master_ip: str
    master_identity: dict
    live_image: str


def make_tenant_network(name: str, image: str) -> TenantNetwork:
    """Everything of it is named ``name`` or ``name-*`` (see remove_tenant_network)."""
    network = openstack("network", "create", name)
    openstack("subnet", "create", "--network", name, "--subnet-range", SUBNET_CIDR, name)
    web = openstack("security group", "create", f"{name}-web")
    ping_only = openstack("security group", "create", f"{name}-ping")
    for group in (web, ping_only):
        openstack("security group rule", "create", "--ingress", "--protocol", "icmp",
                  group["id"])
    openstack("security group rule", "create", "--ingress", "--protocol", "tcp",
              "--dst-port", "80", web["id"])
    master = openstack("server", "create", "--image", image, "--flavor", "m1.debian",
                       "--network", name, "--security-group", web["id"], "--wait",
                       f"{name}-master", timeout=BOOT_TIMEOUT_S)
    master_ip = fixed_ip(master, name)
    master_identity = answers(network["id"], master_ip, BOOT_TIMEOUT_S)
    live_image = f"{name}-live"
    openstack("server", "image", "create", "--property", "clone_live=true",
              "--name", live_image, "--wait", master["id"])
    return TenantNetwork(name, network, web, ping_only, master, master_ip, master_identity,
                         live_image)


def remove_tenant_network(name: str) -> None:
    """Best effort: what make_tenant_network and the tests made, in
    dependency order."""
    for stack in openstack("stack", "list"):
        if stack["Stack Name"].startswith(f"{name}-"):
            subprocess.run(["openstack", "stack", "delete", "--yes", "--wait", stack["ID"]],
                           capture_output=True, timeout=1200)
    ids = [s["ID"] for s in openstack("server", "list", "--name", f"^{name}-")]
    if ids:
        openstack("server", "delete", "--wait", *ids, parse=False, timeout=1200)
    for image in openstack("image", "list", "--name", f"{name}-live"):
        openstack("image", "delete", image["ID"], parse=False)
    for group in (f"{name}-web", f"{name}-ping"):
        subprocess.run(["openstack", "security", "group", "delete", group],
                       capture_output=True, timeout=120)
    subprocess.run(["openstack", "network", "delete", name], capture_output=True, timeout=120)


class NetworkTestCase(unittest.TestCase):
    """A TenantNetwork whose master is of ``image``, for all the tests of
    the class."""

    image = "debian"

    @classmethod
    def setUpClass(cls):
        cls.addClassCleanup(remove_tenant_network, NAME)
        tenant = make_tenant_network(NAME, cls.image)
        cls.network, cls.web, cls.ping_only = tenant.network, tenant.web, tenant.ping_only
        cls.master, cls.master_ip = tenant.master, tenant.master_ip
        cls.master_identity, cls.live_image = tenant.master_identity, tenant.live_image

    def assert_serves(self, servers: dict[str, dict], hostname: str | None = None,
                      timeout_s: float = CLONE_TIMEOUT_S) -> None:
        """Every server answers HTTP on its own fixed IP within ``timeout_s``,
        as its own host (its port's MAC as its only NIC; its nova hostname,
        or ``hostname`` for all), and ping."""
        deadline = time.monotonic() + timeout_s
        addresses = {name: fixed_ip(s, NAME) for name, s in servers.items()}
        self.assertEqual(len(servers), len(set(addresses.values())), addresses)
        self.assertNotIn(self.master_ip, addresses.values())
        macs = {p["Fixed IP Addresses"][0]["ip_address"]: p["MAC Address"]
                for p in openstack("port", "list", "--network", NAME, "--long")}
        for name, server in servers.items():
            address = addresses[name]
            found = answers(self.network["id"], address, max(deadline - time.monotonic(), 1))
            self.assertEqual([address], found["ipv4"], name)
            self.assertEqual(hostname or server["OS-EXT-SRV-ATTR:hostname"], found["hostname"],
                             name)
            self.assertEqual([macs[address]], [nic["mac"] for nic in found["nics"]], name)
            self.assertTrue(pings(self.network["id"], address), name)


def answers(network_id: str, address: str, timeout_s: float) -> dict:
    return waiting.wait(lambda: identity(network_id, address), timeout_s,
                        f"{address} does not answer HTTP")


def shown(server_ids: list[str]) -> dict[str, dict]:
    return {s["name"]: s for s in (openstack("server", "show", i) for i in server_ids)}


def all_active(prefix: str, count: int, timeout_s: float) -> dict[str, dict]:
    """The ``count`` servers named ``prefix-*`` once all are ACTIVE (``server
    create --min N --wait`` waits for the first one only)."""
    def active():
        found = shown([s["ID"] for s in cloud.servers(f"^{prefix}-").values()])
        errors = [f"{n}: {s.get('fault')}" for n, s in found.items() if s["status"] == "ERROR"]
        if errors:
            raise AssertionError(f"servers went ERROR: {errors}")
        done = len(found) == count and all(s["status"] == "ACTIVE" for s in found.values())
        return found if done else None
    return waiting.wait(active, timeout_s, f"{count} servers {prefix}-* not all ACTIVE", 2)


class TestClonesOnATenantNetwork(NetworkTestCase):

    def test_clones_take_their_ports_and_answer_on_them(self):
        started = time.monotonic()
        openstack("server", "create", "--image", self.live_image, "--flavor",
                  "m1.debian.clone", "--network", NAME, "--security-group",
                  self.web["id"], "--min", str(CLONES), "--max", str(CLONES), "--wait",
                  f"{NAME}-clone")
        clones = all_active(f"{NAME}-clone", CLONES, CLONE_TIMEOUT_S)
        active_s = time.monotonic() - started
        self.assert_serves(clones)
        all_http_s = time.monotonic() - started
        for name in clones:
            # The master's boot, not a new one.
            found = identity(self.network["id"], fixed_ip(clones[name], NAME))
            self.assertEqual(self.master_identity["boot_id"], found["boot_id"], name)
        # The master still answers on its own address, as itself.
        self.assertEqual(self.master_identity["hostname"],
                         answers(self.network["id"], self.master_ip,
                                 CLONE_TIMEOUT_S)["hostname"])
        openstack("server", "delete", "--wait", *[c["id"] for c in clones.values()],
                  parse=False)
        print(f"\n{CLONES} clones: POST to ACTIVE {active_s:.1f} s, to all answering HTTP "
              f"on their own ports {all_http_s:.1f} s")

    def test_security_groups_apply_to_a_clone(self):
        guarded = openstack("server", "create", "--image", self.live_image, "--flavor",
                            "m1.debian.clone", "--network", NAME, "--security-group",
                            self.ping_only["id"], "--wait", f"{NAME}-guarded")
        address = fixed_ip(guarded, NAME)
        waiting.wait(lambda: pings(self.network["id"], address), CLONE_TIMEOUT_S,
                     f"{address} does not answer ping")
        self.assertIsNone(identity(self.network["id"], address))
        # Let HTTP in: the same clone answers, so it was the group.
        openstack("server", "add", "security", "group", guarded["id"], self.web["id"],
                  parse=False)
        self.assertEqual([address], answers(self.network["id"], address,
                                            CLONE_TIMEOUT_S)["ipv4"])
        openstack("server", "delete", "--wait", guarded["id"], parse=False)


class TestHeatClustersOnATenantNetwork(NetworkTestCase):

    def _grow(self, stack: str, image: str, flavor: str, prefix: str, timeout_s: float,
              hostname: str | None = None) -> dict[str, float]:
        """etc/heat/clone-cluster.yaml with 4 members on the network, then
        12; every member serves each time (assert_serves, with ``hostname``).
        The update's times: Heat's (its events) and until all 12 answer HTTP
        on their own addresses."""
        self.addCleanup(subprocess.run, ["openstack", "stack", "delete", "--yes", "--wait",
                                         stack], capture_output=True, timeout=1200)
        openstack("stack", "create", "--wait", "-t", CLUSTER_TEMPLATE,
                  "--parameter", "count=4", "--parameter", f"live_image={image}",
                  "--parameter", f"clone_flavor={flavor}", "--parameter", f"network={NAME}",
                  "--parameter", f"security_groups={self.web['id']}",
                  "--parameter", f"name_prefix={prefix}", stack, parse=False,
                  timeout=timeout_s)
        ids = openstack("stack", "output", "show", stack, "server_ids")["output_value"]
        self.assertEqual(4, len(ids))
        self.assert_serves(shown(ids), hostname, timeout_s)
        started = time.monotonic()
        openstack("stack", "update", "--wait", "--existing", "--parameter", "count=12",
                  stack, parse=False, timeout=timeout_s)
        ids = openstack("stack", "output", "show", stack, "server_ids")["output_value"]
        servers = shown(ids)
        self.assertEqual([f"{prefix}-{i}" for i in range(12)], sorted(
            servers, key=lambda n: int(n.rsplit("-", 1)[1])))
        self.assert_serves(servers, hostname, timeout_s)
        growth = {"update_s": cloud.last_update_s(stack),
                  "to_all_http_s": time.monotonic() - started}
        openstack("stack", "delete", "--yes", "--wait", stack, parse=False, timeout=1200)
        return growth

    def test_resource_group_grows_4_to_12_and_every_member_serves(self):
        clones = self._grow(f"{NAME}-clones", self.live_image, "m1.debian.clone",
                            f"{NAME}-c", CLONE_TIMEOUT_S * 4)
        # A booted server of this image (no cloud-init, and the agent is
        # nova's only for clones) keeps the image's hostname.
        boots = self._grow(f"{NAME}-boots", "debian", "m1.debian", f"{NAME}-b",
                           COLD_CLUSTER_TIMEOUT_S, hostname="debian-guest")
        print(f"\nHeat ResourceGroup 4 -> 12 on {NAME}: clone flavor UPDATE_COMPLETE "
              f"{clones['update_s']:.0f} s, all 12 serving HTTP {clones['to_all_http_s']:.0f} s; "
              f"normal flavor {boots['update_s']:.0f} s and {boots['to_all_http_s']:.0f} s "
              f"({boots['to_all_http_s'] / clones['to_all_http_s']:.1f}x)")

    def test_autoscaling_group_scales_up_on_its_policys_signal(self):
        stack = f"{NAME}-asg"
        # A failed run leaves no members to slow down the next test.
        self.addCleanup(subprocess.run, ["openstack", "stack", "delete", "--yes", "--wait",
                                         stack], capture_output=True, timeout=1200)
        openstack("stack", "create", "--wait", "-t", AUTOSCALING_TEMPLATE,
                  "--parameter", f"live_image={self.live_image}",
                  "--parameter", "clone_flavor=m1.debian.clone",
                  "--parameter", f"network={NAME}",
                  "--parameter", f"security_groups={self.web['id']}",
                  "--parameter", "min_size=1", "--parameter", "max_size=4",
                  "--parameter", "desired_capacity=2", "--parameter", "step=2",
                  "--parameter", "cooldown=0", stack, parse=False, timeout=1200)

        def members() -> list[str]:
            return openstack("stack", "output", "show", stack, "server_ids")["output_value"]

        self.assertEqual(2, len(members()))
        self.assert_serves(shown(members()))
        started = time.monotonic()
        # What a user (or an alarm with a token) does: signal the policy.
        openstack("stack", "resource", "signal", stack, "scale_up", parse=False)
        # (The signal updates the group's nested stack, not the stack.)
        waiting.wait(lambda: len(members()) == 4 and all(
            openstack("server", "show", i)["status"] == "ACTIVE" for i in members()),
            CLONE_TIMEOUT_S, lambda: f"{stack}'s members: {shown(members()).keys()}")
        self.assert_serves(shown(members()))
        scaled_s = time.monotonic() - started
        # The group stops at max_size: one more signal adds nobody.
        openstack("stack", "resource", "signal", stack, "scale_up", parse=False)
        time.sleep(10)
        self.assertEqual(4, len(members()))
        openstack("stack", "delete", "--yes", "--wait", stack, parse=False, timeout=1200)
        print(f"\nAutoScalingGroup 2 -> 4 on a scale_up signal: all 4 serving after "
              f"{scaled_s:.0f} s")


class TestGuestHookWithTheMetadataService(NetworkTestCase):
    """The Debian guest without qemu-guest-agent, with the guest hook
    (image debian-hook): a clone takes its hostname from neutron's metadata
    service, through the DHCP namespace's proxy and nova's metadata API."""

    image = "debian-hook"

    def test_a_clone_takes_its_hostname_from_the_metadata_service(self):
        self.assertEqual("debian-guest", self.master_identity["hostname"])
        clone = openstack("server", "create", "--image", self.live_image, "--flavor",
                          "m1.debian.clone", "--network", NAME, "--security-group",
                          self.web["id"], "--wait", f"{NAME}-hook-clone")
        address = fixed_ip(clone, NAME)
        hostname = openstack("server", "show", clone["id"])["OS-EXT-SRV-ATTR:hostname"]
        waiting.wait(lambda: (identity(self.network["id"], address) or {}).get("hostname")
                     == hostname, CLONE_TIMEOUT_S,
                     lambda: f"{address}: {identity(self.network['id'], address)}")
        self.assert_serves(shown([clone["id"]]))
        openstack("server", "delete", "--wait", clone["id"], parse=False)


if __name__ == "__main__":
    unittest.main()
