"""One remote generation presented on this node: its files as the FUSE file
system serves them.

Each read the FUSE file system gets turns into ``read()`` here, which makes
sure the chunks it covers are in the node's cache (fetching what is missing,
once however many clones ask), follows the reader for read-ahead and, while
the generation's working set is being recorded, records what was read.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import time
from typing import Any

from nova_clonedriver.engine import store as store_mod
from nova_clonedriver.pageserver import cache as cache_mod
from nova_clonedriver.pageserver import fetcher as fetcher_mod
from nova_clonedriver.pageserver import protocol
from nova_clonedriver.pageserver import readahead as readahead_mod
from nova_clonedriver.pageserver import stats as stats_mod
from nova_clonedriver.pageserver import transport
from nova_clonedriver.pageserver import workingset


@dataclasses.dataclass(frozen=True)
class FileAttributes:
    """What ``stat`` of a presented file shows."""

    size_bytes: int
    cached_bytes: int
    created_ns: int


class Presented:
    """:param files: the cached files by FETCH file number (the device state
        is a plain local file, so it has none).
    :param names: file name in the FUSE folder -> FETCH file number."""

    def __init__(
        self,
        generation: store_mod.Generation,
        origin: transport.Transport,
        files: dict[int, cache_mod.CachedFile],
        names: dict[str, int],
        stats: stats_mod.GenerationStats,
        readahead_max_chunks: int,
    ) -> None:
        self.generation = generation
        self.origin = origin
        self.stats = stats
        self._files = files
        self._names = names
        self.fetcher = fetcher_mod.ChunkFetcher(generation.id, origin, files, stats)
        self.readahead = readahead_mod.ReadAhead(self.fetcher, readahead_max_chunks)
        self.recorder: workingset.WorkingSetRecorder | None = None
        # The registry's bookkeeping (remote.py).
        self.told_clones: list[str] | None = None
        self.open_handles = 0  # FUSE opens: QEMU processes mapping its files
        self.attaching = 0  # attach calls (prefetches) under way
        self.last_used = time.monotonic()
        self.background: asyncio.Task[None] | None = None  # completion, if any

    # What the FUSE file system asks.

    def file_names(self) -> list[str]:
        return sorted(self._names)

    def has_file(self, name: str) -> bool:
        return name in self._names

    def attributes(self, name: str) -> FileAttributes:
        cached = self._files[self._names[name]]
        return FileAttributes(
            size_bytes=cached.size_bytes,
            cached_bytes=cached.cached_bytes(),
            created_ns=int(os.stat(self.generation.device_stream).st_mtime_ns),
        )

    def opened(self, count: int = 1) -> None:
        self.open_handles += count

    def closed(self) -> None:
        self.open_handles -= 1

    async def read(self, name: str, offset: int, size: int) -> bytes:
        """Up to ``size`` bytes at ``offset``; raises transport.Unavailable,
        transport.Refused or cache.CorruptChunk when they cannot be had."""
        file_number = self._names[name]
        cached = self._files[file_number]
        end = min(offset + size, cached.size_bytes)
        if offset >= end:
            return b""
        first = offset // cached.chunk_size_bytes
        last = (end - 1) // cached.chunk_size_bytes
        await self.ensure(file_number, list(range(first, last + 1)))
        return cached.read(offset, end - offset)

    # What the registry asks.

    def busy(self) -> bool:
        """Whether files are open, chunks on their way or an attach under way."""
        return bool(self.open_handles or self.fetcher.busy() or self.attaching)

    def record_working_set(self, window_s: float) -> None:
        """Record what this node's first clones read in their first
        ``window_s`` and send it to the origin."""
        self.recorder = workingset.WorkingSetRecorder(self.generation.id, self.origin, window_s)

    def missing(self) -> dict[int, list[int]]:
        """The chunks not cached yet, by FETCH file number."""
        return {number: cached.missing() for number, cached in self._files.items()}

    def chunk_size_bytes(self, file_number: int) -> int:
        return self._files[file_number].chunk_size_bytes

    def forget_unverifiable(self) -> int:
        """After a restart: cached chunks to fetch again (cache.py)."""
        return sum(cached.forget_unverifiable() for cached in self._files.values())

    def cache_json(self) -> dict[str, Any]:
        files = {name: self._files[number] for name, number in self._names.items()}
        return {
            "origin": self.origin.address,
            "chunks_cached": {name: sum(f.present) for name, f in files.items()},
            "chunks_total": {name: f.chunk_count for name, f in files.items()},
            "cached_mib": round(sum(f.cached_bytes() for f in files.values()) / 2**20, 1),
        }

    async def ensure(self, file_number: int, chunks: list[int], bulk: bool = False) -> None:
        """Return once all ``chunks`` of the file are in the cache; raises
        as ``read`` does. ``bulk`` (prefetch, background completion): many
        chunks, not a clone's read (no read-ahead, no latency samples)."""
        self.last_used = time.monotonic()
        waits, wanted = self.fetcher.claim(file_number, chunks)
        if wanted and file_number == protocol.MEMORY_FILE and self.recorder is not None:
            self.recorder.record(wanted)
        # The fetch of what is read is queued before read-ahead's, so that
        # its request goes first.
        fetching = (
            asyncio.ensure_future(self.fetcher.fetch(file_number, wanted, bulk))
            if wanted
            else None
        )
        if not bulk:
            self.readahead.follow(file_number, chunks[0], chunks[-1])
        if fetching is not None:
            await fetching
        for future in waits:
            await future

    def close(self) -> None:
        if self.background is not None:
            self.background.cancel()
        self.readahead.close()
        for cached in self._files.values():
            cached.close()
