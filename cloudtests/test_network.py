"""Clones of the Debian guest on a tenant network of the minicloud: each
clone gets its own neutron port, its guest takes that port's fixed IP from
neutron's DHCP, gets its own hostname (through qemu-guest-agent), answers
ping and HTTP on that IP from the network's DHCP namespace, and its
security groups apply (a clone in a group without HTTP does not answer
HTTP). Only the openstack CLI, as a user would; the guests are reached
from the host through the namespace ``qdhcp-<network id>``, as an operator
would reach them without a router."""

from __future__ import annotations

import json
import subprocess
import time
import unittest

from cloudtests import test_cloud as cloud
from cloudtests.test_cloud import openstack
from tests import waiting

SUBNET_CIDR = "10.77.0.0/24"
BOOT_TIMEOUT_S = 600
CLONE_TIMEOUT_S = 300
CLONES = 3


def in_namespace(network_id: str, *command: str, timeout_s: float = 30) -> subprocess.CompletedProcess:
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


class TestClonesOnATenantNetwork(unittest.TestCase):

    def setUp(self):
        self.name = f"{cloud.PREFIX}-net"
        self.addCleanup(self._cleanup)
        self.network = openstack("network", "create", self.name)
        openstack("subnet", "create", "--network", self.name, "--subnet-range", SUBNET_CIDR,
                  self.name)
        self.web = openstack("security group", "create", f"{self.name}-web")
        self.ping_only = openstack("security group", "create", f"{self.name}-ping")
        for group in (self.web, self.ping_only):
            openstack("security group rule", "create", "--ingress", "--protocol", "icmp",
                      group["id"])
        openstack("security group rule", "create", "--ingress", "--protocol", "tcp",
                  "--dst-port", "80", self.web["id"])

    def _cleanup(self):
        ids = [s["ID"] for s in openstack("server", "list", "--name", f"^{self.name}-")]
        if ids:
            openstack("server", "delete", "--wait", *ids, parse=False)
        for image in openstack("image", "list", "--name", f"{self.name}-live"):
            openstack("image", "delete", image["ID"], parse=False)
        for group in (f"{self.name}-web", f"{self.name}-ping"):
            subprocess.run(["openstack", "security", "group", "delete", group],
                           capture_output=True, timeout=120)
        subprocess.run(["openstack", "network", "delete", self.name], capture_output=True,
                       timeout=120)

    def _server(self, name: str) -> dict:
        return openstack("server", "show", name)

    def _answers(self, address: str, timeout_s: float) -> dict:
        return waiting.wait(lambda: identity(self.network["id"], address), timeout_s,
                            f"{address} does not answer HTTP")

    def test_clones_take_their_ports_and_answer_on_them(self):
        # The master: the Debian guest with the normal flavor, on the network.
        master_name = f"{self.name}-master"
        master = openstack("server", "create", "--image", "debian", "--flavor", "m1.debian",
                           "--network", self.name, "--security-group", self.web["id"],
                           "--wait", master_name, timeout=BOOT_TIMEOUT_S)
        master_ip = fixed_ip(master, self.name)
        master_identity = self._answers(master_ip, BOOT_TIMEOUT_S)
        self.assertEqual([master_ip], master_identity["ipv4"])
        openstack("server", "image", "create", "--property", "clone_live=true",
                  "--name", f"{self.name}-live", "--wait", master["id"])

        # Clones in one request, each with its own port.
        started = time.monotonic()
        openstack("server", "create", "--image", f"{self.name}-live", "--flavor",
                  "m1.debian.clone", "--network", self.name, "--security-group",
                  self.web["id"], "--min", str(CLONES), "--max", str(CLONES), "--wait",
                  f"{self.name}-clone")
        active_s = time.monotonic() - started
        clones = {name: self._server(s["ID"])
                  for name, s in cloud.servers(f"^{self.name}-clone-").items()}
        self.assertEqual(CLONES, len(clones))
        addresses = {name: fixed_ip(s, self.name) for name, s in clones.items()}
        self.assertEqual(CLONES, len(set(addresses.values())))
        self.assertNotIn(master_ip, addresses.values())
        ports = {p["Fixed IP Addresses"][0]["ip_address"]: p
                 for p in openstack("port", "list", "--network", self.name, "--long")}
        for name, server in clones.items():
            address = addresses[name]
            found = self._answers(address, CLONE_TIMEOUT_S)
            self.assertEqual([address], found["ipv4"], name)
            self.assertEqual(server["OS-EXT-SRV-ATTR:hostname"], found["hostname"], name)
            [nic] = found["nics"]
            self.assertEqual(ports[address]["MAC Address"], nic["mac"], name)
            self.assertEqual(master_identity["boot_id"], found["boot_id"], name)
            self.assertTrue(pings(self.network["id"], address), name)
        all_http_s = time.monotonic() - started
        # The master still answers on its own address, unchanged by them.
        self.assertEqual(master_identity["hostname"],
                         self._answers(master_ip, CLONE_TIMEOUT_S)["hostname"])

        # A clone in a group that lets ping in but not HTTP.
        guarded = openstack("server", "create", "--image", f"{self.name}-live", "--flavor",
                            "m1.debian.clone", "--network", self.name, "--security-group",
                            self.ping_only["id"], "--wait", f"{self.name}-guarded")
        guarded_ip = fixed_ip(guarded, self.name)
        waiting.wait(lambda: pings(self.network["id"], guarded_ip), CLONE_TIMEOUT_S,
                     f"{guarded_ip} does not answer ping")
        self.assertIsNone(identity(self.network["id"], guarded_ip))
        # Let HTTP in: the same clone answers, so it was the group.
        openstack("server", "add", "security", "group", guarded["id"], self.web["id"],
                  parse=False)
        found = self._answers(guarded_ip, CLONE_TIMEOUT_S)
        self.assertEqual([guarded_ip], found["ipv4"])
        print(f"\n{CLONES} clones on {self.name}: POST to ACTIVE {active_s:.1f} s, to all "
              f"answering HTTP on their own ports {all_http_s:.1f} s; {addresses}")


if __name__ == "__main__":
    unittest.main()
