"""The Prometheus endpoint of the page service."""

from __future__ import annotations

import asyncio
import socket

from prometheus_client import exposition
import testtools

from nova_clonedriver.pageserver import metrics

STATS = {
    "remote": {
        "g1": {
            "origin": "10.0.0.11:8797",
            "bytes_fetched": 5 << 20,
            "chunks_cached": {"memory.img": 3},
            "chunks_total": {"memory.img": 4},
            "fetch_latency_ms": {"p50": 1.5, "p99": 9.0, "samples": 2},
        }
    },
    "origin": {
        "requests": {"malformed_requests": 2},
        "generations": {"g2": {"node-c": {"chunks_served": 7, "bytes_served": 70}}},
    },
}


class TestEndpoint(testtools.TestCase):
    def scrape(self, raw: bytes = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n") -> bytes:
        """What a scraper gets; the stats are read on the service's loop."""

        async def go() -> bytes:
            reads = []

            def stats():
                reads.append(asyncio.get_running_loop())
                return STATS

            endpoint = await metrics.serve("127.0.0.1", 0, stats)
            try:
                reply = await asyncio.to_thread(self._request, endpoint.port, raw)
            finally:
                await asyncio.to_thread(endpoint.close)
            self.assertEqual(len(reads), reply.count(b"200 OK"))
            return reply

        return asyncio.run(go())

    @staticmethod
    def _request(port: int, raw: bytes) -> bytes:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(raw)
            sock.shutdown(socket.SHUT_WR)
            chunks = []
            while data := sock.recv(65536):
                chunks.append(data)
        return b"".join(chunks)

    def test_counters_gauges_and_labels(self):
        reply = self.scrape()
        self.assertTrue(reply.startswith(b"HTTP/1.0 200 OK\r\n"), reply[:100])
        text = reply.decode()
        for line in [
            'nova_clone_pageserver_remote_bytes_fetched_total{generation="g1",'
            'origin="10.0.0.11:8797"} 5.24288e+06',
            'nova_clone_pageserver_remote_chunks_cached{file="memory.img",generation="g1"} 3.0',
            'nova_clone_pageserver_remote_fetch_latency_ms{generation="g1",quantile="0.99"} 9.0',
            'nova_clone_pageserver_served_chunks_total{generation="g2",peer="node-c"} 7.0',
            'nova_clone_pageserver_requests_refused_total{reason="malformed_requests"} 2.0',
            "# TYPE nova_clone_pageserver_served_bytes_total counter",
        ]:
            self.assertIn(line + "\n", text)

    def test_label_values_are_escaped(self):
        stats = {"remote": {'x"y\\z': {}}, "origin": {"requests": {}, "generations": {}}}
        text = exposition.generate_latest(_Fixed(stats)).decode()
        self.assertIn('generation="x\\"y\\\\z"', text)

    def test_garbage_does_not_stop_it(self):
        async def go() -> tuple[bytes, bytes]:
            endpoint = await metrics.serve("127.0.0.1", 0, lambda: STATS)
            try:
                garbage = await asyncio.to_thread(
                    self._request, endpoint.port, b"x" * 70000 + b"\r\n\r\n"
                )
                good = await asyncio.to_thread(
                    self._request, endpoint.port, b"GET /metrics HTTP/1.0\r\n\r\n"
                )
            finally:
                await asyncio.to_thread(endpoint.close)
            return garbage, good

        garbage, good = asyncio.run(go())
        self.assertNotIn(b"200 OK", garbage)
        self.assertIn(b"nova_clone_pageserver_served_bytes_total", good)


class _Fixed:
    """A collector of fixed stats, for the text format alone."""

    def __init__(self, stats: dict) -> None:
        self.stats = stats

    def collect(self):
        return metrics.families(self.stats)
