"""Counters of the page service, per generation (and per peer at origins)."""

from __future__ import annotations

import collections
import statistics
import threading
import typing
from typing import Any
from typing import Literal

LATENCY_SAMPLES = 10000
# What an origin counts of the requests of all peers: shown even at 0, so
# an operator sees that nothing was refused rather than nothing at all.
OriginCounter = Literal["refused_handshakes", "refused_requests", "malformed_requests"]
ORIGIN_REQUEST_COUNTERS: tuple[OriginCounter, ...] = typing.get_args(OriginCounter)


class GenerationStats:
    """What one node did for one generation presented on it."""

    def __init__(self) -> None:
        self.counters: collections.Counter[str] = collections.Counter()
        self.fetch_latency_ms: collections.deque[float] = collections.deque(maxlen=LATENCY_SAMPLES)

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = dict(self.counters)
        samples = sorted(self.fetch_latency_ms)
        if samples:
            data["fetch_latency_ms"] = {
                "p50": round(statistics.median(samples), 2),
                "p99": round(samples[min(len(samples) - 1, int(len(samples) * 0.99))], 2),
                "samples": len(samples),
            }
        return data


class Stats:
    """The origin's counters are counted by its connections' threads; the
    remote ones on the event loop."""

    def __init__(self) -> None:
        self.remote: dict[str, GenerationStats] = collections.defaultdict(GenerationStats)
        self.origin: collections.Counter[str] = collections.Counter()
        # generation -> peer -> counters
        self.served_to: dict[str, dict[str, collections.Counter[str]]] = collections.defaultdict(
            lambda: collections.defaultdict(collections.Counter)
        )
        self._origin_lock = threading.Lock()
        # generation -> chunks, bytes, complete: this node's publications
        # to the object store (publish.py)
        self.published: dict[str, dict[str, Any]] = {}

    def count_origin(self, what: OriginCounter) -> None:
        with self._origin_lock:
            self.origin[what] += 1

    def served(self, generation_id: str, peer: str, nbytes: int) -> None:
        with self._origin_lock:
            counters = self.served_to[generation_id][peer]
            counters["chunks_served"] += 1
            counters["bytes_served"] += nbytes
            if not nbytes:
                counters["zero_chunks_served"] += 1

    def to_json(self) -> dict[str, Any]:
        with self._origin_lock:
            origin = {
                "requests": {k: self.origin[k] for k in ORIGIN_REQUEST_COUNTERS},
                "generations": {
                    g: {p: dict(c) for p, c in peers.items()}
                    for g, peers in self.served_to.items()
                },
            }
        return {
            "origin": origin,
            "remote": {g: s.to_json() for g, s in self.remote.items()},
            "published": {g: dict(p) for g, p in list(self.published.items())},
        }
