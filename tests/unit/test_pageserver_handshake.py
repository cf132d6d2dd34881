"""The origin's TLS handshake with peers and a peer's view of an origin that
went away, over real TLS on the loopback: who is refused, how fast a
request fails, what the log and the stats say. Both sides run threads with
blocking sockets, as in the page service: each test in a process of its
own (tests/fresh.py)."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import ssl
import time

import fixtures
import testtools

from nova_clonedriver.demo import pki as pki_mod
from nova_clonedriver.engine import store as store_mod
from nova_clonedriver.pageserver import origin
from nova_clonedriver.pageserver import peer
from nova_clonedriver.pageserver import protocol
from nova_clonedriver.pageserver import ratelimit
from nova_clonedriver.pageserver import stats as stats_mod
from nova_clonedriver.pageserver import tls
from nova_clonedriver.pageserver import transport
from nova_clonedriver.pageserver.protocol import Kind
from tests.fresh import in_a_fresh_process


class OriginCase(testtools.TestCase):
    """An origin server (not listening yet) of node-a's CA."""

    def setUp(self):
        super().setUp()
        root = self.useFixture(fixtures.TempDir()).path
        self.log = self.useFixture(fixtures.FakeLogger(level=logging.INFO))
        self.pki = pki_mod.ThrowawayPKI(os.path.join(root, "pki"))
        self.stats = stats_mod.Stats()
        certs = (*self.pki.node("node-a"), self.pki.ca_file)
        self.server = origin.OriginServer(
            store_mod.SnapshotStore(os.path.join(root, "store")),
            self.stats,
            tls.server_context(*certs),
        )
        self.stranger_pki = pki_mod.ThrowawayPKI(os.path.join(root, "other"), "other-ca")

    def client(self, pki=None, name="node-b"):
        """A client context that trusts node-a's CA, with a certificate of
        ``pki`` (none if not given)."""
        context = ssl.create_default_context(cafile=self.pki.ca_file)
        if pki:
            context.load_cert_chain(*pki.node(name))
        return context


class TestHandshake(OriginCase):
    async def exchange(self, contexts):
        """For each client context: a connection to the origin, one request
        for an unknown generation; the reply's kind, or None if the origin
        hung up."""
        port = self.server.start("127.0.0.1", 0).getsockname()[1]
        kinds = []
        try:
            for context in contexts:
                kinds.append(await self._one(port, context))
        finally:
            self.server.close()
        return kinds

    async def _one(self, port, context):
        request = protocol.encode_json(Kind.OPEN, 1, {"generation": "0" * 32, "clones": []})
        try:
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", port, ssl=context, server_hostname="localhost"
            )
            writer.write(request)
            await writer.drain()
            header = await reader.readexactly(protocol.HEADER.size)
            writer.close()
            return protocol.parse_header(header, 1 << 20)[0]
        except (ssl.SSLError, ConnectionError, asyncio.IncompleteReadError):
            return None

    def refusals(self):
        return [line for line in self.log.output.splitlines() if "Refusing a peer" in line]

    @in_a_fresh_process
    def test_a_peer_of_the_deployment_gets_an_answer(self):
        kinds = asyncio.run(self.exchange([self.client(self.pki)]))
        self.assertEqual([Kind.ERROR], kinds)  # an answer: no such generation
        self.assertEqual([], self.refusals())
        self.assertEqual(0, self.stats.to_json()["origin"]["requests"]["refused_handshakes"])

    @in_a_fresh_process
    def test_refused_handshakes_are_logged_with_address_and_reason(self):
        kinds = asyncio.run(self.exchange([self.client()]))
        self.assertEqual([None], kinds)
        [line] = self.refusals()
        self.assertIn("Refusing a peer: 127.0.0.1 in the TLS handshake:", line)
        self.assertIn("peer did not return a certificate", line)
        # (A new server: its log has not seen this address yet.)
        self.server = origin.OriginServer(
            self.server.origin.store, self.stats, self.server._ssl_context
        )
        asyncio.run(self.exchange([self.client(self.stranger_pki)]))
        line = self.refusals()[-1]
        self.assertIn("certificate not accepted", line)
        self.assertEqual(2, self.stats.to_json()["origin"]["requests"]["refused_handshakes"])

    @in_a_fresh_process
    def test_a_flood_of_refusals_is_one_line_per_minute_and_all_counted(self):
        asyncio.run(self.exchange([self.client()] * 20))
        self.assertEqual(1, len(self.refusals()))
        self.assertEqual(20, self.stats.to_json()["origin"]["requests"]["refused_handshakes"])


LOGGER = "tests.unit.test_pageserver_handshake"


class TestRateLimitedLog(testtools.TestCase):
    def test_the_next_line_after_the_interval_says_how_many_were_left_out(self):
        # Only this logger: the root one may get what the garbage collector
        # says of other tests' event loops meanwhile.
        log = self.useFixture(fixtures.FakeLogger(name=LOGGER, level=logging.INFO))
        now = self.useFixture(fixtures.MockPatch("time.monotonic", return_value=100.0)).mock
        limited = ratelimit.RateLimitedLog(logging.getLogger(LOGGER), interval_s=60)
        for _ in range(5):
            limited.warning("10.0.0.1", "refused %s", "10.0.0.1")
        limited.warning("10.0.0.2", "refused %s", "10.0.0.2")
        now.return_value = 161.0
        limited.warning("10.0.0.1", "refused %s", "10.0.0.1")
        self.assertEqual(
            [
                "refused 10.0.0.1",
                "refused 10.0.0.2",
                "refused 10.0.0.1 (4 more like it in the last 61 s, not logged)",
            ],
            log.output.splitlines(),
        )

    def test_keys_are_bounded(self):
        self.useFixture(fixtures.MockPatchObject(ratelimit, "MAX_KEYS", 3))
        self.useFixture(fixtures.MockPatch("time.monotonic", return_value=100.0))
        limited = ratelimit.RateLimitedLog(logging.getLogger(LOGGER), interval_s=60)
        for n in range(10):
            limited.warning(f"k{n}", "x")
        self.assertLessEqual(len(limited._last), 3)


class TestUnreachableOrigin(OriginCase):
    """A peer's client of an origin that went away: the first request waits
    the fetch timeout, later ones fail after one short try, and the first
    answer ends that."""

    TIMEOUT_S = 3.0

    @in_a_fresh_process
    def test_after_one_timeout_requests_fail_fast_until_it_answers(self):
        self.useFixture(fixtures.MockPatchObject(peer, "PROBE_TIMEOUT_S", 0.3))
        asyncio.run(self._scenario())

    async def _scenario(self):
        with socket.socket() as free:  # a port nobody listens on, for now
            free.bind(("127.0.0.1", 0))
            port = free.getsockname()[1]
        context = tls.client_context(*self.pki.node("node-b"), self.pki.ca_file)
        client = peer.OriginClient(f"127.0.0.1:{port}", context, self.TIMEOUT_S, 4)
        request = {"generation": "0" * 32, "clones": []}

        started = time.monotonic()
        with self.assertRaisesRegex(peer.OriginUnavailable, "unreachable for 3.0 s"):
            await client.request_json(Kind.OPEN, request)
        self.assertGreaterEqual(time.monotonic() - started, self.TIMEOUT_S)

        started = time.monotonic()
        with self.assertRaisesRegex(
            peer.OriginUnavailable, r"still unreachable, \d+ s after it first failed"
        ):
            await client.request_json(Kind.OPEN, request)
        self.assertLess(time.monotonic() - started, self.TIMEOUT_S / 2)
        self.assertIn("is unreachable: requests to it now fail", self.log.output)

        self.server.start("127.0.0.1", port)
        try:
            with self.assertRaisesRegex(transport.Refused, "no snapshot generation"):
                await client.request_json(Kind.OPEN, request)
            self.assertIn(f"Origin 127.0.0.1:{port} answers again", self.log.output)
            self.assertIsNone(client._unreachable_since)
        finally:
            await client.close()
            self.server.close()
