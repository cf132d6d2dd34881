"""Clones of the Debian 12 test guest on a libvirt network with DHCP.

Nothing of ours runs in the guest: what a clone becomes (its own address,
hostname, clock and randomness) comes from its own NIC, DHCP, the VM
generation ID and qemu-guest-agent, as it would for a user's image.
"""

from __future__ import annotations

import os
import time
import xml.etree.ElementTree as ET

import libvirt

from nova_clonedriver.demo import debianguest
from nova_clonedriver.demo import testguest
from nova_clonedriver.engine import api
from nova_clonedriver.engine import domainxml
from tests import waiting
from tests.functional import base
from tests.functional import metadata

MEMORY_MIB = 512
# Between bless and launch, so that a clone's stale clock shows.
BLESS_TO_LAUNCH_S = 15
# A clock set from the host's is within this of it; one BLESS_TO_LAUNCH_S
# behind is not (a loaded TCG guest can lose a second or two by itself).
CLOCK_TOLERANCE_S = 5.0
BOOT_TIMEOUT_S = 300
CLONE_TIMEOUT_S = 120


class DebianClonesTestCase(base.LibvirtTestCase):
    """A Debian master on the test network, blessed, and two of its clones
    (started BLESS_TO_LAUNCH_S after the bless), each asked who it is over
    HTTP on the address DHCP gave it."""

    flavour = "generic"
    guest_agent = True
    guest_hook = False

    @classmethod
    def setUpClass(cls) -> None:
        super().setUpClass()
        debianguest.ensure_network(cls.conn)
        cls.start_services()
        cls.engine = api.CloneEngine(cls.conn, cls.state_dir)
        cls.master, cls.master_address = debianguest.boot(
            cls.conn,
            f"{cls.prefix}-deb",
            MEMORY_MIB,
            os.path.join(cls.state_dir, "deb"),
            cls.flavour,
            cls.guest_agent,
            cls.guest_hook,
            BOOT_TIMEOUT_S,
        )
        cls.master_identity = debianguest.identity(cls.master_address)
        cls.generation = cls.engine.bless(cls.master.name())
        time.sleep(BLESS_TO_LAUNCH_S)
        cls.clones = cls.engine.launch(cls.generation.id, count=2)
        cls.addresses, cls.identities, cls.clock_skews_s = [], [], []
        for clone in cls.clones:
            domain = cls.conn.lookupByUUIDString(clone.uuid)
            address = debianguest.wait_for_address(
                cls.conn, domain, CLONE_TIMEOUT_S, mac=clone.mac_addresses[0]
            )
            cls.identities.append(debianguest.wait_for_identity(address, CLONE_TIMEOUT_S))
            cls.clock_skews_s.append(debianguest.clock_skew_s(address))
            cls.addresses.append(address)

    @classmethod
    def start_services(cls) -> None:
        """What the guests need on the network besides DHCP (none here)."""


class TestClonesOfDebian(DebianClonesTestCase):
    """The kernel of linux-image-amd64 (it reseeds on a new generation ID),
    with qemu-guest-agent."""

    def test_bless_found_the_agent_and_the_kernels_genid_driver(self):
        self.assertTrue(self.generation.guest_agent)
        self.assertFalse(self.generation.agent_reseeds_rng)
        for clone in self.clones:
            self.assertGreater(clone.phases_ms["guest_agent"], 0)

    def test_each_clone_leases_its_own_address_and_answers_on_it(self):
        self.assertEqual(2, len(set(self.addresses)))
        self.assertNotIn(self.master_address, self.addresses)
        for address, identity in zip(self.addresses, self.identities, strict=True):
            self.assertEqual([address], identity["ipv4"])
        # The master keeps its own.
        self.assertEqual([self.master_address], debianguest.identity(self.master_address)["ipv4"])

    def test_each_clone_has_its_own_hostname(self):
        self.assertEqual(
            [clone.name for clone in self.clones], [i["hostname"] for i in self.identities]
        )
        self.assertEqual("debian-guest", self.master_identity["hostname"])

    def test_the_clone_has_only_its_own_nic(self):
        # The master's is gone (its unplug is done while the agent works, so
        # the new NIC may take its PCI slot and name: see the class without
        # an agent for a new name).
        for clone, identity in zip(self.clones, self.identities, strict=True):
            self.assertEqual(clone.mac_addresses, [nic["mac"] for nic in identity["nics"]])

    def test_a_clone_continues_its_masters_boot(self):
        # Not a reboot: the boot id, and what the guest derived once (its
        # machine id), are the master's. doc/source/guests.rst says so.
        for identity in self.identities:
            self.assertEqual(self.master_identity["boot_id"], identity["boot_id"])
            self.assertEqual(self.master_identity["machine_id"], identity["machine_id"])

    def test_the_agent_set_each_clones_clock(self):
        for skew_s in self.clock_skews_s:
            self.assertLess(abs(skew_s), CLOCK_TOLERANCE_S)

    def test_clones_draw_their_own_random_numbers(self):
        numbers = [i["random"] for i in self.identities]
        self.assertEqual(2, len(set(numbers)))
        self.assertEqual(32, len(numbers[0]))


class TestClonesOfDebianCloudKernel(DebianClonesTestCase):
    """Debian's cloud kernel has no CONFIG_VMGENID: the agent reseeds."""

    flavour = "cloud"

    def test_bless_found_that_the_agent_must_reseed(self):
        self.assertTrue(self.generation.guest_agent)
        self.assertTrue(self.generation.agent_reseeds_rng)

    def test_clones_draw_their_own_random_numbers(self):
        self.assertEqual(2, len({i["random"] for i in self.identities}))

    def test_clock_and_hostname(self):
        self.assertEqual(
            [clone.name for clone in self.clones], [i["hostname"] for i in self.identities]
        )
        for skew_s in self.clock_skews_s:
            self.assertLess(abs(skew_s), CLOCK_TOLERANCE_S)


class TestClonesOfDebianWithoutAgent(DebianClonesTestCase):
    """No agent channel: the clone still gets its own NIC and lease, but
    keeps the master's hostname, and its clock is as old as the bless."""

    guest_agent = False

    def test_the_new_nic_gets_dhcp_under_a_new_name(self):
        # Plugged while the master's is still leaving, so on another PCI
        # slot and with another name: the guest's hotplug rule (as Debian's
        # cloud images have) gives it DHCP all the same.
        [master_nic] = self.master_identity["nics"]
        for clone, identity in zip(self.clones, self.identities, strict=True):
            [nic] = identity["nics"]
            self.assertEqual(clone.mac_addresses[0], nic["mac"])
            self.assertNotEqual(master_nic["name"], nic["name"])

    def test_own_address_but_masters_hostname(self):
        self.assertFalse(self.generation.guest_agent)
        self.assertEqual(2, len(set(self.addresses)))
        self.assertNotIn(self.master_address, self.addresses)
        for identity in self.identities:
            self.assertEqual("debian-guest", identity["hostname"])

    def test_clock_is_behind_by_the_time_since_the_bless(self):
        for skew_s in self.clock_skews_s:
            self.assertLess(skew_s, -(BLESS_TO_LAUNCH_S - CLOCK_TOLERANCE_S))


class TestGuestHookWithoutAgent(DebianClonesTestCase):
    """No agent, Debian's cloud kernel (it ignores the generation ID), and
    the optional guest hook of tools/guest-hook/: the clone takes its clock
    from the RTC, reseeds its RNG and asks the metadata service its name."""

    flavour = "cloud"
    guest_agent = False
    guest_hook = True

    @classmethod
    def start_services(cls) -> None:
        cls.metadata = metadata.MetadataService(os.path.join(cls.state_dir, "metadata.log"))
        cls.metadata.start()
        cls.addClassCleanup(cls.metadata.stop)

    def test_hostname_from_the_metadata_service(self):
        # The hook asks once the NIC has its address: maybe just after the
        # identity service first answered there.
        for clone, address in zip(self.clones, self.addresses, strict=True):
            waiting.wait(
                lambda a=address, n=clone.name: debianguest.identity(a)["hostname"] == n,
                CLONE_TIMEOUT_S,
                f"{clone.name} did not take its hostname from the metadata service",
            )
            self.assertIn((address, clone.name), self.metadata.answers())

    def test_clock_from_the_rtc(self):
        for skew_s in self.clock_skews_s:
            self.assertLess(abs(skew_s), CLOCK_TOLERANCE_S)

    def test_the_hook_reseeded_each_clones_rng(self):
        for clone, identity in zip(self.clones, self.identities, strict=True):
            nic = identity["nics"][0]["name"]
            with open(base.clone_console(self.engine, clone.uuid), errors="replace") as f:
                console = f.read()
            self.assertIn(f"nova-clone-hook: {nic}: RNG reseeded from", console)
        self.assertEqual(2, len({i["random"] for i in self.identities}))


class TestAgentThatDoesNotAnswer(base.LibvirtTestCase):
    def test_bless_is_refused_and_changes_nothing(self):
        """A master with qemu-guest-agent's channel but no agent behind it
        (the busybox guest runs none): its clones could not be given their
        clock, hostname or fresh randomness, so no bless."""
        workdir = os.path.join(self.state_dir, "noagent")
        testguest.prepare(workdir)
        root = ET.fromstring(testguest.domain_xml(f"{self.prefix}-noagent", 128, workdir))
        channel = ET.SubElement(root.find("devices"), "channel", type="unix")
        ET.SubElement(channel, "source", mode="bind", path=f"{workdir}/qga.sock")
        ET.SubElement(channel, "target", type="virtio", name=domainxml.AGENT_CHANNEL_NAME)
        domain = self.conn.createXML(ET.tostring(root, encoding="unicode"), 0)
        testguest.agent_in(workdir).wait_ready()
        engine = api.CloneEngine(self.conn, self.state_dir)
        disk = base.disk_path(domain)
        error = self.assertRaises(api.BlessError, engine.bless, domain.name())
        self.assertIn("agent does not answer", str(error))
        self.assertEqual([], engine.generations())
        self.assertEqual(disk, base.disk_path(domain))
        self.assertEqual(libvirt.VIR_DOMAIN_RUNNING, domain.state()[0])
