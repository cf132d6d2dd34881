"""The test guest boots under libvirt and its agent answers."""

import os
import socket
import time
import xml.etree.ElementTree as ET

from nova_clonedriver.demo import agent as agent_mod
from nova_clonedriver.demo import testguest
from tests.functional import base


class TestTestGuest(base.LibvirtTestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.domain, cls.agent, cls.workdir = cls.boot_master("guest")

    @classmethod
    def tearDownClass(cls):
        cls.agent.close()
        super().tearDownClass()

    def test_heartbeat_counts_up_every_second(self):
        time.sleep(2.5)
        beats = agent_mod.heartbeats(os.path.join(self.workdir, testguest.CONSOLE_LOG))
        self.assertGreaterEqual(len(beats), 2)
        self.assertEqual(list(range(1, len(beats) + 1)), beats)

    def test_fill_and_checksum(self):
        filled = self.agent.request("fill", 16, 5)
        self.assertEqual(16, filled["mib"])
        self.assertRegex(filled["checksum"], r"^[0-9a-f]{16}$")
        self.assertEqual(filled["checksum"], self.agent.request("checksum")["checksum"])
        self.assertEqual(16, self.agent.request("ping")["pattern_mib"])
        dirty = self.agent.request("dirty", 10, 99)
        self.assertEqual(410, dirty["pages"])  # 10 of each 100 of 4096 pages
        self.assertNotEqual(filled["checksum"], self.agent.request("checksum")["checksum"])
        again = self.agent.request("fill", 16, 5)
        self.assertEqual(filled["checksum"], again["checksum"])
        other = self.agent.request("fill", 16, 6)
        self.assertNotEqual(filled["checksum"], other["checksum"])

    def test_identity(self):
        first = self.agent.request("identity")
        second = self.agent.request("identity")
        self.assertRegex(first["random"], r"^[0-9a-f]{32}$")
        self.assertNotEqual(first["random"], second["random"])
        self.assertRegex(first["genid"], r"^[0-9a-f]{32}$")
        self.assertNotEqual("0" * 32, first["genid"])
        mac = ET.fromstring(self.domain.XMLDesc(0)).find("devices/interface/mac").get("address")
        self.assertEqual([mac], [n["mac"] for n in first["nics"]])

    def test_malformed_requests_get_errors_and_the_agent_lives_on(self):
        for command, args in (("fill", ()), ("dirty", (101, 1)), ("selfdestruct", ())):
            error = self.assertRaises(agent_mod.AgentError, self.agent.request, command, *args)
            self.assertIn("unknown or malformed", str(error))
        self.agent.close()  # QEMU's socket takes one client at a time
        raw = socket.socket(socket.AF_UNIX)
        raw.connect(os.path.join(self.workdir, testguest.AGENT_SOCKET))
        raw.settimeout(30)
        # An over-long line and an empty one, then a ping: only the ping is run.
        raw.sendall(b"x" * 5000 + b"\n\nlong-1 ping\n")
        received = b""
        while b'"id":"long-1"' not in received:
            received += raw.recv(4096)
        raw.close()
        self.assertNotIn(b'"ok":true', received.split(b'"id":"long-1"')[0])
        self.assertTrue(self.agent.request("ping")["ok"])
        console = os.path.join(self.workdir, testguest.CONSOLE_LOG)
        with open(console, "rb") as f:
            self.assertNotIn(b"clone-agent exited", f.read())
        beats = agent_mod.heartbeats(console)
        self.assertEqual(list(range(1, len(beats) + 1)), beats)
