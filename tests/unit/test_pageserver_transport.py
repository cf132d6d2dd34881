"""Transports are stevedore plugins chosen by the origin address's scheme."""

from __future__ import annotations

import asyncio
import json
import os
import ssl

import fixtures
import testtools

from nova_clonedriver.engine import store as store_mod
from nova_clonedriver.pageserver import localfs
from nova_clonedriver.pageserver import peer
from nova_clonedriver.pageserver import protocol
from nova_clonedriver.pageserver import transport

GENERATION_ID = "ab" * 16
KEY = "9f" * 32
CHUNK = 1 << 20


def context() -> transport.Context:
    return transport.Context(
        node="node-b", ssl_context=ssl.create_default_context(), timeout_s=1, max_inflight=1
    )


class TestLoad(testtools.TestCase):
    def test_schemes(self):
        self.assertIsInstance(transport.load("10.0.0.1:8797", context()), peer.PeerTransport)
        self.assertIsInstance(
            transport.load("peer://10.0.0.1:8797", context()), peer.PeerTransport
        )
        shared = transport.load("local:///srv/store", context())
        self.assertIsInstance(shared, localfs.LocalTransport)
        self.assertEqual("local:///srv/store", shared.address)

    def test_unknown_scheme_and_bad_peer_address(self):
        error = self.assertRaises(ValueError, transport.load, "nfs://x/y", context())
        self.assertIn("no page service transport 'nfs'", str(error))
        error = self.assertRaises(ValueError, transport.load, "no-port", context())
        self.assertIn("is not <host>:<port>", str(error))


class TestLocalTransport(testtools.TestCase):
    """The origin's store on shared storage, read directly."""

    def setUp(self):
        super().setUp()
        self.root = self.useFixture(fixtures.TempDir()).path
        store = store_mod.SnapshotStore(self.root)
        partial = store.new_generation_dir(GENERATION_ID)
        self.memory = os.urandom(CHUNK) + bytes(CHUNK)
        with open(os.path.join(partial, store_mod.MEMORY_IMAGE_FILE), "wb") as f:
            f.write(self.memory)
        with open(os.path.join(partial, store_mod.DEVICE_STREAM_FILE), "wb") as f:
            f.write(b"device")
        store.publish(
            store_mod.Generation(
                id=GENERATION_ID,
                source_domain="m",
                source_uuid="u",
                created_at="2026-11-27T00:00:00+00:00",
                memory_bytes=2 * CHUNK,
                vcpus=1,
                machine_type="pc",
                main_block="pc.ram",
                chunk_size_bytes=CHUNK,
                chunks=["x", None],
                device_stream_sha256="y",
                disks=[],
                domain_xml="<domain/>",
                pause_ms=1.0,
                has_genid=True,
                access_key=KEY,
            ),
            partial,
        )
        self.store = store
        self.shared = transport.load(f"local://{self.root}", context())

    def run_async(self, coroutine):
        return asyncio.run(coroutine)

    def test_open_fetch_working_set_release(self):
        reply = self.run_async(self.shared.open(GENERATION_ID, ["c1"], KEY))
        self.assertEqual([2 * CHUNK, 6], reply.file_sizes)
        self.assertEqual(GENERATION_ID, reply.generation.id)
        generation = self.store.load(GENERATION_ID)
        self.assertEqual(
            [("node-b", ["c1"])],
            [(p.node, p.clones) for p in self.store.peer_references(generation)],
        )
        data = self.run_async(self.shared.fetch(GENERATION_ID, 0, [0, 1]))
        self.assertEqual({0: self.memory[:CHUNK], 1: None}, data)
        self.assertEqual([], self.run_async(self.shared.working_set(GENERATION_ID)))
        self.run_async(self.shared.record_working_set(GENERATION_ID, [0]))
        self.run_async(self.shared.record_working_set(GENERATION_ID, [1]))  # first stays
        with open(os.path.join(generation.directory, "working-set.json")) as f:
            self.assertEqual([0], json.load(f))
        self.run_async(self.shared.release(GENERATION_ID))
        self.assertEqual([], self.store.peer_references(generation))

    def test_nothing_is_served_before_open_nor_of_unknown_generations(self):
        error = self.assertRaises(
            transport.Refused, self.run_async, self.shared.fetch(GENERATION_ID, 0, [0])
        )
        self.assertIn("node-b has not opened generation", str(error))
        error = self.assertRaises(
            transport.Refused, self.run_async, self.shared.open("cd" * 16, [], KEY)
        )
        self.assertIn("no snapshot generation", str(error))

    def test_open_needs_the_access_key(self):
        generation = self.store.load(GENERATION_ID)
        for wrong in ("", "k" * 63, KEY.upper()):
            error = self.assertRaises(
                transport.Refused, self.run_async, self.shared.open(GENERATION_ID, ["c1"], wrong)
            )
            self.assertIn("node-b did not present the access key", str(error))
        error = self.assertRaises(
            protocol.ProtocolError, self.run_async, self.shared.open(GENERATION_ID, ["c1"], None)
        )
        self.assertIn("needs the generation's access key", str(error))
        self.assertEqual([], self.store.peer_references(generation))
        error = self.assertRaises(
            transport.Refused, self.run_async, self.shared.fetch(GENERATION_ID, 0, [0])
        )
        self.assertIn("has not opened", str(error))


class TestOpened(testtools.TestCase):
    """What a hostile or broken origin answers to OPEN is refused before a
    node builds anything on it."""

    def valid(self) -> dict:
        generation = store_mod.Generation(
            id=GENERATION_ID,
            source_domain="m",
            source_uuid="u",
            created_at="now",
            memory_bytes=CHUNK,
            vcpus=1,
            machine_type="pc",
            main_block="pc.ram",
            chunk_size_bytes=CHUNK,
            chunks=[None],
            device_stream_sha256="0" * 64,
            disks=[],
            domain_xml="<domain/>",
            pause_ms=1.0,
            has_genid=True,
        )
        return {"generation": generation.to_json(), "file_sizes": [CHUNK, 10]}

    def test_a_valid_answer(self):
        opened = transport.Opened.from_json(self.valid())
        self.assertEqual(GENERATION_ID, opened.generation.id)
        self.assertEqual("", opened.generation.directory)
        self.assertEqual([CHUNK, 10], opened.file_sizes)

    def test_malformed_answers(self):
        cases = {
            "not an object": [],
            "no generation": {"file_sizes": [1, 2]},
            "generation not an object": {"generation": "x", "file_sizes": [1, 2]},
            "missing key": self.valid() | {"generation": {"id": GENERATION_ID}},
            "unknown key": self.valid()
            | {"generation": {**self.valid()["generation"], "directory": "/etc"}},
            "sizes not a list": self.valid() | {"file_sizes": 3},
            "negative size": self.valid() | {"file_sizes": [CHUNK, -1]},
        }
        for case, reply in cases.items():
            error = self.assertRaises(transport.Malformed, transport.Opened.from_json, reply)
            self.assertIn("bad OPEN answer", str(error), case)
