"""What the nova driver changes in nova's domain XML (no libvirt needed)."""

import os

import fixtures
from lxml import etree
import testtools

from nova_clonedriver.virt import driver as driver_mod

NOVA_XML = """<domain type="qemu">
  <uuid>11111111-1111-1111-1111-111111111111</uuid>
  <name>instance-00000001</name>
  <metadata>
    <nova:instance xmlns:nova="http://openstack.org/xmlns/libvirt/nova/1.1">
      <nova:name>web</nova:name>
    </nova:instance>
  </metadata>
  <devices>
    <disk type="file" device="disk">
      <driver name="qemu" type="{fmt}" cache="none"/>
      <source file="{folder}/disk"/>
      <target bus="virtio" dev="vda"/>
    </disk>
    <disk type="file" device="cdrom">
      <driver name="qemu" type="raw"/>
      <source file="{folder}/disk.config"/>
      <target bus="sata" dev="sda"/>
    </disk>
  </devices>
</domain>
"""


class TestGuestXMLForClones(testtools.TestCase):
    def setUp(self):
        super().setUp()
        self.folder = self.useFixture(fixtures.TempDir()).path

    def rewritten(self, fmt="qcow2"):
        xml = driver_mod.guest_xml_for_clones(NOVA_XML.format(folder=self.folder, fmt=fmt))
        return xml, etree.fromstring(xml)

    def test_every_server_gets_a_generation_id(self):
        xml, root = self.rewritten()
        self.assertEqual(["uuid", "genid", "name"], [e.tag for e in root][:3])
        self.assertEqual("", root.findtext("genid"))  # empty: libvirt makes one
        # nova's metadata keeps its namespace prefix.
        self.assertIn("<nova:name>web</nova:name>", xml)
        # One there already stays as it is.
        again = driver_mod.guest_xml_for_clones(xml)
        self.assertEqual(1, len(etree.fromstring(again).findall("genid")))

    def test_no_server_gets_a_memory_balloon(self):
        # nova's, when [libvirt] mem_stats_period_seconds > 0 (its default).
        balloon = (
            '<memballoon model="virtio" autodeflate="on" freePageReporting="on">'
            '<stats period="10"/></memballoon></devices>'
        )
        xml = driver_mod.guest_xml_for_clones(
            NOVA_XML.format(folder=self.folder, fmt="qcow2").replace("</devices>", balloon)
        )
        balloons = etree.fromstring(xml).findall("devices/memballoon")
        self.assertEqual([{"model": "none"}], [dict(b.attrib) for b in balloons])
        _, root = self.rewritten()  # none written: libvirt would add a virtio one
        self.assertEqual(["none"], [b.get("model") for b in root.iterfind("devices/memballoon")])

    def test_a_never_blessed_server_keeps_its_disks(self):
        _, root = self.rewritten()
        self.assertEqual(
            [f"{self.folder}/disk", f"{self.folder}/disk.config"],
            [s.get("file") for s in root.iterfind("devices/disk/source")],
        )

    def test_a_blessed_master_runs_on_its_last_overlay(self):
        for name in ("disk", "disk.live-0123abcd"):
            open(os.path.join(self.folder, name), "w").close()
        os.symlink("disk.live-0123abcd", os.path.join(self.folder, "disk.top"))
        _, root = self.rewritten(fmt="raw")
        [disk, config] = root.iterfind("devices/disk")
        self.assertEqual(
            (f"{self.folder}/disk.live-0123abcd", "qcow2"),
            (disk.find("source").get("file"), disk.find("driver").get("type")),
        )
        self.assertEqual(
            (f"{self.folder}/disk.config", "raw"),
            (config.find("source").get("file"), config.find("driver").get("type")),
        )
