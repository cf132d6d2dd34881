"""The Prometheus text endpoint of the page service."""

from __future__ import annotations

import asyncio

import testtools

from nova_clonedriver.pageserver import metrics

STATS = {
    "remote": {"g1": {"origin": "10.0.0.11:8797", "bytes_fetched": 5 << 20,
                      "chunks_cached": {"memory.img": 3}, "chunks_total": {"memory.img": 4},
                      "fetch_latency_ms": {"p50": 1.5, "p99": 9.0, "samples": 2}}},
    "origin": {"requests": {"malformed_requests": 2},
               "generations": {"g2": {"node-c": {"chunks_served": 7, "bytes_served": 70}}}},
}


class TestRender(testtools.TestCase):
    def test_counters_gauges_and_labels(self):
        text = metrics.render(STATS)
        for line in [
                'nova_clone_pageserver_remote_bytes_fetched_total{generation="g1",'
                'origin="10.0.0.11:8797"} 5242880',
                'nova_clone_pageserver_remote_chunks_cached{generation="g1",'
                'file="memory.img"} 3',
                'nova_clone_pageserver_remote_fetch_latency_ms{generation="g1",'
                'quantile="0.99"} 9.0',
                'nova_clone_pageserver_served_chunks_total{generation="g2",peer="node-c"} 7',
                'nova_clone_pageserver_requests_refused_total{reason="malformed_requests"} 2',
                "# TYPE nova_clone_pageserver_served_bytes_total counter"]:
            self.assertIn(line + "\n", text)

    def test_label_values_are_escaped(self):
        self.assertEqual('{a="x\\"y\\\\z"}', metrics._labels(a='x"y\\z'))


class TestEndpoint(testtools.TestCase):
    def request(self, raw: bytes) -> bytes:
        async def go() -> bytes:
            server = await metrics.serve("127.0.0.1", 0, lambda: STATS)
            port = server.sockets[0].getsockname()[1]
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(raw)
            reply = await reader.read()
            writer.close()
            server.close()
            return reply
        return asyncio.run(go())

    def test_get_metrics(self):
        reply = self.request(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertTrue(reply.startswith(b"HTTP/1.0 200 OK\r\n"), reply[:100])
        self.assertIn(b"nova_clone_pageserver_served_bytes_total", reply)

    def test_other_paths_and_garbage(self):
        self.assertTrue(self.request(b"GET / HTTP/1.1\r\n\r\n").startswith(
            b"HTTP/1.0 404 Not Found"))
        self.assertEqual(b"", self.request(b"x" * 10000))  # over the limit: dropped
