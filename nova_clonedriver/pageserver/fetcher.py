"""Fetching a remote generation's chunks into the node's cache, each once.

However many clones (or read-ahead, or a prefetch) ask for a chunk while it
is on its way, one request goes to the origin and everyone waits for the
same future. A chunk is marked present only after the cache checked it.
"""

from __future__ import annotations

import asyncio
import logging
import time

from nova_clonedriver.pageserver import cache as cache_mod
from nova_clonedriver.pageserver import protocol
from nova_clonedriver.pageserver import stats as stats_mod
from nova_clonedriver.pageserver import transport

LOG = logging.getLogger(__name__)

# Per FETCH of a prefetch or read-ahead: several in flight at once, spread
# over the connections to the origin.
BULK_REQUEST_CHUNKS = 4


class ChunkFetcher:
    def __init__(
        self,
        generation_id: str,
        origin: transport.Transport,
        files: dict[int, cache_mod.CachedFile],
        stats: stats_mod.GenerationStats,
    ) -> None:
        self.generation_id = generation_id
        self.origin = origin
        self.files = files
        self.stats = stats
        self._inflight: dict[tuple[int, int], asyncio.Future[None]] = {}

    def busy(self) -> bool:
        """Whether chunks are on their way."""
        return bool(self._inflight)

    def claim(
        self, file_number: int, chunks: list[int], counted: bool = True
    ) -> tuple[list[asyncio.Future[None]], list[int]]:
        """The futures to wait for until ``chunks`` are cached, and the
        chunks nobody fetches yet (the caller must ``fetch`` them).
        ``counted``: a clone asked for them (cache hits and waits go into
        the stats)."""
        cached = self.files[file_number]
        waits: list[asyncio.Future[None]] = []
        wanted: list[int] = []
        for chunk in chunks:
            if cached.present[chunk]:
                self.stats.counters["cache_hits"] += counted
            elif (file_number, chunk) in self._inflight:
                self.stats.counters["waits_on_inflight_fetch"] += counted
                waits.append(self._inflight[(file_number, chunk)])
            else:
                future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
                self._inflight[(file_number, chunk)] = future
                waits.append(future)
                wanted.append(chunk)
        return waits, wanted

    async def fetch(self, file_number: int, chunks: list[int], bulk: bool) -> None:
        """Fetch claimed ``chunks`` and settle their futures (with the error,
        if that fails). ``bulk``: several pipelined requests, kept out of the
        latency samples (those are of the reads clones wait for)."""
        step = BULK_REQUEST_CHUNKS if bulk else protocol.MAX_CHUNKS_PER_FETCH
        await asyncio.gather(
            *(
                self._fetch_one_request(file_number, chunks[i : i + step], bulk)
                for i in range(0, len(chunks), step)
            )
        )

    async def _fetch_one_request(self, file_number: int, chunks: list[int], bulk: bool) -> None:
        cached = self.files[file_number]
        loop = asyncio.get_running_loop()
        started = time.monotonic()
        try:
            data = await self.origin.fetch(self.generation_id, file_number, chunks)
        except Exception as exc:
            self.stats.counters["fetch_failures"] += 1
            LOG.error(
                "Fetching %d chunk(s) of file %d of %s from %s failed: %s",
                len(chunks),
                file_number,
                self.generation_id,
                self.origin.address,
                exc,
            )
            for chunk in chunks:
                self._settle(file_number, chunk, exc)
            return
        if not bulk:
            self.stats.fetch_latency_ms.append((time.monotonic() - started) * 1000)
        # Checksums and writes off the loop, the chunks of a request side by
        # side: hashing and writing release the GIL.
        results = await asyncio.gather(
            *(loop.run_in_executor(None, cached.store, chunk, data[chunk]) for chunk in chunks),
            return_exceptions=True,
        )
        for chunk, result in zip(chunks, results, strict=True):
            if isinstance(result, BaseException):
                if not isinstance(result, Exception):
                    raise result
                self.stats.counters["fetch_failures"] += 1
                LOG.error(
                    "Chunk %d of file %d of %s from %s refused: %s",
                    chunk,
                    file_number,
                    self.generation_id,
                    self.origin.address,
                    result,
                )
                self._settle(file_number, chunk, result)
                continue
            self.stats.counters["chunks_fetched"] += 1
            self.stats.counters["bytes_fetched"] += len(data[chunk] or b"")
            self._settle(file_number, chunk)

    def _settle(self, file_number: int, chunk: int, error: Exception | None = None) -> None:
        future = self._inflight.pop((file_number, chunk))
        if error is None:
            future.set_result(None)
        else:
            future.set_exception(error)
            future.exception()  # retrieved: its waiters may all be gone
