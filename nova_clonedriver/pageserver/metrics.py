"""The page service's stats as a Prometheus text endpoint (``GET /metrics``
on ``[pageserver] metrics_host``:``metrics_port``)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
import logging
from typing import Any

LOG = logging.getLogger(__name__)

PREFIX = "nova_clone_pageserver"
MAX_REQUEST_BYTES = 8192
# Counters of a remote generation: (stats key, metric name, help).
REMOTE_COUNTERS = [
    ("chunks_fetched", "remote_chunks_fetched_total", "Chunks fetched from the origin"),
    ("bytes_fetched", "remote_bytes_fetched_total", "Bytes fetched from the origin"),
    ("cache_hits", "remote_cache_hits_total", "Chunk reads answered from the cache"),
    ("waits_on_inflight_fetch", "remote_inflight_waits_total",
     "Chunk reads that waited for a fetch already under way"),
    ("fetch_failures", "remote_fetch_failures_total",
     "Fetches that failed (origin unavailable, refused or bad checksum)"),
    ("prefetched_bytes", "remote_prefetched_bytes_total", "Bytes fetched by prefetch"),
    ("chunks_read_ahead", "remote_chunks_read_ahead_total",
     "Chunks fetched ahead of a sequential reader"),
]
SERVED_COUNTERS = [
    ("chunks_served", "served_chunks_total", "Chunks served to a peer"),
    ("bytes_served", "served_bytes_total", "Bytes served to a peer"),
]


def _labels(**labels: str) -> str:
    def escape(value: str) -> str:
        return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return "{" + ",".join(f'{k}="{escape(str(v))}"' for k, v in labels.items()) + "}"


def render(stats: dict[str, Any]) -> str:
    """Prometheus text exposition of ``RemoteGenerations.stats_json()``."""
    lines: list[str] = []

    def family(name: str, kind: str, help_text: str,
               samples: list[tuple[dict[str, str], float]]) -> None:
        lines.append(f"# HELP {PREFIX}_{name} {help_text}")
        lines.append(f"# TYPE {PREFIX}_{name} {kind}")
        lines.extend(f"{PREFIX}_{name}{_labels(**labels)} {value}"
                     for labels, value in samples)

    remote = stats["remote"]
    for key, name, help_text in REMOTE_COUNTERS:
        family(name, "counter", help_text,
               [({"generation": g, "origin": data.get("origin", "")}, data.get(key, 0))
                for g, data in remote.items()])
    family("remote_chunks_cached", "gauge", "Chunks of a file in this node's cache",
           [({"generation": g, "file": f}, n) for g, data in remote.items()
            for f, n in data.get("chunks_cached", {}).items()])
    family("remote_chunks", "gauge", "Chunks of a file in all",
           [({"generation": g, "file": f}, n) for g, data in remote.items()
            for f, n in data.get("chunks_total", {}).items()])
    family("remote_fetch_latency_ms", "gauge",
           "Round trip of the fetches clones waited for",
           [({"generation": g, "quantile": q}, data["fetch_latency_ms"][p])
            for g, data in remote.items() if "fetch_latency_ms" in data
            for q, p in (("0.5", "p50"), ("0.99", "p99"))])
    served = stats["origin"]["generations"]
    for key, name, help_text in SERVED_COUNTERS:
        family(name, "counter", help_text,
               [({"generation": g, "peer": peer}, counters.get(key, 0))
                for g, peers in served.items() for peer, counters in peers.items()])
    family("requests_refused_total", "counter",
           "Requests from peers refused or malformed",
           [({"reason": reason}, count)
            for reason, count in stats["origin"]["requests"].items()])
    return "\n".join(lines) + "\n"


async def serve(host: str, port: int,
                stats: Callable[[], dict[str, Any]]) -> asyncio.AbstractServer:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            method, path = [*request.split(b" "), b"", b""][:2]
            if method == b"GET" and path.split(b"?")[0] == b"/metrics":
                status, body = "200 OK", render(stats()).encode()
            else:
                status, body = "404 Not Found", b"try GET /metrics\n"
            writer.write(f"HTTP/1.0 {status}\r\nContent-Type: text/plain; version=0.0.4\r\n"
                         f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
            await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                asyncio.TimeoutError, ConnectionError) as exc:
            LOG.debug("Metrics request dropped: %s", exc)
        finally:
            writer.close()

    return await asyncio.start_server(handle, host, port, limit=MAX_REQUEST_BYTES)
