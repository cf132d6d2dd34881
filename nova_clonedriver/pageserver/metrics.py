"""The page service's stats as a Prometheus endpoint (``GET /metrics`` on
``[pageserver] metrics_host``:``metrics_port``), served by prometheus_client.

The stats change on the page service's event loop; prometheus_client serves
from a thread of its own, so each scrape asks the loop for a snapshot.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from collections.abc import Iterator
import logging
from typing import Any

from prometheus_client import exposition
from prometheus_client import metrics_core
from prometheus_client import registry as registry_mod

LOG = logging.getLogger(__name__)

PREFIX = "nova_clone_pageserver"
SCRAPE_TIMEOUT_S = 10
# Counters of a remote generation: (stats key, metric name, help).
REMOTE_COUNTERS = [
    ("chunks_fetched", "remote_chunks_fetched", "Chunks fetched from the origin"),
    ("bytes_fetched", "remote_bytes_fetched", "Bytes fetched from the origin"),
    ("cache_hits", "remote_cache_hits", "Chunk reads answered from the cache"),
    (
        "waits_on_inflight_fetch",
        "remote_inflight_waits",
        "Chunk reads that waited for a fetch already under way",
    ),
    (
        "fetch_failures",
        "remote_fetch_failures",
        "Fetches that failed (origin unavailable, refused or bad checksum)",
    ),
    ("prefetched_bytes", "remote_prefetched_bytes", "Bytes fetched by prefetch"),
    (
        "chunks_read_ahead",
        "remote_chunks_read_ahead",
        "Chunks fetched ahead of a sequential reader",
    ),
]
SERVED_COUNTERS = [
    ("chunks_served", "served_chunks", "Chunks served to a peer"),
    ("bytes_served", "served_bytes", "Bytes served to a peer"),
]

Stats = dict[str, Any]


def families(stats: Stats) -> Iterator[metrics_core.Metric]:
    """The metric families of ``RemoteGenerations.stats_json()``."""
    remote = stats["remote"]
    for key, name, help_text in REMOTE_COUNTERS:
        counter = metrics_core.CounterMetricFamily(
            f"{PREFIX}_{name}", help_text, labels=["generation", "origin"]
        )
        for generation_id, data in remote.items():
            counter.add_metric([generation_id, data.get("origin", "")], data.get(key, 0))
        yield counter
    for name, key, help_text in (
        ("remote_chunks_cached", "chunks_cached", "Chunks of a file in this node's cache"),
        ("remote_chunks", "chunks_total", "Chunks of a file in all"),
    ):
        gauge = metrics_core.GaugeMetricFamily(
            f"{PREFIX}_{name}", help_text, labels=["generation", "file"]
        )
        for generation_id, data in remote.items():
            for file_name, count in data.get(key, {}).items():
                gauge.add_metric([generation_id, file_name], count)
        yield gauge
    latency = metrics_core.GaugeMetricFamily(
        f"{PREFIX}_remote_fetch_latency_ms",
        "Round trip of the fetches clones waited for",
        labels=["generation", "quantile"],
    )
    for generation_id, data in remote.items():
        if "fetch_latency_ms" in data:
            for quantile, key in (("0.5", "p50"), ("0.99", "p99")):
                latency.add_metric([generation_id, quantile], data["fetch_latency_ms"][key])
    yield latency
    served = stats["origin"]["generations"]
    for key, name, help_text in SERVED_COUNTERS:
        counter = metrics_core.CounterMetricFamily(
            f"{PREFIX}_{name}", help_text, labels=["generation", "peer"]
        )
        for generation_id, peers in served.items():
            for peer, counters in peers.items():
                counter.add_metric([generation_id, peer], counters.get(key, 0))
        yield counter
    refused = metrics_core.CounterMetricFamily(
        f"{PREFIX}_requests_refused", "Requests from peers refused or malformed", labels=["reason"]
    )
    for reason, count in stats["origin"]["requests"].items():
        refused.add_metric([reason], count)
    yield refused


class _LoopCollector(registry_mod.Collector):
    def __init__(self, stats: Callable[[], Stats], loop: asyncio.AbstractEventLoop) -> None:
        self._stats = stats
        self._loop = loop

    def collect(self) -> Iterator[metrics_core.Metric]:
        async def snapshot() -> Stats:
            return self._stats()

        stats = asyncio.run_coroutine_threadsafe(snapshot(), self._loop).result(SCRAPE_TIMEOUT_S)
        return families(stats)


def registry(
    stats: Callable[[], Stats], loop: asyncio.AbstractEventLoop
) -> registry_mod.CollectorRegistry:
    """A registry of its own (not prometheus_client's global one, which
    holds this process's Python metrics) whose scrapes read ``stats`` on
    ``loop``."""
    collectors = registry_mod.CollectorRegistry(auto_describe=False)
    collectors.register(_LoopCollector(stats, loop))
    return collectors


class Endpoint:
    """The running HTTP endpoint; ``port`` is the one it listens on."""

    def __init__(self, host: str, port: int, collectors: registry_mod.CollectorRegistry) -> None:
        self._server, self._thread = exposition.start_http_server(port, host, collectors)
        self.port = self._server.server_port

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()


async def serve(host: str, port: int, stats: Callable[[], Stats]) -> Endpoint:
    """Serve ``stats`` on ``host``:``port`` until the endpoint is closed."""
    endpoint = Endpoint(host, port, registry(stats, asyncio.get_running_loop()))
    LOG.info("Prometheus metrics on http://%s:%d/metrics", host, endpoint.port)
    return endpoint
