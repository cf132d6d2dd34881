"""Chunks in an object store: sealed so that only holders of the origin's key
read them and nothing moved or changed opens; what a node does with an
origin's offer (the store plugin is a fake here; tests/functional/
test_pageserver_swift.py runs a real Swift)."""

from __future__ import annotations

import asyncio
import os

import fixtures
import testtools

from nova_clonedriver.engine import store as store_mod
from nova_clonedriver.pageserver import objectfetch
from nova_clonedriver.pageserver import objectstore
from nova_clonedriver.pageserver import publish
from nova_clonedriver.pageserver import transport

GENERATION = "a" * 32
CHUNK = b"tenant memory " * 1000


class TestSealing(testtools.TestCase):
    def test_a_sealed_chunk_opens_with_its_key_in_its_place_only(self):
        key = objectstore.new_key()
        sealed = objectstore.seal(key, GENERATION, 0, 7, CHUNK)
        self.assertNotIn(CHUNK[:64], sealed)
        self.assertEqual(CHUNK, objectstore.unseal(key, GENERATION, 0, 7, sealed))
        for args in (
            (objectstore.new_key(), GENERATION, 0, 7, sealed),  # another key
            (key, GENERATION, 0, 8, sealed),  # moved to another chunk
            (key, GENERATION, 2, 7, sealed),  # or file
            (key, "b" * 32, 0, 7, sealed),  # or generation
            (key, GENERATION, 0, 7, sealed[:-1] + bytes([sealed[-1] ^ 1])),  # changed
        ):
            self.assertRaises(ValueError, objectstore.unseal, *args)

    def test_offers_are_checked(self):
        good = {"store": "swift", "container": "c", "key": "0" * 64, "zero_chunks": {"2": [1]}}
        self.assertEqual(good, objectstore.offer_from_json(good))
        for bad in (
            None,
            [],
            {**good, "key": "short"},
            {**good, "container": 5},
            {**good, "zero_chunks": {"x": [1]}},
            {**good, "zero_chunks": {"2": ["1"]}},
        ):
            self.assertIsNone(objectstore.offer_from_json(bad), bad)

    def test_an_open_answer_carries_the_offer_or_says_it_is_coming(self):
        answer = {
            "generation": _generation_json(),
            "file_sizes": [1, 2],
            "object_store": {"store": "swift", "container": "c", "key": "0" * 64},
        }
        opened = transport.Opened.from_json(answer)
        self.assertEqual("c", opened.object_store["container"])
        self.assertFalse(opened.object_store_pending)
        pending = transport.Opened.from_json(
            {**answer, "object_store": None, "object_store_pending": True}
        )
        self.assertIsNone(pending.object_store)
        self.assertTrue(pending.object_store_pending)
        self.assertRaises(
            transport.Malformed,
            transport.Opened.from_json,
            {**answer, "object_store": {"store": "swift"}},
        )


class FakeStore(objectstore.ObjectStore):
    name = "fake"

    def __init__(self, conf=None):
        self.objects: dict[tuple[str, str], bytes] = {}
        self.gets: list[str] = []

    def create_container(self, container):
        pass

    def put(self, container, name, data):
        self.objects[(container, name)] = data

    def get(self, container, name):
        self.gets.append(name)
        if (container, name) not in self.objects:
            raise objectstore.NotFound(name)
        return self.objects[(container, name)]

    def delete_container(self, container):
        self.objects = {k: v for k, v in self.objects.items() if k[0] != container}


class FakeOrigin(transport.Transport):
    def __init__(self, offer):
        super().__init__("origin:8797", None)
        self.offer = offer
        self.fetched: list[int] = []

    @property
    def address(self):
        return self.location

    async def open(self, generation_id, clones, key):
        return transport.Opened(
            _generation(), [], self.offer, object_store_pending=self.offer is None
        )

    async def fetch(self, generation_id, file_number, chunks):
        self.fetched += chunks
        return {c: b"from origin %d" % c for c in chunks}

    async def release(self, generation_id):
        pass

    async def working_set(self, generation_id):
        return []

    async def record_working_set(self, generation_id, chunks):
        pass

    async def close(self):
        pass


class TestObjectStoreTransport(testtools.TestCase):
    def setUp(self):
        super().setUp()
        self.useFixture(fixtures.FakeLogger())
        self.records = self.useFixture(fixtures.TempDir()).path
        self.store = FakeStore()
        self.key = objectstore.new_key()
        for chunk in (0, 1):
            self.store.put(
                "c",
                objectstore.object_name(2, chunk),
                objectstore.seal(self.key, GENERATION, 2, chunk, b"chunk %d" % chunk),
            )
        self.offer = {
            "store": "fake",
            "container": "c",
            "key": self.key,
            "zero_chunks": {"2": [5]},
        }

    def fetch(self, source, chunks, file_number=2):
        return asyncio.run(source.fetch(GENERATION, file_number, chunks))

    def test_offered_chunks_come_from_the_store_and_the_rest_from_the_origin(self):
        origin = FakeOrigin(self.offer)
        source = objectfetch.ObjectStoreTransport(origin, self.store, self.records)
        asyncio.run(source.open(GENERATION, [], "key"))
        data = self.fetch(source, [0, 1, 5, 9])  # 5: zeros; 9: not in the store
        self.assertEqual({0: b"chunk 0", 1: b"chunk 1", 5: None, 9: b"from origin 9"}, data)
        self.assertEqual([9], origin.fetched)
        self.assertEqual(1, source.counters[GENERATION]["object_store_failures"])
        self.assertEqual(2, source.counters[GENERATION]["chunks_from_object_store"])
        # The device state always comes from the origin.
        self.fetch(source, [0], file_number=1)
        self.assertEqual([9, 0], origin.fetched)
        # The offer (key included) is kept, for the root's eyes only.
        path = os.path.join(self.records, GENERATION, objectfetch.OFFER_FILE)
        self.assertEqual(0o600, os.stat(path).st_mode & 0o777)

    def test_a_restarted_service_reads_from_the_store_without_asking_the_origin(self):
        source = objectfetch.ObjectStoreTransport(FakeOrigin(self.offer), self.store, self.records)
        asyncio.run(source.open(GENERATION, [], "key"))
        origin = FakeOrigin(None)  # would not answer with the offer again
        restarted = objectfetch.ObjectStoreTransport(origin, self.store, self.records)
        self.assertEqual({0: b"chunk 0"}, self.fetch(restarted, [0]))
        self.assertEqual([], origin.fetched)

    def test_until_the_origin_offers_it_everything_comes_from_the_origin(self):
        origin = FakeOrigin(None)
        source = objectfetch.ObjectStoreTransport(origin, self.store, self.records)
        asyncio.run(source.open(GENERATION, [], "key"))
        self.assertTrue(source.wants_open(GENERATION))
        self.assertEqual({0: b"from origin 0"}, self.fetch(source, [0]))
        self.assertEqual([], self.store.gets)
        origin.offer = self.offer  # published meanwhile: the next OPEN tells
        asyncio.run(source.open(GENERATION, [], "key"))
        self.assertFalse(source.wants_open(GENERATION))
        self.assertEqual({0: b"chunk 0"}, self.fetch(source, [0]))

    def test_an_offer_of_another_store_is_ignored(self):
        origin = FakeOrigin({**self.offer, "store": "rados"})
        source = objectfetch.ObjectStoreTransport(origin, self.store, self.records)
        asyncio.run(source.open(GENERATION, [], "key"))
        self.assertEqual({0: b"from origin 0"}, self.fetch(source, [0]))


def _generation_json() -> dict:
    return {
        "id": GENERATION,
        "source_domain": "m",
        "source_uuid": "u",
        "created_at": "2026-12-05T00:00:00+00:00",
        "memory_bytes": 1 << 20,
        "vcpus": 1,
        "machine_type": "pc",
        "main_block": "pc.ram",
        "chunk_size_bytes": 1 << 20,
        "chunks": [None],
        "device_stream_sha256": "x",
        "disks": [],
        "domain_xml": "<domain/>",
        "pause_ms": 1.0,
        "has_genid": True,
    }


def _generation() -> store_mod.Generation:
    return store_mod.Generation.from_json(_generation_json())


class FlakyStore(FakeStore):
    """Fails every put after ``puts_left`` of them."""

    def __init__(self, puts_left: int) -> None:
        super().__init__()
        self.puts_left = puts_left
        self.deleted: list[str] = []

    def put(self, container, name, data):
        if self.puts_left <= 0:
            raise objectstore.StoreError("the store is full")
        self.puts_left -= 1
        super().put(container, name, data)

    def delete_container(self, container):
        self.deleted.append(container)
        super().delete_container(container)


class TestPublisher(testtools.TestCase):
    """The origin's side: what it stores, resumes and deletes."""

    def setUp(self):
        super().setUp()
        self.useFixture(fixtures.FakeLogger())
        root = self.useFixture(fixtures.TempDir()).path
        self.store = store_mod.SnapshotStore(root)
        partial = self.store.new_generation_dir(GENERATION)
        chunk = 1 << 20
        self.memory = os.urandom(chunk) + bytes(chunk) + os.urandom(chunk)
        self.disk = os.urandom(chunk) + bytes(chunk)
        files = {
            store_mod.MEMORY_IMAGE_FILE: self.memory,
            store_mod.DEVICE_STREAM_FILE: b"device",
            "vda.qcow2": self.disk,
        }
        for name, data in files.items():
            with open(os.path.join(partial, name), "wb") as f:
                f.write(data)
        generation_json = {
            **_generation_json(),
            "memory_bytes": len(self.memory),
            "chunks": ["x", None, "y"],
            "disks": [{"target": "vda", "format": "qcow2", "base": "vda.qcow2"}],
        }
        self.generation = store_mod.Generation.from_json(generation_json)
        self.store.publish(self.generation, partial)
        self.published: dict = {}

    def publisher(self, objects):
        return publish.Publisher(self.store, objects, self.published)

    def test_chunks_are_stored_sealed_and_zeros_listed(self):
        objects = FlakyStore(puts_left=100)
        publisher = self.publisher(objects)
        self.assertEqual({"object_store_pending": True}, publisher.offer(self.generation))
        publisher.reconcile()
        offer = publisher.offer(self.generation)["object_store"]
        # memory chunks 0 and 2 (1 is zeros, known from its checksum), disk
        # chunk 0 (1 is zeros: listed); not the device state
        self.assertEqual(
            {
                objectstore.object_name(0, 0),
                objectstore.object_name(0, 2),
                objectstore.object_name(2, 0),
            },
            {name for _, name in objects.objects},
        )
        self.assertEqual({"2": [1]}, offer["zero_chunks"])
        sealed = objects.objects[(offer["container"], objectstore.object_name(0, 2))]
        self.assertEqual(
            self.memory[2 << 20 :],
            objectstore.unseal(offer["key"], GENERATION, 0, 2, sealed),
        )
        self.assertTrue(self.published[GENERATION]["complete"])
        records = os.path.join(self.store.state_dir, publish.RECORDS_DIR)
        self.assertEqual(
            0o600, os.stat(os.path.join(records, f"{GENERATION}.json")).st_mode & 0o777
        )
        publisher.reconcile()  # nothing more to do
        self.assertEqual(97, objects.puts_left)

    def test_an_interrupted_publication_resumes_under_its_key_and_is_offered_once_whole(self):
        objects = FlakyStore(puts_left=1)
        publisher = self.publisher(objects)
        publisher.reconcile()
        self.assertIn("object_store_pending", publisher.offer(self.generation))
        key = publisher._record(GENERATION)["key"]
        objects.puts_left = 100
        publisher.reconcile()
        self.assertEqual(key, publisher.offer(self.generation)["object_store"]["key"])

    def test_a_discarded_generation_leaves_the_store(self):
        objects = FlakyStore(puts_left=100)
        publisher = self.publisher(objects)
        publisher.reconcile()
        self.store.remove_generation(self.generation)
        publisher.reconcile()
        self.assertEqual([publish.container_of(GENERATION)], objects.deleted)
        self.assertEqual({}, objects.objects)
        self.assertEqual({}, self.published)
