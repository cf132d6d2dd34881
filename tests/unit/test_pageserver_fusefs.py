"""The FUSE file system's inode numbers: the same file has the same number
in every run of the page service, so that a restarted service answers for
inodes the kernel learned from the one before."""

from __future__ import annotations

import asyncio
import errno
import types

import pyfuse3
import testtools

from nova_clonedriver.pageserver import fusefs
from nova_clonedriver.pageserver import presented as presented_mod

GENERATION = "a" * 32
OTHER = "b" * 32


class FakePresented:
    def __init__(self, generation_id, files):
        self.generation = types.SimpleNamespace(id=generation_id)
        self.files = files
        self.open_handles = 0

    def attributes(self, name):
        return presented_mod.FileAttributes(size_bytes=1 << 20, cached_bytes=0, created_ns=0)

    def file_names(self):
        return sorted(self.files)

    def has_file(self, name):
        return name in self.files

    def opened(self, count=1):
        self.open_handles += count


class FakeRemote:
    def __init__(self, generations):
        self.generations = generations

    def get(self, generation_id):
        return self.generations.get(generation_id)

    def generation_ids(self):
        return sorted(self.generations)


class TestInodes(testtools.TestCase):
    def setUp(self):
        super().setUp()
        self.remote = FakeRemote(
            {
                GENERATION: FakePresented(GENERATION, ["memory.img", "vda.qcow2"]),
                OTHER: FakePresented(OTHER, ["memory.img"]),
            }
        )

    def lookup(self, file_system, generation_id, name):
        async def walk():
            directory = await file_system.lookup(pyfuse3.ROOT_INODE, generation_id.encode())
            return (await file_system.lookup(directory.st_ino, name.encode())).st_ino

        return asyncio.run(walk())

    def test_the_same_file_has_the_same_inode_in_every_run(self):
        first_run = fusefs.PagesFS(self.remote, (0, 0))
        second_run = fusefs.PagesFS(self.remote, (0, 0))
        inodes = {
            (g, n): self.lookup(first_run, g, n)
            for g, n in [
                (GENERATION, "memory.img"),
                (GENERATION, "vda.qcow2"),
                (OTHER, "memory.img"),
            ]
        }
        self.assertEqual(3, len(set(inodes.values())))
        self.assertNotIn(pyfuse3.ROOT_INODE, inodes.values())
        for (generation_id, name), inode in inodes.items():
            self.assertEqual(inode, self.lookup(second_run, generation_id, name))

    def test_a_new_run_serves_inodes_it_never_handed_out(self):
        inode = self.lookup(fusefs.PagesFS(self.remote, (0, 0)), GENERATION, "vda.qcow2")
        restarted = fusefs.PagesFS(self.remote, (0, 0))
        self.assertEqual(inode, asyncio.run(restarted.getattr(inode)).st_ino)
        restarted.restore_open_files({inode: 2, 12345: 1})  # the latter: not presented
        self.assertEqual(2, self.remote.generations[GENERATION].open_handles)
        error = self.assertRaises(pyfuse3.FUSEError, asyncio.run, restarted.getattr(12345))
        self.assertEqual(errno.ENOENT, error.errno)
