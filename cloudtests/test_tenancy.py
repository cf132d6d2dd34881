"""Two projects on the minicloud: a second tenant can neither fork the
first one's server nor launch its generation from an image of its own, and
the first one's master keeps what it wrote after the bless through a hard
reboot (see doc/source/security.rst). Only the openstack CLI, as each
tenant would use it; the guest's disk is read and written through its
serial console from the host, as the other tests read its console log."""

from __future__ import annotations

import hashlib
import os
import secrets
import tempfile
import unittest

import libvirt

from cloudtests import test_cloud as cloud
from cloudtests.test_cloud import openstack
from tests import guestconsole
from tests import waiting

INSTANCES = os.path.join(cloud.ROOT, "nova", "instances")


def console_log(server_id: str) -> str:
    try:
        with open(os.path.join(INSTANCES, server_id, "console.log"), errors="replace") as f:
            return f.read()
    except FileNotFoundError:
        return ""


def sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


class TestTwoProjects(unittest.TestCase):

    def setUp(self):
        self.name = f"{cloud.PREFIX}-tenancy"
        self.project_b, self.user_b = f"{self.name}-b", f"{self.name}-user-b"
        password = secrets.token_hex(16)
        self.addCleanup(self._cleanup)
        openstack("project", "create", "--domain", "Default", self.project_b)
        openstack("user", "create", "--domain", "Default", "--project", self.project_b,
                  "--password", password, self.user_b)
        openstack("role", "add", "--project", self.project_b, "--user", self.user_b,
                  "member", parse=False)
        self.as_b = {"OS_PROJECT_NAME": self.project_b, "OS_USERNAME": self.user_b,
                     "OS_PASSWORD": password}
        self.conn = libvirt.open("qemu:///system")
        self.addCleanup(self.conn.close)

    def _cleanup(self):
        ids = [s["ID"] for s in openstack("server", "list", "--all-projects", "--name",
                                          f"^{self.name}-")]
        if ids:
            openstack("server", "delete", "--wait", *ids, parse=False)
        for image in openstack("image", "list", "--name", f"{self.name}-live"):
            openstack("image", "delete", image["ID"], parse=False)
        for kind, name in (("user", self.user_b), ("project", self.project_b)):
            if openstack(kind, "list", "-c", "Name", parse=False).count(name):
                openstack(kind, "delete", name, parse=False)

    def _wait_error(self, server_id: str) -> str:
        def failed():
            server = openstack("server", "show", server_id)
            self.assertNotEqual("ACTIVE", server["status"], server_id)
            return server if server["status"] == "ERROR" else None
        return waiting.wait(failed, 300, f"{server_id} not ERROR")["fault"]["message"]

    def _disk(self, server_id: str, command: str) -> str:
        reply = guestconsole.request(self.conn.lookupByUUIDString(server_id),
                                     lambda: console_log(server_id), command, 60)
        self.assertTrue(reply["ok"], reply)
        return reply["checksum"]

    def test_a_second_project_is_refused_and_the_master_keeps_its_writes(self):
        master = openstack("server", "create", "--image", "guest", "--flavor", "m1.guest",
                           "--nic", "none", "--wait", f"{self.name}-master")
        waiting.wait(lambda: cloud.heartbeats(master["id"]), 180, "no heartbeat")
        openstack("server", "image", "create", "--property", "clone_live=true",
                  "--name", f"{self.name}-live", "--wait", master["id"])
        properties = openstack("image", "show", f"{self.name}-live")["properties"]
        generation = properties["clone_generation"]
        frozen = os.path.join(cloud.STATE_DIR, "generations", generation, "disks",
                              "vda.qcow2")
        frozen_sha = sha256(frozen)
        domains = cloud.cloud_domains()

        # Project B forks project A's server.
        fork = openstack("server", "create", "--image", "guest", "--flavor",
                         "m1.guest.clone", "--nic", "none", "--property",
                         f"clone_of={master['id']}", f"{self.name}-fork-b",
                         credentials=self.as_b)
        fault = self._wait_error(fork["id"])
        self.assertIn("has no such server", fault)
        # Project B's own image naming project A's generation and host.
        with tempfile.NamedTemporaryFile() as data:
            data.write(bytes(1 << 20))
            data.flush()
            forged = openstack(
                "image", "create", "--disk-format", "raw", "--container-format", "bare",
                "--file", data.name, "--property", "clone_live=true",
                "--property", f"clone_generation={generation}",
                "--property", f"clone_origin_host={properties['clone_origin_host']}",
                f"{self.name}-forged", credentials=self.as_b)
        server = openstack("server", "create", "--image", forged["id"], "--flavor",
                           "m1.guest.clone", "--nic", "none", f"{self.name}-forged-b",
                           credentials=self.as_b)
        fault = self._wait_error(server["id"])
        self.assertIn("belongs to another live image", fault)
        self.assertEqual(domains, cloud.cloud_domains())
        openstack("image", "delete", forged["id"], parse=False, credentials=self.as_b)

        # Project A's master: written after the bless, hard rebooted.
        written = self._disk(master["id"], "diskwrite 300 300")
        openstack("server", "reboot", "--hard", "--wait", master["id"], parse=False)
        self.assertEqual("ACTIVE", openstack("server", "show", master["id"])["status"])
        waiting.wait(lambda: cloud.heartbeats(master["id"]), 180, "no heartbeat")
        self.assertEqual(written, self._disk(master["id"], "diskread 300"))
        self.assertEqual(frozen_sha, sha256(frozen))
        print(f"\nproject B refused twice ({fault!r}); the master kept block 300 "
              f"({written}) through a hard reboot; frozen base unchanged")
