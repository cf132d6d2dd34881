"""Read-ahead for the sequential readers of a remote generation's files.

Clones read their memory mostly in ascending order (a guest's big
allocations are physically contiguous runs), so a reader found reading
chunk after chunk (``READ_AHEAD_AFTER_CHUNKS`` of them) gets the chunks
ahead of it fetched before it asks, with a window doubling up to
``max_chunks`` while the run goes on. Several interleaved readers (clones,
vCPUs) are followed apart.
"""

from __future__ import annotations

import asyncio
import dataclasses

from nova_clonedriver.pageserver import fetcher as fetcher_mod

READ_STREAMS_PER_FILE = 8  # sequential readers followed at once, per file
# A run of this many chunks before read-ahead starts: while a clone starts,
# its guest reads short runs (2-4 chunks) that read-ahead would overshoot.
READ_AHEAD_AFTER_CHUNKS = 5


@dataclasses.dataclass
class _ReadStream:
    """A sequential reader of one file: the last chunk it read, how far
    ahead of it to fetch, and up to where that was asked for already."""

    last_chunk: int
    run_chunks: int = 1
    window_chunks: int = 0
    ahead_until: int = -1


class ReadAhead:
    """:param max_chunks: the largest window; 0 turns read-ahead off."""

    def __init__(self, fetcher: fetcher_mod.ChunkFetcher, max_chunks: int) -> None:
        self.fetcher = fetcher
        self.max_chunks = max_chunks
        self._streams: dict[int, list[_ReadStream]] = {}  # most recent first
        self._tasks: set[asyncio.Task[None]] = set()

    def follow(self, file_number: int, first: int, last: int) -> None:
        """Follow the reader of chunks ``first``..``last``; once it reads
        sequentially, fetch the chunks ahead of it (not waited for)."""
        if not self.max_chunks:
            return
        streams = self._streams.setdefault(file_number, [])
        stream = next((s for s in streams if s.last_chunk in (first - 1, first)), None)
        if stream is None:  # a new reader, or a jump
            streams.insert(0, _ReadStream(last_chunk=last, run_chunks=last - first + 1))
            del streams[READ_STREAMS_PER_FILE:]
            return
        streams.remove(stream)
        streams.insert(0, stream)
        if last == stream.last_chunk:  # still in the same chunk
            return
        stream.run_chunks += last - stream.last_chunk
        stream.last_chunk = last
        if stream.run_chunks < READ_AHEAD_AFTER_CHUNKS:
            return
        stream.window_chunks = min(max(2 * stream.window_chunks, 2), self.max_chunks)
        # Keep the window nearly full (a request's worth short of it): a
        # reader faster than the link then never drains what is on its way.
        step = min(fetcher_mod.BULK_REQUEST_CHUNKS, max(1, stream.window_chunks // 2))
        if stream.ahead_until - last > stream.window_chunks - step:
            return  # enough is on its way
        end = min(last + stream.window_chunks, self.fetcher.files[file_number].chunk_count - 1)
        start = max(last, stream.ahead_until) + 1
        stream.ahead_until = max(stream.ahead_until, end)
        _, wanted = self.fetcher.claim(file_number, list(range(start, end + 1)), counted=False)
        if wanted:
            self.fetcher.stats.counters["chunks_read_ahead"] += len(wanted)
            task = asyncio.get_running_loop().create_task(
                self.fetcher.fetch(file_number, wanted, bulk=True)
            )
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def settle(self) -> None:
        """Return once no read-ahead is on its way."""
        while self._tasks:
            await asyncio.gather(*self._tasks)

    def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
