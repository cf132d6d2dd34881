"""The page service between "nodes": real daemons, TLS, FUSE and clones.

Node A blesses a master; node B (its own store, daemon, certificate and
FUSE mount) presents the generation and launches clones from it, which read
their memory through B's mount and B's connection to A.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import json
import os
import random
import re
import signal
import socket
import ssl
import subprocess
import time
import urllib.request

import libvirt
from prometheus_client import parser
from testtools.content import text_content

from nova_clonedriver.demo import agent as agent_mod
from nova_clonedriver.demo import localnode
from nova_clonedriver.demo import pki as pki_mod
from nova_clonedriver.demo import testguest
from nova_clonedriver.engine import api
from nova_clonedriver.engine import native
from nova_clonedriver.engine import qemuimg
from nova_clonedriver.pageserver import control
from nova_clonedriver.pageserver import fusefront
from nova_clonedriver.pageserver import peer as peer_mod
from nova_clonedriver.pageserver import protocol
from nova_clonedriver.pageserver import tls
from nova_clonedriver.pageserver import transport
from nova_clonedriver.pageserver.protocol import Kind
from tests import waiting
from tests.functional import base
from tests.functional import netns

PATTERN_MIB = 160
CHUNK = 1 << 20


class TestPageService(base.LibvirtTestCase):
    @classmethod
    def setUpClass(cls) -> None:
        super().setUpClass()
        # Each node is a host of its own: network namespace, address, page
        # service, store and cache.
        cls.network = netns.Network(cls.prefix[1:])
        cls.addClassCleanup(cls.network.close)
        cls.pki = pki_mod.ThrowawayPKI(os.path.join(cls.state_dir, "pki"))
        cls.nodes: list[localnode.LocalNode] = []
        cls.node_a = cls.add_node("node-a")
        cls.node_b = cls.add_node("node-b", working_set_window_s=3)
        cls.engine_a = api.CloneEngine(cls.conn, cls.node_a.state_dir)
        cls.engine_b = api.CloneEngine(cls.conn, cls.node_b.state_dir)
        cls.master, cls.master_agent, _ = cls.boot_master("master")
        cls.addClassCleanup(cls.master_agent.close)
        cls.expected = cls.master_agent.request("fill", PATTERN_MIB, base.PATTERN_SEED)["checksum"]
        cls.hb_before = cls.master_agent.request("ping")["hb"]
        cls.generation = cls.engine_a.bless(cls.master.name())
        cls.hb_after = cls.master_agent.request("ping")["hb"]

    def setUp(self) -> None:
        super().setUp()
        # On failure, what every page service logged.
        self.addCleanup(
            lambda: [self.addDetail(f"{n.name}.log", text_content(n.log())) for n in self.nodes]
        )

    @classmethod
    def add_node(cls, name: str, **options: object) -> localnode.LocalNode:
        host = cls.network.host(name)
        if "metrics_port" in options:
            options["metrics_host"] = host.address
        node = localnode.LocalNode(
            name, cls.state_dir, cls.pki, listen_host=host.address, wrapper=host.wrapper, **options
        )
        node.start()
        cls.nodes.append(node)
        # Clones first: a FUSE mount still mapped by QEMU cannot go.
        cls.addClassCleanup(node.close)
        cls.addClassCleanup(testguest.destroy_all, cls.conn, cls.prefix)
        return node

    def memory_chunk_at_origin(self, generation: api.Generation, chunk: int) -> bytes:
        with open(generation.memory_image, "rb") as f:
            f.seek(chunk * CHUNK)
            return f.read(CHUNK)

    def data_chunks(self, generation: api.Generation) -> list[int]:
        return [i for i, c in enumerate(generation.chunks) if c is not None]

    def remote_stats(self, node: localnode.LocalNode, generation_id: str) -> dict:
        return node.client.stats()["remote"].get(generation_id, {})

    def test_clones_on_another_node_run_from_the_origin_state(self):
        generation = self.generation
        reply = self.node_b.client.attach(
            generation.id, self.node_a.address, generation.access_key
        )
        self.assertFalse(reply["local"])
        presented = self.engine_b.store.load(generation.id)
        self.assertEqual(self.node_a.address, presented.origin)
        self.assertEqual(
            self.node_b.mount_path(generation.id), os.readlink(presented.memory_image)
        )

        first = self.engine_b.launch(generation.id, 1, name_prefix=f"{self.prefix}-b")[0]
        self.addCleanup(self.destroy_quietly, self.engine_b, first.uuid)
        self.check_clone(self.engine_b, first)
        fetched_after_first = self.remote_stats(self.node_b, generation.id)["bytes_fetched"]
        self.assertGreater(fetched_after_first, PATTERN_MIB * CHUNK)

        second = self.engine_b.launch(generation.id, 1, name_prefix=f"{self.prefix}-b")[0]
        self.addCleanup(self.destroy_quietly, self.engine_b, second.uuid)
        self.check_clone(self.engine_b, second)
        # The second clone read the same pattern: from the node's cache.
        stats = self.remote_stats(self.node_b, generation.id)
        self.assertLess(stats["bytes_fetched"] - fetched_after_first, 8 * CHUNK, stats)
        self.assertIn("p99", stats["fetch_latency_ms"])

        # The clone's disk is an overlay on the frozen base, read through B.
        overlay = os.path.join(self.engine_b.store.clone_dir(first.uuid), "vda.qcow2")
        backing = qemuimg.backing_file(overlay)
        self.assertEqual(
            self.node_b.mount_path(generation.id, "vda.qcow2"), os.path.realpath(backing)
        )

        # The origin knows which clones node B runs and keeps the generation.
        waiting.wait(
            lambda: self.peer_clones(generation) == sorted([first.uuid, second.uuid]),
            30,
            "node B's clones recorded at node A",
        )
        error = self.assertRaises(api.GenerationInUse, self.engine_a.discard, generation.id)
        self.assertIn("node-b", str(error))
        # ... and the first node's first clones recorded the working set.
        waiting.wait(
            lambda: os.path.exists(os.path.join(generation.directory, "working-set.json")),
            30,
            "the working set at node A",
        )

        # Another node prefetches that working set in one go at attach.
        node_c = self.add_node("node-c")
        with open(os.path.join(generation.directory, "working-set.json")) as f:
            working_set = json.load(f)
        self.assertGreater(len(working_set), 0)
        reply = node_c.client.attach(
            generation.id, self.node_a.address, generation.access_key, prefetch="working-set"
        )
        self.assertEqual(len(working_set), reply["prefetched_chunks"])
        engine_c = api.CloneEngine(self.conn, node_c.state_dir)
        third = engine_c.launch(generation.id, 1, name_prefix=f"{self.prefix}-c")[0]
        self.addCleanup(self.destroy_quietly, engine_c, third.uuid)
        self.check_clone(engine_c, third)

        # When its clones are gone, node B releases the generation: its copy
        # and cache go, and so does its reference at the origin.
        for clone in (first, second):
            self.engine_b.destroy_clone(clone.uuid)
        waiting.wait(
            lambda: generation.id not in self.engine_b.store.generation_ids(),
            30,
            "node B releasing the generation",
        )
        waiting.wait(
            lambda: (
                "node-b" not in [p.node for p in self.engine_a.store.peer_references(generation)]
            ),
            30,
            "node A dropping node B's reference",
        )
        self.assertFalse(
            os.path.exists(os.path.join(self.node_b.state_dir, "page-cache", generation.id))
        )

    def test_a_node_on_shared_storage_reads_the_origins_store_directly(self):
        generation = self.generation
        metrics_port = localnode.free_port()
        node = self.add_node("node-shared", release_idle_s=3600, metrics_port=metrics_port)
        shared = f"local://{self.node_a.state_dir}"  # as if NFS-mounted here too
        self.assertFalse(node.client.attach(generation.id, shared, generation.access_key)["local"])
        chunk = self.data_chunks(generation)[-1]
        self.assertSameBytes(
            self.memory_chunk_at_origin(generation, chunk),
            self.read_chunk(node, generation, chunk),
        )
        # Tenant memory: QEMU's user (and root) only, as a local image.
        image = node.mount_path(generation.id)
        self.assertEqual(
            (os.stat(generation.memory_image).st_uid, 0o600),
            (os.stat(image).st_uid, os.stat(image).st_mode & 0o777),
        )
        stranger = subprocess.run(
            ["runuser", "-u", "nobody", "--", "head", "-c1", image], capture_output=True, text=True
        )
        self.assertNotEqual(0, stranger.returncode)
        self.assertIn("Permission denied", stranger.stderr)
        self.assertIn(
            "node-shared", [p.node for p in self.engine_a.store.peer_references(generation)]
        )
        presented = api.CloneEngine(self.conn, node.state_dir).store.load(generation.id)
        self.assertEqual(shared, presented.origin)
        # What it fetched shows in its stats and on its Prometheus endpoint.
        fetched = self.remote_stats(node, generation.id)["bytes_fetched"]
        self.assertGreaterEqual(fetched, CHUNK)
        host = node.address.rpartition(":")[0]
        with urllib.request.urlopen(f"http://{host}:{metrics_port}/metrics", timeout=10) as reply:
            samples = {
                (sample.name, tuple(sorted(sample.labels.items()))): sample.value
                for family in parser.text_string_to_metric_families(reply.read().decode())
                for sample in family.samples
            }
        self.assertEqual(
            fetched,
            samples[
                (
                    "nova_clone_pageserver_remote_bytes_fetched_total",
                    (("generation", generation.id), ("origin", shared)),
                )
            ],
        )
        # Nothing went through node A's page service.
        served = self.node_a.client.stats()["origin"]["generations"]
        self.assertNotIn("node-shared", served.get(generation.id, {}))
        error = self.assertRaises(
            control.PageServiceError, node.client.attach, "0" * 32, "nfs://server/export", "k"
        )
        self.assertIn("no page service transport 'nfs'", str(error))

    def test_background_completion_fetches_everything_at_a_bounded_rate(self):
        node = self.add_node(
            "node-background", release_idle_s=3600, background_fetch_mib_per_s=200
        )
        node.client.attach(self.generation.id, self.node_a.address, self.generation.access_key)
        waiting.wait(
            lambda: (
                self.remote_stats(node, self.generation.id)["chunks_cached"]
                == self.remote_stats(node, self.generation.id)["chunks_total"]
            ),
            60,
            "the background completion",
        )
        stats = self.remote_stats(node, self.generation.id)
        self.assertGreater(stats["bytes_fetched"], PATTERN_MIB * CHUNK)
        # Logged after the pause that follows the last batch.
        waiting.wait(
            lambda: "is complete in the cache" in node.log(),
            10,
            lambda: f"no completion in the log: {node.log()[-2000:]}",
        )

    def test_background_completion_waits_for_an_origin_that_went_away(self):
        node = self.add_node(
            "node-patient", release_idle_s=3600, background_fetch_mib_per_s=16, fetch_timeout_s=3
        )
        node.client.attach(self.generation.id, self.node_a.address, self.generation.access_key)
        self.node_a.stop()
        try:
            waiting.wait(
                lambda: "is unreachable" in node.log(),
                30,
                lambda: f"the origin never counted as unreachable: {node.log()[-2000:]}",
            )
            cached = self.remote_stats(node, self.generation.id)["chunks_cached"]
        finally:
            self.node_a.start()
        waiting.wait(
            lambda: "is complete in the cache" in node.log(),
            90,
            lambda: f"no completion in the log: {node.log()[-2000:]}",
        )
        stats = self.remote_stats(node, self.generation.id)
        self.assertEqual(stats["chunks_total"], stats["chunks_cached"], stats)
        self.assertLess(cached["memory.img"], stats["chunks_total"]["memory.img"])
        self.assertNotIn("chunks missing", node.log())

    def test_full_prefetch_makes_a_node_independent_of_the_origin(self):
        generation = self.engine_a.bless(self.master.name())
        node = self.add_node("node-full", release_idle_s=3600)
        reply = node.client.attach(
            generation.id, self.node_a.address, generation.access_key, prefetch="full"
        )
        stats = self.remote_stats(node, generation.id)
        self.assertEqual(stats["chunks_total"], stats["chunks_cached"], stats)
        self.assertGreater(reply["prefetched_mib"], PATTERN_MIB)
        self.node_a.stop()
        try:
            chunk = self.data_chunks(generation)[-1]
            with open(node.mount_path(generation.id), "rb") as f:
                f.seek(chunk * CHUNK)
                self.assertSameBytes(self.memory_chunk_at_origin(generation, chunk), f.read(CHUNK))
        finally:
            self.node_a.start()

    def test_a_damaged_chunk_is_never_served(self):
        generation = self.engine_a.bless(self.master.name())
        damaged, good = self.data_chunks(generation)[-2:]
        with open(generation.memory_image, "r+b") as f:
            f.seek(damaged * CHUNK + 100)
            f.write(b"\xff" * 16)
        self.node_b.client.attach(generation.id, self.node_a.address, generation.access_key)
        with open(self.node_b.mount_path(generation.id), "rb") as f:
            f.seek(damaged * CHUNK)
            error = self.assertRaises(OSError, f.read, 4096)
            self.assertEqual(errno.EIO, error.errno)
            f.seek(good * CHUNK)
            self.assertSameBytes(self.memory_chunk_at_origin(generation, good), f.read(CHUNK))
        stats = self.remote_stats(self.node_b, generation.id)
        self.assertGreaterEqual(stats["fetch_failures"], 1)
        self.assertIn("fails its checksum", self.node_b.log())

    def test_fetches_resume_after_an_origin_restart_and_fail_after_the_timeout(self):
        generation = self.engine_a.bless(self.master.name())
        node = self.add_node("node-faults", fetch_timeout_s=12, release_idle_s=3600)
        node.client.attach(generation.id, self.node_a.address, generation.access_key)
        # Far apart: the kernel's read-ahead of one must not fetch the other.
        chunks = self.data_chunks(generation)
        first, second = chunks[-1], chunks[len(chunks) // 2]
        expected = self.memory_chunk_at_origin(generation, first)

        # The origin restarts while a clone's read waits: the read completes.
        self.node_a.stop()
        result: dict[str, bytes] = {}
        # A native thread: stestr workers may run under eventlet (nova's
        # test package patches them), and a green thread blocked in a read
        # would block this one too.
        reader = native.thread_class()(
            target=lambda: result.update(data=self.read_chunk(node, generation, first))
        )
        reader.start()
        time.sleep(1)
        self.node_a.start()
        reader.join(30)
        self.assertSameBytes(expected, result.get("data"))

        # The origin stays away: the read fails (EIO) after the timeout,
        # and the failure shows in stats. The node now knows the origin is
        # unreachable: the next read, elsewhere, fails after one short try
        # rather than another timeout.
        self.node_a.stop()
        try:
            for chunk, at_least_s, at_most_s in (
                (second, 11, 24),
                (chunks[len(chunks) // 4], 0, 6),
            ):
                started = time.monotonic()
                error = self.assertRaises(OSError, self.read_chunk, node, generation, chunk)
                self.assertEqual(errno.EIO, error.errno)
                elapsed_s = time.monotonic() - started
                self.addDetail(
                    f"read of chunk {chunk} failed after", text_content(f"{elapsed_s:.1f} s")
                )
                self.assertGreaterEqual(elapsed_s, at_least_s)
                self.assertLess(elapsed_s, at_most_s)
        finally:
            self.node_a.start()
        self.assertGreaterEqual(self.remote_stats(node, generation.id)["fetch_failures"], 1)
        self.assertIn("unreachable", node.log())

    def test_a_restarted_node_keeps_its_generations_and_cache(self):
        generation = self.engine_a.bless(self.master.name())
        node = self.add_node("node-crash", release_idle_s=3600)
        node.client.attach(generation.id, self.node_a.address, generation.access_key)
        chunk = self.data_chunks(generation)[-1]
        data = self.read_chunk(node, generation, chunk)
        cached = self.remote_stats(node, generation.id)["chunks_cached"]["memory.img"]
        node.stop(signal.SIGKILL)  # a crash: the FUSE mount is left dead
        node.start()  # a new mount: nothing of it in the kernel's page cache
        self.assertEqual(
            cached, self.remote_stats(node, generation.id)["chunks_cached"]["memory.img"]
        )
        self.assertSameBytes(data, self.read_chunk(node, generation, chunk))
        self.assertEqual(0, self.remote_stats(node, generation.id).get("bytes_fetched", 0))

    def test_remote_clones_survive_restarts_of_their_page_service(self):
        generation = self.engine_a.bless(self.master.name())
        node = self.add_node("node-restart", release_idle_s=3600)
        node.client.attach(generation.id, self.node_a.address, generation.access_key)
        engine = api.CloneEngine(self.conn, node.state_dir)
        clone = engine.launch(generation.id, 1, name_prefix=f"{self.prefix}-r")[0]
        self.addCleanup(self.destroy_quietly, engine, clone.uuid)
        client = base.clone_agent(engine, clone.uuid)
        self.addCleanup(client.close)
        client.wait_ready(timeout_s=60)
        client.timeout_s = 180
        cached = self.remote_stats(node, generation.id)["chunks_cached"]["memory.img"]

        # The clone reads its whole pattern, most of it not fetched yet,
        # while its node's page service is killed. (The origin is away at
        # first, so that the clone is sure to be waiting for a page when the
        # service dies.) Its reads wait, and go on once the service is back.
        result: dict[str, object] = {}
        reader = native.thread_class()(
            target=lambda: result.update(reply=client.request("checksum"))
        )
        self.node_a.stop()
        try:
            reader.start()
            time.sleep(1)
            node.stop(signal.SIGKILL)
        finally:
            self.node_a.start()
        time.sleep(1)
        self.assertTrue(fusefront.is_mounted(node.mount_dir()), "the mount went with the service")
        node.start()
        reader.join(180)
        self.assertEqual(self.expected, result.get("reply", {}).get("checksum"), result)
        replayed = re.findall(r"A page service connected; (\d+) unanswered", node.log())
        self.assertGreaterEqual(int(replayed[-1]), 1, replayed)
        stats = self.remote_stats(node, generation.id)
        self.assertGreater(stats["chunks_cached"]["memory.img"], cached + PATTERN_MIB // 2)
        self.assertGreater(stats["bytes_fetched"], 0)  # by the new service
        self.assertEqual(
            libvirt.VIR_DOMAIN_RUNNING, self.conn.lookupByUUIDString(clone.uuid).state()[0]
        )

        # A clean stop (an upgrade) while the clone runs: the mount stays
        # for the next run, and the clone goes on reading through it.
        node.stop()
        self.assertTrue(fusefront.is_mounted(node.mount_dir()))
        self.assertIn("keeps", node.log().rsplit("stopping", 1)[-1])
        node.start()
        self.assertEqual(self.expected, client.request("checksum")["checksum"])
        # Its generation counts as in use: the open files were handed over.
        error = self.assertRaises(control.PageServiceError, node.client.release, generation.id)
        self.assertIn("open file", str(error))

        # Without clones, a stop takes the mount and the front along.
        engine.destroy_clone(clone.uuid)
        node.stop()
        self.assertFalse(fusefront.is_mounted(node.mount_dir()))
        self.assertIn("No file open: unmounting", node.log())

    def test_bad_attach_requests_change_nothing(self):
        before = sorted(self.engine_b.store.generation_ids())
        key = self.generation.access_key
        error = self.assertRaises(
            control.PageServiceError, self.node_b.client.attach, "0" * 32, self.node_a.address, key
        )
        self.assertIn("no snapshot generation", str(error))
        error = self.assertRaises(
            control.PageServiceError,
            self.node_b.client.attach,
            self.generation.id,
            self.node_a.address,
            key,
            "everything",
        )
        self.assertIn("prefetch must be one of", str(error))
        error = self.assertRaises(
            control.PageServiceError,
            self.node_b.client.attach,
            self.generation.id,
            "not-an-address",
            key,
        )
        self.assertIn("not <host>:<port>", str(error))
        self.assertEqual(before, sorted(self.engine_b.store.generation_ids()))

    def test_a_node_without_the_access_key_gets_nothing(self):
        # A node of the deployment (valid certificate) that does not know the
        # generation's key: its attach is refused by the origin, and nothing
        # is left on either side.
        node = self.add_node("node-nokey")
        for wrong in ("", "0" * 64, self.generation.access_key[:-1]):
            error = self.assertRaises(
                control.PageServiceError,
                node.client.attach,
                self.generation.id,
                self.node_a.address,
                wrong,
            )
            self.assertIn("did not present the access key", str(error))
        self.assertNotIn(
            self.generation.id, api.CloneEngine(self.conn, node.state_dir).store.generation_ids()
        )
        self.assertNotIn(
            "node-nokey", [p.node for p in self.engine_a.store.peer_references(self.generation)]
        )
        # The same through the shared-storage transport.
        error = self.assertRaises(
            control.PageServiceError,
            node.client.attach,
            self.generation.id,
            f"local://{self.node_a.state_dir}",
            "0" * 64,
        )
        self.assertIn("did not present the access key", str(error))
        # A node that has it, once: asking again with another key is refused
        # too (the key is checked every time).
        node.client.attach(self.generation.id, self.node_a.address, self.generation.access_key)
        error = self.assertRaises(
            control.PageServiceError,
            node.client.attach,
            self.generation.id,
            self.node_a.address,
            "0" * 64,
        )
        self.assertIn("not the access key", str(error))
        # Straight to the origin: OPEN without a key or with a wrong one.
        context = self.client_context(self.pki, "node-g")
        closer = protocol.encode(Kind.DATA, 2, b"")  # malformed: the origin hangs up
        for data, reason in (
            ({}, "OPEN needs the generation's access key"),
            ({"key": "0" * 64}, "did not present the access key"),
        ):
            replies = self.exchange(
                context,
                protocol.encode_json(
                    Kind.OPEN, 1, {"generation": self.generation.id, "clones": [], **data}
                )
                + closer,
            )
            self.assertEqual(Kind.ERROR, replies[0][0])
            self.assertIn(reason, json.loads(replies[0][1])["error"])
        error = self.assertRaises(transport.Refused, self.fetch_with, context, self.generation.id)
        self.assertIn("node-g has not opened generation", str(error))

    def test_peers_must_authenticate_and_only_get_what_they_opened(self):
        open_request = protocol.encode_json(
            Kind.OPEN,
            1,
            {"generation": self.generation.id, "clones": [], "key": self.generation.access_key},
        )
        # No client certificate: the origin drops the connection unanswered.
        bare = ssl.create_default_context(cafile=self.pki.ca_file)
        self.assertTrue(self.refused(bare, open_request))
        # A certificate from another CA: the same.
        stranger_pki = pki_mod.ThrowawayPKI(os.path.join(self.state_dir, "other-pki"), "other-ca")
        stranger = self.client_context(stranger_pki, "node-x")
        stranger.load_verify_locations(self.pki.ca_file)
        self.assertTrue(self.refused(stranger, open_request))
        # The origin says so in its log (once a minute per address) and
        # counts each refusal.
        refusals = [line for line in self.node_a.log().splitlines() if "Refusing a peer" in line]
        self.assertEqual(1, len(refusals), refusals)
        self.assertIn("in the TLS handshake: peer did not return a certificate", refusals[0])
        requests = self.node_a.client.stats()["origin"]["requests"]
        self.assertEqual(2, requests["refused_handshakes"], requests)
        # (A certificate of the deployment gets an answer to the same bytes.)
        self.assertFalse(self.refused(self.client_context(self.pki, "node-f"), open_request))
        # A node of the deployment that never opened the generation.
        context = self.client_context(self.pki, "node-d")
        error = self.assertRaises(transport.Refused, self.fetch_with, context, self.generation.id)
        self.assertIn("node-d has not opened generation", str(error))
        self.assertNotIn(
            "node-d", [p.node for p in self.engine_a.store.peer_references(self.generation)]
        )

    def test_malformed_requests_get_an_error_and_a_closed_connection(self):
        context = self.client_context(self.pki, "node-e")
        bad_requests = [
            b"XX" + bytes(10),  # not our magic
            protocol.HEADER.pack(protocol.MAGIC, 99, 0, 1, 0),  # unknown kind
            protocol.HEADER.pack(protocol.MAGIC, Kind.OPEN, 0, 1, 1 << 30),  # oversized
            protocol.encode(Kind.OPEN, 1, b"{not json"),
            protocol.encode(Kind.OPEN, 1, b"[1, 2]"),
            protocol.encode(Kind.FETCH, 1, b"short"),
            protocol.encode(Kind.FETCH, 1, protocol.FETCH_HEAD.pack(b"0" * 32, 0, 0)),
            protocol.encode(Kind.DATA, 1, b""),  # a reply is not a request
        ]
        for request in bad_requests:
            replies = self.exchange(context, request)
            self.assertEqual(1, len(replies), request)
            self.assertEqual(Kind.ERROR, replies[0][0], request)
        # A chunk beyond the end of the image, once the generation is open.
        open_request = protocol.encode_json(
            Kind.OPEN,
            1,
            {"generation": self.generation.id, "clones": [], "key": self.generation.access_key},
        )
        beyond = protocol.encode(
            Kind.FETCH,
            2,
            protocol.encode_fetch(
                self.generation.id, protocol.MEMORY_FILE, [len(self.generation.chunks)]
            ),
        )
        replies = self.exchange(context, open_request + beyond)
        self.assertEqual([Kind.OK, Kind.ERROR], [kind for kind, _ in replies])
        self.assertIn("beyond the end", json.loads(replies[1][1])["error"])
        # Fuzz: random headers (valid magic, random kind, flags, length) and
        # random payloads, each on its own connection.
        fuzz = random.Random(4242)
        for _ in range(60):
            payload = fuzz.randbytes(fuzz.randrange(0, 64))
            header = protocol.HEADER.pack(
                protocol.MAGIC,
                fuzz.randrange(256),
                fuzz.randrange(256),
                fuzz.randrange(1 << 32),
                fuzz.choice([len(payload), fuzz.randrange(1 << 32)]),
            )
            # (A timeout: the service waits for the rest of a long message.)
            with contextlib.suppress(TimeoutError):
                self.exchange(context, header + payload, timeout_s=2)
        self.assertIsNotNone(self.node_a.process)
        self.assertIsNone(self.node_a.process.poll(), "the origin died of fuzz")
        # The service lives on and serves well-formed requests.
        chunk = self.data_chunks(self.generation)[0]
        data = asyncio.run(self.fetch_chunk(context, self.generation.id, chunk))
        self.assertSameBytes(self.memory_chunk_at_origin(self.generation, chunk), data)
        stats = self.node_a.client.stats()["origin"]
        self.assertGreaterEqual(stats["requests"]["malformed_requests"], len(bad_requests))

    # helpers

    def assertSameBytes(self, expected: bytes | None, actual: bytes | None) -> None:
        """Compared by digest: a failure must not print a megabyte."""

        def digest(data: bytes | None) -> str | None:
            return (
                None
                if data is None
                else f"{len(data)} bytes, sha256 " + hashlib.sha256(data).hexdigest()
            )

        self.assertEqual(digest(expected), digest(actual))

    def check_clone(self, engine: api.CloneEngine, clone: api.Clone) -> None:
        client = base.clone_agent(engine, clone.uuid)
        try:
            client.wait_ready(timeout_s=60)
            self.assertEqual(self.expected, client.request("checksum")["checksum"])
        finally:
            client.close()
        beats = agent_mod.first_heartbeats(base.clone_console(engine, clone.uuid))
        self.assertTrue(beats, "the clone printed no heartbeat")
        self.assertLessEqual(self.hb_before, beats[0])
        self.assertLessEqual(beats[0], self.hb_after + 2)

    def destroy_quietly(self, engine: api.CloneEngine, clone_uuid: str) -> None:
        with contextlib.suppress(api.CloneNotFound):
            engine.destroy_clone(clone_uuid)

    def peer_clones(self, generation: api.Generation) -> list[str]:
        for ref in self.engine_a.store.peer_references(generation):
            if ref.node == "node-b":
                return ref.clones
        return []

    def read_chunk(
        self, node: localnode.LocalNode, generation: api.Generation, chunk: int
    ) -> bytes:
        with open(node.mount_path(generation.id), "rb") as f:
            f.seek(chunk * CHUNK)
            return f.read(CHUNK)

    def client_context(self, pki: pki_mod.ThrowawayPKI, name: str) -> ssl.SSLContext:
        cert, key = pki.node(name)
        return tls.client_context(cert, key, pki.ca_file)

    def origin_address(self) -> tuple[str, int]:
        host, _, port = self.node_a.address.rpartition(":")
        return host, int(port)

    def refused(self, context: ssl.SSLContext, request: bytes) -> bool:
        """Whether the origin refuses the connection (during the handshake,
        or by closing it without a reply once it has checked the peer)."""
        try:
            with (
                socket.create_connection(self.origin_address(), timeout=10) as raw,
                context.wrap_socket(raw, server_hostname=self.origin_address()[0]) as sock,
            ):
                sock.sendall(request)
                return sock.recv(protocol.HEADER.size) == b""
        except (ssl.SSLError, ConnectionError):
            return True

    def exchange(
        self, context: ssl.SSLContext, request: bytes, timeout_s: float = 10
    ) -> list[tuple[int, bytes]]:
        """Send raw bytes to node A; the replies until it closes the connection."""
        with (
            socket.create_connection(self.origin_address(), timeout=timeout_s) as raw,
            context.wrap_socket(raw, server_hostname=self.origin_address()[0]) as sock,
        ):
            sock.sendall(request)
            received = b""
            while chunk := sock.recv(65536):
                received += chunk
        replies = []
        while received:
            _magic, kind, _flags, _rid, length = protocol.HEADER.unpack_from(received)
            end = protocol.HEADER.size + length
            replies.append((kind, received[protocol.HEADER.size : end]))
            received = received[end:]
        return replies

    def fetch_with(self, context: ssl.SSLContext, generation_id: str) -> None:
        asyncio.run(self.fetch_chunk(context, generation_id, 0, open_first=False))

    async def fetch_chunk(
        self, context: ssl.SSLContext, generation_id: str, chunk: int, open_first: bool = True
    ) -> bytes | None:
        client = peer_mod.OriginClient(self.node_a.address, context, 10, 4)
        try:
            if open_first:
                key = self.engine_a.store.load(generation_id).access_key
                await client.request_json(
                    Kind.OPEN, {"generation": generation_id, "clones": [], "key": key}
                )
            data = await client.fetch(generation_id, protocol.MEMORY_FILE, [chunk])
            return data[chunk]
        finally:
            await client.close()
