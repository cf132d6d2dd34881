import concurrent.futures
import json
import os
import threading
from unittest import mock

import fixtures
import testtools

from nova_clonedriver.engine import store as store_mod
from tests.fresh import in_a_fresh_process


def make_generation(store, generation_id="ab12" * 8):
    workdir = store.new_generation_dir(generation_id)
    generation = store_mod.Generation(
        id=generation_id,
        source_domain="web",
        source_uuid="u",
        created_at="now",
        memory_bytes=1 << 20,
        vcpus=1,
        machine_type="pc",
        main_block="pc.ram",
        chunk_size_bytes=1 << 20,
        chunks=[None],
        device_stream_sha256="0",
        disks=[],
        domain_xml="<domain/>",
        pause_ms=1.0,
        has_genid=True,
    )
    store.publish(generation, workdir)
    return generation


def make_ref(generation, clone_uuid):
    return store_mod.CloneReference(
        uuid=clone_uuid,
        name=f"c-{clone_uuid}",
        generation=generation.id,
        directory="/nonexistent",
        created_at="now",
        overlays={},
        mac_addresses=[],
    )


class TestSnapshotStore(testtools.TestCase):
    def setUp(self):
        super().setUp()
        self.root = self.useFixture(fixtures.TempDir()).path
        self.store = store_mod.SnapshotStore(self.root)

    def test_published_generation_loads_by_id_or_prefix(self):
        generation = make_generation(self.store)
        self.assertEqual([generation.id], self.store.generation_ids())
        loaded = self.store.load(generation.id[:6])
        self.assertEqual(generation.to_json(), loaded.to_json())
        self.assertEqual(generation.directory, loaded.directory)

    def test_partial_generations_are_invisible(self):
        self.store.new_generation_dir("cafe" * 8)
        self.assertEqual([], self.store.generation_ids())
        self.assertRaises(store_mod.GenerationNotFound, self.store.load, "cafe")

    def test_a_reference_dropped_while_listing_is_skipped(self):
        generation = make_generation(self.store, "ab12" * 8)
        for clone in ("c1", "c2"):
            self.store.add_reference(
                generation,
                store_mod.CloneReference(
                    uuid=clone,
                    name=clone,
                    generation=generation.id,
                    directory="/x",
                    created_at="2026-11-27T00:00:00+00:00",
                    overlays={},
                    mac_addresses=[],
                ),
            )
        real_open = open

        def open_after_a_parallel_delete(path, *args, **kwargs):
            if path.endswith("c1.json"):
                self.store.drop_reference(generation, "c1")
            return real_open(path, *args, **kwargs)

        with mock.patch("builtins.open", open_after_a_parallel_delete):
            self.assertEqual(["c2"], [r.uuid for r in self.store.references(generation)])

    def test_a_partial_left_by_a_dead_process_is_replaced(self):
        path = self.store.new_generation_dir("cafe" * 8)
        with open(os.path.join(path, "memory.img"), "w") as f:
            f.write("half")
        self.assertEqual(path, self.store.new_generation_dir("cafe" * 8))
        self.assertEqual(["references"], os.listdir(path))

    def test_unknown_empty_and_ambiguous_ids(self):
        make_generation(self.store, "ab12" * 8)
        make_generation(self.store, "ab34" * 8)
        self.assertRaises(store_mod.GenerationNotFound, self.store.load, "ffff")
        self.assertRaises(store_mod.GenerationNotFound, self.store.load, "")
        error = self.assertRaises(store_mod.GenerationNotFound, self.store.load, "ab")
        self.assertIn("ambiguous", str(error))

    def test_damaged_metadata_is_reported(self):
        generation = make_generation(self.store)
        with open(os.path.join(generation.directory, store_mod.GENERATION_FILE), "w") as f:
            f.write("{not json")
        error = self.assertRaises(store_mod.GenerationNotFound, self.store.load, generation.id)
        self.assertIn("damaged", str(error))

    def test_references_count_and_survive_a_new_store_object(self):
        generation = make_generation(self.store)
        self.store.add_reference(generation, make_ref(generation, "1"))
        self.store.add_reference(generation, make_ref(generation, "2"))
        reopened = store_mod.SnapshotStore(self.root)
        refs = reopened.references(reopened.load(generation.id))
        self.assertEqual(["1", "2"], [r.uuid for r in refs])
        reopened.drop_reference(generation, "1")
        reopened.drop_reference(generation, "1")  # twice is harmless
        self.assertEqual(["2"], [r.uuid for r in self.store.references(generation)])

    def test_generation_with_references_cannot_be_removed(self):
        generation = make_generation(self.store)
        self.store.add_reference(generation, make_ref(generation, "1"))
        self.assertRaises(store_mod.GenerationInUse, self.store.remove_generation, generation)
        self.assertTrue(os.path.isdir(generation.directory))
        self.store.drop_reference(generation, "1")
        self.store.remove_generation(generation)
        self.assertFalse(os.path.exists(generation.directory))
        self.assertEqual([], os.listdir(self.store.generations_dir))


class TestAccessKey(testtools.TestCase):
    def setUp(self):
        super().setUp()
        self.store = store_mod.SnapshotStore(self.useFixture(fixtures.TempDir()).path)

    def test_only_the_key_admits_and_the_record_is_roots_alone(self):
        generation = make_generation(self.store)
        generation.access_key = "9f" * 32
        self.assertTrue(generation.admits("9f" * 32))
        for wrong in ("", "9f" * 31, "9F" * 32, "9f" * 32 + "0"):
            self.assertFalse(generation.admits(wrong), wrong)
        # Blessed before keys existed: nobody, not even with an empty key.
        self.assertFalse(make_generation(self.store, "cd34" * 8).admits(""))
        record = os.path.join(self.store.generations_dir, generation.id, store_mod.GENERATION_FILE)
        self.assertEqual(0o600, os.stat(record).st_mode & 0o777)


class TestWriteJSONAtomic(testtools.TestCase):
    @in_a_fresh_process  # real threads: eventlet's would take turns
    def test_writers_at_once_each_leave_a_whole_file_and_nothing_else(self):
        # As clones of one generation starting together write verified.json.
        folder = self.useFixture(fixtures.TempDir()).path
        path = os.path.join(folder, "verified.json")
        records = [{"writer": n, "pad": "x" * 100_000} for n in range(8)]
        barrier = threading.Barrier(len(records))

        def write(record):
            barrier.wait()
            store_mod.write_json_atomic(path, record, mode=0o600)

        with concurrent.futures.ThreadPoolExecutor(len(records)) as pool:
            list(pool.map(write, records))  # raises what a writer raised
        with open(path) as f:
            self.assertIn(json.load(f), records)
        self.assertEqual(["verified.json"], os.listdir(folder))
        self.assertEqual(0o600, os.stat(path).st_mode & 0o777)
