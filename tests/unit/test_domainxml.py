import dataclasses
import xml.etree.ElementTree as ET

import testtools

from nova_clonedriver.engine import domainxml

MASTER = """<domain type='qemu' id='7'>
  <name>web</name>
  <uuid>11111111-1111-1111-1111-111111111111</uuid>
  <genid>22222222-2222-2222-2222-222222222222</genid>
  <memory unit='KiB'>262144</memory>
  <vcpu placement='static'>2</vcpu>
  <sysinfo type='smbios'>
    <system>
      <entry name='manufacturer'>OpenStack Foundation</entry>
      <entry name='serial'>11111111-1111-1111-1111-111111111111</entry>
      <entry name='uuid'>11111111-1111-1111-1111-111111111111</entry>
    </system>
  </sysinfo>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='raw'/>
      <source file='/srv/web/disk.raw'/>
      <backingStore/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <disk type='file' device='cdrom'>
      <source file='/srv/config.iso'/>
      <target dev='hdc' bus='ide'/>
      <readonly/>
    </disk>
    <interface type='user'>
      <mac address='52:54:00:00:00:01'/>
      <model type='virtio'/>
      <alias name='net0'/>
      <address type='pci' domain='0x0000' bus='0x00' slot='0x03' function='0x0'/>
    </interface>
    <serial type='file'><source path='/srv/web/console.log'/><target port='0'/></serial>
    <console type='file'><source path='/srv/web/console.log'/><target port='0'/></console>
    <serial type='pty'><log file='/srv/web/pty.log'/><target port='1'/></serial>
    <channel type='unix'>
      <source mode='bind' path='/srv/web/agent.sock'/>
      <target type='virtio' name='org.example.0'/>
    </channel>
  </devices>
</domain>"""

IDENTITY = domainxml.CloneIdentity(
    name="web-clone-1",
    uuid="33333333-3333-3333-3333-333333333333",
    genid="44444444-4444-4444-4444-444444444444",
    directory="/store/clones/3333",
    overlays={"vda": "/store/clones/3333/vda.qcow2"},
)


class TestMasterFacts(testtools.TestCase):
    def test_memory_vcpus_genid(self):
        root = domainxml.parse(MASTER)
        self.assertEqual(256 << 20, domainxml.memory_bytes(root))
        self.assertEqual(2, domainxml.vcpus(root))
        self.assertTrue(domainxml.has_genid(root))

    def test_guest_agent_channel(self):
        self.assertFalse(domainxml.has_agent_channel(domainxml.parse(MASTER)))
        with_agent = MASTER.replace("org.example.0", domainxml.AGENT_CHANNEL_NAME)
        self.assertTrue(domainxml.has_agent_channel(domainxml.parse(with_agent)))

    def test_a_clone_is_told_from_a_master(self):
        self.assertFalse(domainxml.is_clone(domainxml.parse(MASTER)))
        clone = domainxml.clone_xml(MASTER, IDENTITY, "/store/g/memory.img", 256 << 20)
        self.assertTrue(domainxml.is_clone(domainxml.parse(clone)))
        # An eager restore (no memory image) is not a clone of anything.
        self.assertFalse(
            domainxml.is_clone(
                domainxml.parse(domainxml.clone_xml(MASTER, IDENTITY, None, 256 << 20))
            )
        )

    def test_writable_disks_skip_readonly(self):
        disks = domainxml.writable_disks(domainxml.parse(MASTER))
        self.assertEqual([domainxml.DiskInfo("vda", "/srv/web/disk.raw", "raw")], disks)

    def test_network_disk_is_refused(self):
        xml = MASTER.replace(
            "<disk type='file' device='disk'>", "<disk type='network' device='disk'>"
        )
        error = self.assertRaises(
            domainxml.DomainXMLError, domainxml.writable_disks, domainxml.parse(xml)
        )
        self.assertIn("network", str(error))

    def test_unknown_format_is_refused(self):
        xml = MASTER.replace("type='raw'", "type='vmdk'")
        self.assertRaises(domainxml.DomainXMLError, domainxml.writable_disks, domainxml.parse(xml))

    def test_a_memory_balloon_is_refused(self):
        # What nova writes unless [libvirt] mem_stats_period_seconds = 0.
        nova_balloon = (
            "<memballoon model='virtio' autodeflate='on' freePageReporting='on'>"
            "<stats period='10'/></memballoon></devices>"
        )
        for balloon in (nova_balloon, "<memballoon model='virtio'/></devices>"):
            root = domainxml.parse(MASTER.replace("</devices>", balloon))
            error = self.assertRaises(
                domainxml.DomainXMLError, domainxml.check_no_memory_balloon, root
            )
            self.assertIn("memory balloon (<memballoon model='virtio'>)", str(error))
            self.assertIn("<memballoon model='none'/>", str(error))
        for xml in (MASTER, MASTER.replace("</devices>", "<memballoon model='none'/></devices>")):
            domainxml.check_no_memory_balloon(domainxml.parse(xml))


class TestCloneXML(testtools.TestCase):
    def setUp(self):
        super().setUp()
        self.root = ET.fromstring(
            domainxml.clone_xml(MASTER, IDENTITY, "/store/g/memory.img", 256 << 20)
        )

    def test_identity(self):
        self.assertIsNone(self.root.get("id"))
        self.assertEqual("web-clone-1", self.root.findtext("name"))
        self.assertEqual(IDENTITY.uuid, self.root.findtext("uuid"))
        self.assertEqual(IDENTITY.genid, self.root.findtext("genid"))

    def test_sysinfo_carries_the_clone_uuid(self):
        # libvirt refuses a domain whose <sysinfo> UUID is not its <uuid>.
        entries = {e.get("name"): e.text for e in self.root.findall("sysinfo/system/entry")}
        self.assertEqual(
            {
                "manufacturer": "OpenStack Foundation",
                "serial": IDENTITY.uuid,
                "uuid": IDENTITY.uuid,
            },
            entries,
        )

    def test_disk_becomes_overlay_without_stale_backing_chain(self):
        disk, cdrom = self.root.findall("devices/disk")
        self.assertEqual("/store/clones/3333/vda.qcow2", disk.find("source").get("file"))
        self.assertEqual("qcow2", disk.find("driver").get("type"))
        self.assertIsNone(disk.find("backingStore"))
        self.assertEqual("/srv/config.iso", cdrom.find("source").get("file"))

    def test_console_and_channel_paths_move_to_the_clone(self):
        paths = [
            e.get("path") or e.get("file")
            for e in self.root.iter()
            if e.tag in ("source", "log") and (e.get("path") or e.get("file", "").endswith(".log"))
        ]
        self.assertEqual(
            [
                "/store/clones/3333/console.log",
                "/store/clones/3333/console.log",
                "/store/clones/3333/pty.log",
                "/store/clones/3333/agent.sock",
            ],
            paths,
        )

    def test_a_socket_named_after_the_master_stays_in_its_folder(self):
        # nova's agent socket: libvirt's folder, the domain's name in the
        # file's; the clone's instance folder would be too long for it.
        nova_path = "/var/lib/libvirt/qemu/org.qemu.guest_agent.0.web.sock"
        master = MASTER.replace("/srv/web/agent.sock", nova_path)
        root = ET.fromstring(domainxml.clone_xml(master, IDENTITY, None, 256 << 20))
        self.assertEqual(
            ["/var/lib/libvirt/qemu/org.qemu.guest_agent.0.web-clone-1.sock"],
            [s.get("path") for s in root.findall("devices/channel/source")],
        )

    def test_a_socket_path_too_long_is_refused_clearly(self):
        deep = dataclasses.replace(IDENTITY, directory="/store/" + "d" * 100)
        error = self.assertRaises(
            ValueError, domainxml.clone_xml, MASTER, deep, "/store/g/memory.img", 256 << 20
        )
        self.assertIn("longer than 107 bytes", str(error))

    def test_ram_is_the_memory_image_mapped_privately(self):
        args = [
            a.get("value")
            for a in self.root.findall(
                f"{{{domainxml.QEMU_NS}}}commandline/{{{domainxml.QEMU_NS}}}arg"
            )
        ]
        self.assertEqual(
            [
                "-object",
                "memory-backend-file,id=clone-ram,mem-path=/store/g/memory.img,"
                "share=off,size=268435456",
                "-machine",
                "memory-backend=clone-ram",
            ],
            args,
        )

    def test_nic_keeps_master_mac_until_swapped(self):
        interface = domainxml.interfaces(self.root)[0]
        self.assertEqual("52:54:00:00:00:01", interface.find("mac").get("address"))
        replacement = ET.fromstring(domainxml.interface_with_mac(interface, "52:54:00:aa:bb:cc"))
        self.assertEqual("52:54:00:aa:bb:cc", replacement.find("mac").get("address"))
        self.assertIsNone(replacement.find("address"))
        self.assertIsNone(replacement.find("alias"))
        self.assertEqual("virtio", replacement.find("model").get("type"))

    def test_masters_nics_are_isolated_until_swapped(self):
        xml = MASTER.replace(
            "<interface type='user'>",
            "<interface type='bridge'><source bridge='br-int'/>"
            "<virtualport type='openvswitch'/><target dev='tap1'/>",
        )
        root = domainxml.parse(domainxml.clone_xml(xml, IDENTITY, None, 256 << 20))
        [interface] = domainxml.interfaces(root)
        self.assertEqual("ethernet", interface.get("type"))
        self.assertEqual("down", interface.find("link").get("state"))
        # The device the guest's state knows is the same one...
        self.assertEqual("52:54:00:00:00:01", interface.find("mac").get("address"))
        self.assertEqual("virtio", interface.find("model").get("type"))
        self.assertEqual("0x03", interface.find("address").get("slot"))
        self.assertEqual("net0", interface.find("alias").get("name"))
        # ... connected to nothing.
        for gone in ("source", "virtualport", "target"):
            self.assertIsNone(interface.find(gone), gone)
        # In the master's place among the devices.
        devices = [e.tag for e in root.find("devices")]
        master_devices = [e.tag for e in domainxml.parse(xml).find("devices")]
        self.assertEqual(master_devices, devices)

    def test_user_mode_networking_stays_with_its_link_down(self):
        # slirp's state is in the device stream: the clone needs one to load.
        root = domainxml.parse(domainxml.clone_xml(MASTER, IDENTITY, None, 256 << 20))
        [interface] = domainxml.interfaces(root)
        self.assertEqual("user", interface.get("type"))
        self.assertEqual("down", interface.find("link").get("state"))
        self.assertEqual("52:54:00:00:00:01", interface.find("mac").get("address"))

    def test_random_macs_are_libvirt_style_and_differ(self):
        macs = {domainxml.random_mac() for _ in range(50)}
        self.assertGreater(len(macs), 45)
        for mac in macs:
            self.assertRegex(mac, r"^52:54:00(:[0-9a-f]{2}){3}$")


class TestTranslationCache(testtools.TestCase):
    def tb_cache(self, master, size_mib):
        root = ET.fromstring(
            domainxml.clone_xml(master, IDENTITY, "/store/g/memory.img", 256 << 20, size_mib)
        )
        return [(e.get("unit"), e.text) for e in root.findall("features/tcg/tb-cache")]

    def test_a_tcg_clone_gets_the_size_asked_for(self):
        self.assertEqual([("MiB", "8")], self.tb_cache(MASTER, 8))

    def test_it_replaces_the_masters_and_keeps_its_other_features(self):
        master = MASTER.replace(
            "<devices>",
            "<features><acpi/><tcg><tb-cache unit='KiB'>65536</tb-cache></tcg></features>"
            "<devices>",
        )
        root = ET.fromstring(
            domainxml.clone_xml(master, IDENTITY, "/store/g/memory.img", 256 << 20, 16)
        )
        self.assertIsNotNone(root.find("features/acpi"))
        self.assertEqual(
            [("MiB", "16")],
            [(e.get("unit"), e.text) for e in root.findall("features/tcg/tb-cache")],
        )

    def test_zero_and_kvm_leave_qemus_default(self):
        self.assertEqual([], self.tb_cache(MASTER, 0))
        kvm = MASTER.replace("<domain type='qemu'", "<domain type='kvm'")
        self.assertEqual([], self.tb_cache(kvm, 8))
