"""The chunk cache of a remote generation's file."""

from __future__ import annotations

import hashlib
import os

import fixtures
import testtools

from nova_clonedriver.pageserver import cache

CHUNK = 4096


class TestCachedFile(testtools.TestCase):
    def setUp(self):
        super().setUp()
        self.path = os.path.join(self.useFixture(fixtures.TempDir()).path, "file-0")
        self.data = [os.urandom(CHUNK), bytes(CHUNK), os.urandom(CHUNK), os.urandom(100)]
        self.checksums = [
            hashlib.sha256(self.data[0]).hexdigest(),
            None,
            hashlib.sha256(self.data[2]).hexdigest(),
            hashlib.sha256(self.data[3]).hexdigest(),
        ]
        self.size = 3 * CHUNK + 100

    def cached(self, checksums="memory"):
        return cache.CachedFile(
            self.path, self.size, CHUNK, self.checksums if checksums == "memory" else None
        )

    def test_zero_chunks_need_no_fetch_and_others_do(self):
        cached = self.cached()
        self.assertEqual([0, 2, 3], cached.missing())
        self.assertEqual(bytes(CHUNK), cached.read(CHUNK, CHUNK))

    def test_good_chunks_are_kept_and_bad_ones_refused(self):
        cached = self.cached()
        cached.store(0, self.data[0])
        cached.store(3, self.data[3])  # the short last chunk
        self.assertEqual(self.data[0], cached.read(0, CHUNK))
        self.assertEqual(self.data[3], cached.read(3 * CHUNK, 100))
        error = self.assertRaises(cache.CorruptChunk, cached.store, 2, os.urandom(CHUNK))
        self.assertIn("fails its checksum", str(error))
        self.assertRaises(cache.CorruptChunk, cached.store, 2, None)  # not a zero chunk
        self.assertRaises(cache.CorruptChunk, cached.store, 2, self.data[2][:-1])
        self.assertEqual([2], cached.missing())
        self.assertEqual(bytes(CHUNK), cached.read(2 * CHUNK, CHUNK))

    def test_marks_survive_a_reopen_and_damaged_data_is_dropped(self):
        cached = self.cached()
        cached.store(0, self.data[0])
        cached.store(2, self.data[2])
        cached.close()
        with open(self.path, "r+b") as f:  # power loss: mark written, data not
            f.seek(2 * CHUNK)
            f.write(bytes(CHUNK))
        reopened = self.cached()
        self.assertEqual([3], reopened.missing())
        self.assertEqual(1, reopened.forget_unverifiable())
        self.assertEqual([2, 3], reopened.missing())
        self.assertEqual(self.data[0], reopened.read(0, CHUNK))

    def test_chunks_without_checksums_are_forgotten_after_a_restart(self):
        cached = self.cached(checksums=None)
        self.assertEqual([0, 1, 2, 3], cached.missing())
        cached.store(1, None)
        cached.store(0, self.data[0])
        cached.close()
        reopened = self.cached(checksums=None)
        self.assertEqual([2, 3], reopened.missing())
        self.assertEqual(2, reopened.forget_unverifiable())
        self.assertEqual([0, 1, 2, 3], reopened.missing())
