"""Bless a running test guest and launch clones: real libvirt, real QEMU."""

import json
import os
import stat
import subprocess
import sys
import xml.etree.ElementTree as ET

from nova_clonedriver.demo import agent as agent_mod
from nova_clonedriver.demo import testguest
from nova_clonedriver.engine import api
from nova_clonedriver.engine import hostmem
from nova_clonedriver.engine import qemuimg
from tests.functional import base

CLONES = 3


class TestBlessAndLaunch(base.LibvirtTestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.engine = api.CloneEngine(cls.conn, cls.state_dir)
        cls.master, cls.agent, cls.workdir = cls.boot_master("master")
        cls.master_name = cls.master.name()
        available = cls.agent.request("ping")["mem_available_mib"]
        cls.pattern_mib = available - 24
        cls.checksum = cls.agent.request("fill", cls.pattern_mib, base.PATTERN_SEED)["checksum"]
        cls.master_disk_before = cls._disk_source(cls.master)
        cls.hb_before = cls.agent.request("ping")["hb"]
        cls.generation = cls.engine.bless(cls.master_name)
        cls.hb_after = cls.agent.request("ping")["hb"]
        cls.clones = cls.engine.launch(
            cls.generation.id, CLONES, name_prefix=f"{cls.prefix}-clone"
        )
        # Measured before anything reads the pattern in the clones.
        cls.image_rss_at_launch_kib = [
            hostmem.mapping_kib(
                hostmem.qemu_pid(c.name), os.path.realpath(cls.generation.memory_image)
            ).get("Rss", 0)
            for c in cls.clones
        ]
        cls.agents = {c.uuid: base.clone_agent(cls.engine, c.uuid) for c in cls.clones}
        for client in cls.agents.values():
            client.wait_ready(timeout_s=60)

    @classmethod
    def tearDownClass(cls):
        for client in [*list(cls.agents.values()), cls.agent]:
            client.close()
        super().tearDownClass()

    @staticmethod
    def _disk_source(domain):
        return ET.fromstring(domain.XMLDesc(0)).find("devices/disk/source").get("file")

    # -- bless -------------------------------------------------------------

    def test_master_runs_on_with_a_short_recorded_pause(self):
        self.assertGreater(self.generation.pause_ms, 0)
        self.assertEqual(1, self.master.state()[0])  # VIR_DOMAIN_RUNNING
        self.assertGreaterEqual(self.hb_after, self.hb_before)
        beats = agent_mod.heartbeats(os.path.join(self.workdir, testguest.CONSOLE_LOG))
        self.assertEqual(list(range(1, len(beats) + 1)), beats)
        self.assertEqual(self.checksum, self.agent.request("checksum")["checksum"])

    def test_master_writes_to_a_new_overlay_and_the_old_image_is_frozen(self):
        now = self._disk_source(self.master)
        self.assertNotEqual(self.master_disk_before, now)
        # The old image is the new one's backing file, read-only to everyone,
        # and the generation's base is the same file.
        frozen = qemuimg.backing_file(now)
        self.assertEqual(self.master_disk_before, frozen)
        [disk] = self.generation.disks
        self.assertEqual(os.stat(frozen).st_ino, os.stat(self.generation.disk_base(disk)).st_ino)
        self.assertEqual(0o444, stat.S_IMODE(os.stat(frozen).st_mode))
        # <disk>.top names what the master writes to now.
        self.assertEqual(os.path.basename(now), os.readlink(f"{frozen}.top"))
        self.assertEqual(now, api.current_top(self.master_disk_before))
        # QEMU's user cannot write to the frozen base.
        writer = subprocess.run(
            [
                "runuser",
                "-u",
                "nobody",
                "--",
                "dd",
                "if=/dev/zero",
                f"of={frozen}",
                "bs=512",
                "count=1",
                "conv=notrunc",
            ],
            capture_output=True,
            text=True,
        )
        self.assertNotEqual(0, writer.returncode)
        self.assertIn("Permission denied", writer.stderr)

    def test_generation_files(self):
        generation = self.engine.store.load(self.generation.id)
        st = os.stat(generation.memory_image)
        self.assertEqual(base.MASTER_MEMORY_MIB << 20, st.st_size)
        self.assertLess(st.st_blocks * 512, st.st_size)  # sparse
        self.assertGreaterEqual(st.st_blocks * 512, self.pattern_mib << 20)
        self.assertEqual(base.MASTER_MEMORY_MIB, len(generation.chunks))
        self.assertGreaterEqual(sum(1 for c in generation.chunks if c), self.pattern_mib)
        self.assertLess(os.path.getsize(generation.device_stream), 4 << 20)
        self.assertEqual("pc.ram", generation.main_block)
        self.assertTrue(generation.has_genid)

    # -- launch ------------------------------------------------------------

    def test_clones_are_ordinary_domains_with_their_own_identity(self):
        names, uuids, macs, genids, overlay_inodes = set(), set(), set(), set(), set()
        for clone in self.clones:
            self.assertEqual(
                ["overlays", "save_image", "libvirt_restore", "nic_swap"], list(clone.phases_ms)
            )
            self.assertGreater(clone.phases_ms["libvirt_restore"], 0)
            self.assertLessEqual(sum(clone.phases_ms.values()), clone.ready_ms + 0.5)
            domain = self.conn.lookupByUUIDString(clone.uuid)
            self.assertEqual(1, domain.state()[0])
            root = ET.fromstring(domain.XMLDesc(0))
            names.add(root.findtext("name"))
            uuids.add(root.findtext("uuid"))
            genids.add(root.findtext("genid"))
            macs.update(m.get("address") for m in root.findall("devices/interface/mac"))
            overlay = root.find("devices/disk/source").get("file")
            self.assertEqual(self.engine.store.clone_dir(clone.uuid), os.path.dirname(overlay))
            self.assertEqual(
                self.generation.disk_base(self.generation.disks[0]),
                qemuimg.backing_file(overlay),
            )
            overlay_inodes.add(os.stat(overlay).st_ino)  # a copy each, not a link
        self.assertEqual(CLONES, len(overlay_inodes))
        master_root = ET.fromstring(self.master.XMLDesc(0))
        self.assertEqual(CLONES, len(names))
        self.assertEqual(CLONES, len(uuids))
        self.assertEqual(CLONES, len(genids - {master_root.findtext("genid")}))
        self.assertEqual(
            CLONES, len(macs - {master_root.find("devices/interface/mac").get("address")})
        )

    def test_clones_resume_from_the_masters_instant(self):
        for clone in self.clones:
            beats = agent_mod.first_heartbeats(base.clone_console(self.engine, clone.uuid))
            self.assertTrue(beats, "clone printed no heartbeat")
            self.assertGreaterEqual(beats[0], self.hb_before)
            self.assertLessEqual(beats[0], self.hb_after + 2)
            self.assertEqual(list(range(beats[0], beats[0] + len(beats))), beats)
            reply = self.agents[clone.uuid].request("checksum")
            self.assertEqual(self.pattern_mib, reply["mib"])
            self.assertEqual(self.checksum, reply["checksum"])

    def test_clones_differ_where_identity_matters(self):
        master_identity = self.agent.request("identity")
        randoms, genids = set(), set()
        for clone in self.clones:
            client = self.agents[clone.uuid]
            identity = client.request("identity")
            for _ in range(60):  # the guest sees the new NIC a moment later
                if [n["mac"] for n in identity["nics"]] == clone.mac_addresses:
                    break
                identity = client.request("identity")
            self.assertEqual(clone.mac_addresses, [n["mac"] for n in identity["nics"]])
            randoms.add(identity["random"])
            genids.add(identity["genid"])
        self.assertEqual(CLONES, len(randoms))
        self.assertEqual(CLONES, len(genids - {master_identity["genid"]}))

    def test_memory_is_loaded_lazily_and_shared(self):
        pattern_kib = self.pattern_mib * 1024
        for rss in self.image_rss_at_launch_kib:
            self.assertLess(rss, pattern_kib / 2, "clone RAM was copied at launch")
        for clone in self.clones:
            self.agents[clone.uuid].request("checksum")  # reads every pattern page
        image = os.path.realpath(self.generation.memory_image)
        for clone in self.clones:
            mapping = hostmem.mapping_kib(hostmem.qemu_pid(clone.name), image)
            self.assertGreaterEqual(mapping["Rss"], pattern_kib * 0.9)
            # Reading shares the page cache; only written pages are private.
            self.assertLess(mapping["Private_Dirty"], pattern_kib / 4)
        [stats] = [s for s in self.engine.stats() if s["generation"] == self.generation.id]
        self.assertEqual(CLONES, len(stats["clones"]))
        self.assertGreaterEqual(stats["image_cached_mib"], self.pattern_mib * 0.9)
        for entry in stats["clones"]:
            self.assertLess(entry["private_written_mib"], self.pattern_mib / 4)

    def test_a_smaller_translation_cache_changes_no_byte(self):
        engine = api.CloneEngine(
            self.conn, self.state_dir, launch_options=api.LaunchOptions(tcg_tb_cache_mib=8)
        )
        [clone] = engine.launch(self.generation.id, name_prefix=f"{self.prefix}-tb")
        self.addCleanup(engine.destroy_clone, clone.uuid)
        with open(f"/proc/{hostmem.qemu_pid(clone.name)}/cmdline") as f:
            self.assertIn("tcg,tb-size=8", f.read().split("\0"))
        client = base.clone_agent(engine, clone.uuid)
        self.addCleanup(client.close)
        client.wait_ready(timeout_s=60)
        self.assertEqual(self.checksum, client.request("checksum")["checksum"])

    def test_state_is_visible_to_another_process(self):
        out = subprocess.run(
            [
                os.path.join(os.path.dirname(sys.executable), "nova-clone"),
                "--state-dir",
                self.state_dir,
                "list",
                "-f",
                "json",
            ],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        [row] = [r for r in json.loads(out) if r["generation"] == self.generation.id]
        self.assertEqual(sorted(c.name for c in self.clones), sorted(row["clones"]))
