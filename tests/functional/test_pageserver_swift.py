"""Generations published to a real OpenStack Swift (tests/functional/
swiftserver.py): an origin node publishes what it blesses, other nodes
(each in a network namespace of its own) read clones' memory from Swift,
and go on when the origin's page service is gone.
"""

from __future__ import annotations

import errno
import hashlib
import os
import signal

from oslo_config import cfg
from testtools.content import text_content

from nova_clonedriver.conf import swift as swift_conf
from nova_clonedriver.demo import localnode
from nova_clonedriver.demo import pki as pki_mod
from nova_clonedriver.demo import testguest
from nova_clonedriver.engine import api
from nova_clonedriver.pageserver import objectstore
from nova_clonedriver.pageserver import publish
from nova_clonedriver.pageserver import swift
from tests import waiting
from tests.functional import base
from tests.functional import netns
from tests.functional import swiftserver

PATTERN_MIB = 96
CHUNK = 1 << 20


class TestSwift(base.LibvirtTestCase):
    @classmethod
    def setUpClass(cls) -> None:
        super().setUpClass()
        cls.network = netns.Network(cls.prefix[1:])
        cls.addClassCleanup(cls.network.close)
        cls.swift = swiftserver.SwiftServer(
            os.path.join(cls.state_dir, "swift"), bind_ip=cls.network.gateway
        )
        cls.swift.start()
        cls.addClassCleanup(cls.swift.stop)
        cls.pki = pki_mod.ThrowawayPKI(os.path.join(cls.state_dir, "pki"))
        cls.nodes: list[localnode.LocalNode] = []
        cls.origin = cls.add_node("node-a", cls.swift.options())
        cls.engine_a = api.CloneEngine(cls.conn, cls.origin.state_dir)
        cls.master, agent, _ = cls.boot_master("master")
        cls.addClassCleanup(agent.close)
        cls.expected = agent.request("fill", PATTERN_MIB, base.PATTERN_SEED)["checksum"]
        cls.generation = cls.engine_a.bless(cls.master.name())
        waiting.wait(
            lambda: cls.published(cls.generation.id).get("complete"),
            120,
            lambda: f"not published: {cls.origin.log()[-3000:]}",
        )

    def setUp(self) -> None:
        super().setUp()
        self.addCleanup(
            lambda: [self.addDetail(f"{n.name}.log", text_content(n.log())) for n in self.nodes]
        )

    @classmethod
    def add_node(cls, name: str, swift_options: dict[str, str] | None) -> localnode.LocalNode:
        host = cls.network.host(name)
        options = {"object_store": "swift"} if swift_options else {}
        node = localnode.LocalNode(
            name,
            cls.state_dir,
            cls.pki,
            listen_host=host.address,
            wrapper=host.wrapper,
            swift=swift_options,
            release_idle_s=3600,
            **options,
        )
        node.start()
        cls.nodes.append(node)
        cls.addClassCleanup(node.close)
        cls.addClassCleanup(testguest.destroy_all, cls.conn, cls.prefix)
        return node

    @classmethod
    def published(cls, generation_id: str) -> dict:
        return cls.origin.client.stats().get("published", {}).get(generation_id, {})

    def objects(self) -> objectstore.ObjectStore:
        """The test account's store, as the page services reach it."""
        return swift_store(self.swift.options(), self.state_dir)

    def served_to(self, node: localnode.LocalNode) -> int:
        generations = self.origin.client.stats()["origin"]["generations"]
        return generations.get(self.generation.id, {}).get(node.name, {}).get("bytes_served", 0)

    def memory_chunk(self, chunk: int) -> bytes:
        with open(self.generation.memory_image, "rb") as f:
            f.seek(chunk * CHUNK)
            return f.read(CHUNK)

    def read_chunk(self, node: localnode.LocalNode, chunk: int) -> bytes:
        with open(node.mount_path(self.generation.id), "rb") as f:
            f.seek(chunk * CHUNK)
            return f.read(CHUNK)

    def data_chunks(self) -> list[int]:
        return [i for i, c in enumerate(self.generation.chunks) if c is not None]

    def test_clones_read_from_swift_and_outlive_the_origins_page_service(self):
        node = self.add_node("node-b", self.swift.options())
        node.client.attach(self.generation.id, self.origin.address, self.generation.access_key)
        engine = api.CloneEngine(self.conn, node.state_dir)
        clone = engine.launch(self.generation.id, 1, name_prefix=f"{self.prefix}-b")[0]
        client = base.clone_agent(engine, clone.uuid)
        self.addCleanup(client.close)
        client.wait_ready(timeout_s=120)
        stats = node.client.stats()["remote"][self.generation.id]
        self.assertGreater(stats["chunks_from_object_store"], 0, stats)
        # From the origin only its metadata and device state (under 2 MiB).
        self.assertLess(self.served_to(node), 2 * CHUNK)

        # The origin's page service dies; the clone reads all its memory.
        self.origin.stop(signal.SIGKILL)
        try:
            client.timeout_s = 180
            self.assertEqual(self.expected, client.request("checksum")["checksum"])
        finally:
            self.origin.start()
        stats = node.client.stats()["remote"][self.generation.id]
        self.assertGreater(stats["bytes_from_object_store"], PATTERN_MIB * CHUNK, stats)
        self.assertEqual(0, stats.get("object_store_failures", 0), stats)
        engine.destroy_clone(clone.uuid)

    def test_what_swift_holds_is_sealed_and_a_changed_object_comes_from_the_origin(self):
        objects = self.objects()
        container = publish.container_of(self.generation.id)
        damaged, good = self.data_chunks()[-2:]
        stored = objects.get(container, objectstore.object_name(0, good))
        # Swift's account holders see ciphertext, not the tenant's memory.
        plain = self.memory_chunk(good)
        self.assertNotEqual(hashlib.sha256(plain).digest(), hashlib.sha256(stored).digest())
        self.assertNotIn(plain[:4096], stored)
        self.assertNotEqual(stored.count(0), len(stored))

        name = objectstore.object_name(0, damaged)
        sealed = objects.get(container, name)
        self.addCleanup(objects.put, container, name, sealed)  # for the other tests
        changed = bytearray(sealed)
        changed[100] ^= 0xFF
        objects.put(container, name, bytes(changed))
        node = self.add_node("node-c", self.swift.options())
        node.client.attach(self.generation.id, self.origin.address, self.generation.access_key)
        self.assertEqual(self.memory_chunk(damaged), self.read_chunk(node, damaged))
        self.assertEqual(plain, self.read_chunk(node, good))
        stats = node.client.stats()["remote"][self.generation.id]
        self.assertGreaterEqual(stats["object_store_failures"], 1, stats)
        self.assertIn("does not open", node.log())

    def test_nodes_without_credentials_of_the_account_read_from_the_origin(self):
        for name, options in (
            ("node-other", self.swift.options("other")),  # another account
            ("node-badtoken", {**self.swift.options(), "token": "not-a-token"}),
            ("node-nostore", None),  # no object store configured at all
        ):
            node = self.add_node(name, options)
            node.client.attach(self.generation.id, self.origin.address, self.generation.access_key)
            chunk = self.data_chunks()[-1]
            self.assertEqual(self.memory_chunk(chunk), self.read_chunk(node, chunk), name)
            stats = node.client.stats()["remote"][self.generation.id]
            self.assertEqual(0, stats.get("chunks_from_object_store", 0), (name, stats))
            self.assertGreaterEqual(self.served_to(node), CHUNK, name)
            # With the origin gone too, such a node has nowhere to read from.
            self.origin.stop(signal.SIGKILL)
            try:
                other = self.data_chunks()[len(self.data_chunks()) // 2]
                error = self.assertRaises(OSError, self.read_chunk, node, other)
                self.assertEqual(errno.EIO, error.errno)
            finally:
                self.origin.start()

    def test_a_discarded_generation_leaves_swift(self):
        generation = self.engine_a.bless(self.master.name())
        waiting.wait(lambda: self.published(generation.id).get("complete"), 120, "publication")
        container = publish.container_of(generation.id)
        self.objects().get(container, objectstore.object_name(0, self.data_chunks()[0]))
        self.engine_a.discard(generation.id)
        waiting.wait(
            lambda: "deleted it from the object store" in self.origin.log(),
            60,
            lambda: f"not unpublished: {self.origin.log()[-2000:]}",
        )
        self.assertRaises(
            objectstore.NotFound,
            self.objects().get,
            container,
            objectstore.object_name(0, self.data_chunks()[0]),
        )


def swift_store(options: dict[str, str], directory: str) -> objectstore.ObjectStore:
    """A Swift store as a page service with these [pageserver_swift]
    options has it (read from a config file, as the service reads them)."""
    path = os.path.join(directory, "swift-client.conf")
    with open(path, "w") as f:
        f.write("[pageserver_swift]\n" + "".join(f"{k} = {v}\n" for k, v in options.items()))
    conf = cfg.ConfigOpts()
    swift_conf.register_opts(conf)
    conf(["--config-file", path])
    return swift.SwiftStore(conf)
