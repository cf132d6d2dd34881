"""Read-ahead of a remote generation's chunks for sequential readers.

The origin is a fake transport (the real one is tested against real page
services in tests/functional/test_pageserver.py); the cache and the
bookkeeping of chunks in flight are the real ones.
"""

from __future__ import annotations

import asyncio
import os
import types

import fixtures
import testtools

from nova_clonedriver.pageserver import cache
from nova_clonedriver.pageserver import presented as presented_mod
from nova_clonedriver.pageserver import readahead
from nova_clonedriver.pageserver import stats
from nova_clonedriver.pageserver import transport

CHUNK = 4096
CHUNKS = 64
DISK = 2  # a FETCH file number without checksums


class FakeOrigin:
    address = "origin.example:8797"

    def __init__(self) -> None:
        self.requests: list[list[int]] = []
        self.failing: set[int] = set()

    async def fetch(
        self, generation_id: str, file_number: int, chunks: list[int]
    ) -> dict[int, bytes]:
        self.requests.append(list(chunks))
        await asyncio.sleep(0.001)  # a round trip
        if self.failing & set(chunks):
            raise transport.Unavailable("origin gone for a moment")
        return {c: bytes([c]) * CHUNK for c in chunks}


class TestReadAhead(testtools.TestCase):
    def setUp(self):
        super().setUp()
        self.directory = self.useFixture(fixtures.TempDir()).path
        self.origin = FakeOrigin()

    def presented(self, readahead_max_chunks: int = 8) -> presented_mod.Presented:
        self.cached = cache.CachedFile(
            os.path.join(self.directory, "file-2"), CHUNKS * CHUNK, CHUNK, None
        )
        self.addCleanup(self.cached.close)
        return presented_mod.Presented(
            types.SimpleNamespace(id="gen"),
            self.origin,
            {DISK: self.cached},
            {"vda.qcow2": DISK},
            stats.GenerationStats(),
            readahead_max_chunks=readahead_max_chunks,
        )

    def read(self, presented: presented_mod.Presented, chunks: list[int]) -> dict[str, int]:
        """Read each chunk in turn as a clone would (through the FUSE file
        system's call, waiting for each), then let read-ahead settle; the
        counters."""

        async def reads():
            for chunk in chunks:
                self.assertEqual(
                    bytes([chunk]) * CHUNK, await presented.read("vda.qcow2", chunk * CHUNK, CHUNK)
                )
            await presented.readahead.settle()

        asyncio.run(reads())
        return presented.stats.counters

    def fetched(self) -> list[int]:
        return [c for request in self.origin.requests for c in request]

    def test_a_sequential_reader_waits_only_until_its_run_is_long_enough(self):
        counters = self.read(self.presented(), list(range(40)))
        self.assertEqual(
            readahead.READ_AHEAD_AFTER_CHUNKS,
            counters["chunks_fetched"] - counters["chunks_read_ahead"],
        )
        # Each chunk once, and ahead of the last read, but no further than
        # the window.
        furthest = max(self.fetched())
        self.assertEqual(list(range(furthest + 1)), sorted(self.fetched()))
        self.assertGreater(furthest, 39)
        self.assertLessEqual(furthest, 39 + 8)
        self.assertLessEqual(max(len(r) for r in self.origin.requests), 8)

    def test_jumps_fetch_nothing_ahead(self):
        counters = self.read(self.presented(), [0, 10, 20, 5, 30, 12, 50])
        self.assertEqual(0, counters["chunks_read_ahead"])
        self.assertEqual([0, 10, 20, 5, 30, 12, 50], self.fetched())

    def test_short_runs_fetch_nothing_ahead(self):
        # What a starting guest reads: runs of 2 to 4 chunks here and there.
        runs = [[0, 1, 2, 3], [40, 41], [20, 21, 22, 23], [50, 51, 52]]
        counters = self.read(self.presented(), [c for run in runs for c in run])
        self.assertEqual(0, counters["chunks_read_ahead"])

    def test_interleaved_readers_are_followed_apart(self):
        order = [c for pair in zip(range(0, 12), range(30, 42), strict=True) for c in pair]
        counters = self.read(self.presented(), order)
        self.assertEqual(
            2 * readahead.READ_AHEAD_AFTER_CHUNKS,
            counters["chunks_fetched"] - counters["chunks_read_ahead"],
        )

    def test_read_ahead_stops_at_the_end_of_the_file(self):
        self.read(self.presented(), list(range(CHUNKS - 8, CHUNKS)))
        self.assertEqual(list(range(CHUNKS - 8, CHUNKS)), sorted(self.fetched()))

    def test_zero_turns_it_off(self):
        counters = self.read(self.presented(readahead_max_chunks=0), list(range(10)))
        self.assertEqual(0, counters["chunks_read_ahead"])
        self.assertEqual([[c] for c in range(10)], self.origin.requests)

    def test_a_failed_read_ahead_is_fetched_again_when_read(self):
        run = list(range(readahead.READ_AHEAD_AFTER_CHUNKS))
        ahead = [run[-1] + 1, run[-1] + 2]
        self.origin.failing = {ahead[1]}
        presented = self.presented()
        self.read(presented, run)  # the two chunks after it read ahead: that fails
        self.assertEqual(ahead, self.origin.requests[-1])
        self.assertFalse(self.cached.present[ahead[1]])
        self.assertEqual(1, presented.stats.counters["fetch_failures"])
        self.origin.failing = set()
        self.read(presented, ahead)
        self.assertTrue(self.cached.present[ahead[1]])
