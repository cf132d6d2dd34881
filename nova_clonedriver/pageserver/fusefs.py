"""The FUSE file system that presents remote generations as local files.

``<mount>/<generation id>/memory.img`` and ``<mount>/<generation id>/<disk
base>``: read-only files whose reads are served from the node's cache,
after fetching what is missing from the origin. The kernel keeps what was
read in its page cache (``keep_cache``), so clones mapping the same file
privately share those pages, as they share a local image's.

QEMU opens a memory backend file read-write even for a private mapping, so
opens for writing are allowed and writes refused. libvirt may chown disk
images it hands to QEMU; attribute changes are accepted and ignored. The
files belong to QEMU's user with mode 0600, and the kernel enforces that.

Inode numbers are a hash of the generation id and file name, so that a
restarted page service answers for the inodes the kernel (and the FUSE
front, fusefront.py) learned from the one before.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import stat
from typing import Any

import pyfuse3

from nova_clonedriver.pageserver import presented as presented_mod
from nova_clonedriver.pageserver import remote as remote_mod

LOG = logging.getLogger(__name__)

ROOT_INODE = pyfuse3.ROOT_INODE
ATTR_TIMEOUT_S = 1.0


class PagesFS(pyfuse3.Operations):
    """:param owner: (uid, gid) of QEMU's user: its files are that user's
    alone (mode 0600, checked by the kernel: ``default_permissions``),
    as a local generation's memory image is; the mount is
    ``allow_other`` only so that QEMU may open them at all."""

    def __init__(self, remote: remote_mod.RemoteGenerations, owner: tuple[int, int]) -> None:
        super().__init__()
        self.remote = remote
        self.owner = owner
        # (generation id, file name or "") of the inodes handed out.
        self._paths: dict[int, tuple[str, str]] = {}

    def _inode(self, generation_id: str, name: str) -> int:
        """The same number for the same file, in every run of the service."""
        digest = hashlib.sha256(f"{generation_id}/{name}".encode()).digest()
        inode = (int.from_bytes(digest[:8], "big") >> 2) + ROOT_INODE + 1
        known = self._paths.setdefault(inode, (generation_id, name))
        if known != (generation_id, name):
            LOG.error("Inode %d of %s/%s is taken by %s/%s", inode, generation_id, name, *known)
            raise pyfuse3.FUSEError(errno.EIO)
        return inode

    def _learn_inodes(self) -> None:
        """The inodes of every presented file: after a restart the kernel
        asks for inodes that no lookup of this run handed out."""
        for generation_id in self.remote.generation_ids():
            self._inode(generation_id, "")
            presented = self.remote.get(generation_id)
            for name in presented.file_names() if presented is not None else []:
                self._inode(generation_id, name)

    def restore_open_files(self, open_files: dict[int, int]) -> None:
        """Count the opens clones made before this run (inode -> count, as
        the FUSE front saw them), so their generations count as in use."""
        for inode, count in open_files.items():
            try:
                presented, _ = self._resolve(inode)
            except pyfuse3.FUSEError:
                LOG.warning("%d open file(s) of inode %d, which is not presented", count, inode)
                continue
            presented.opened(count)

    def _resolve(self, inode: int) -> tuple[presented_mod.Presented, str]:
        if inode not in self._paths:
            self._learn_inodes()
        if inode not in self._paths:
            raise pyfuse3.FUSEError(errno.ENOENT)
        generation_id, name = self._paths[inode]
        presented = self.remote.get(generation_id)
        if presented is None or (name and not presented.has_file(name)):
            raise pyfuse3.FUSEError(errno.ENOENT)
        return presented, name

    def _attributes(self, inode: int) -> pyfuse3.EntryAttributes:
        attrs = pyfuse3.EntryAttributes()
        attrs.st_ino = inode
        attrs.st_uid, attrs.st_gid = self.owner
        attrs.entry_timeout = attrs.attr_timeout = ATTR_TIMEOUT_S
        attrs.st_blksize = 4096
        name = ""
        if inode != ROOT_INODE:
            presented, name = self._resolve(inode)
        if not name:
            attrs.st_mode = stat.S_IFDIR | 0o711  # no listing of generations
            attrs.st_nlink = 2
            return attrs
        file_attributes = presented.attributes(name)
        attrs.st_mode = stat.S_IFREG | 0o600  # tenant memory: QEMU's user only
        attrs.st_nlink = 1
        attrs.st_size = file_attributes.size_bytes
        attrs.st_blocks = file_attributes.cached_bytes // 512
        attrs.st_atime_ns = attrs.st_mtime_ns = attrs.st_ctime_ns = file_attributes.created_ns
        return attrs

    async def getattr(self, inode: int, ctx: Any = None) -> pyfuse3.EntryAttributes:
        return self._attributes(inode)

    async def setattr(
        self, inode: int, attr: Any, fields: Any, fh: Any, ctx: Any
    ) -> pyfuse3.EntryAttributes:
        if fields.update_size:
            raise pyfuse3.FUSEError(errno.EROFS)
        return self._attributes(inode)

    async def lookup(
        self, parent_inode: int, name: bytes, ctx: Any = None
    ) -> pyfuse3.EntryAttributes:
        decoded = os.fsdecode(name)
        if parent_inode == ROOT_INODE:
            if self.remote.get(decoded) is None:
                raise pyfuse3.FUSEError(errno.ENOENT)
            return self._attributes(self._inode(decoded, ""))
        presented, parent_name = self._resolve(parent_inode)
        if parent_name or not presented.has_file(decoded):
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self._attributes(self._inode(presented.generation.id, decoded))

    async def opendir(self, inode: int, ctx: Any) -> int:
        if inode != ROOT_INODE:
            _, name = self._resolve(inode)
            if name:
                raise pyfuse3.FUSEError(errno.ENOTDIR)
        return inode

    async def readdir(self, fh: int, start_id: int, token: Any) -> None:
        if fh == ROOT_INODE:
            entries = [(g, self._inode(g, "")) for g in self.remote.generation_ids()]
        else:
            presented, _ = self._resolve(fh)
            generation_id = presented.generation.id
            entries = [(n, self._inode(generation_id, n)) for n in presented.file_names()]
        for index, (name, inode) in enumerate(entries[start_id:], start_id + 1):
            if not pyfuse3.readdir_reply(token, os.fsencode(name), self._attributes(inode), index):
                break

    async def open(self, inode: int, flags: int, ctx: Any) -> pyfuse3.FileInfo:
        presented, name = self._resolve(inode)
        if not name:
            raise pyfuse3.FUSEError(errno.EISDIR)
        if flags & os.O_TRUNC:
            raise pyfuse3.FUSEError(errno.EROFS)
        presented.opened()
        return pyfuse3.FileInfo(fh=inode, keep_cache=True)

    async def read(self, fh: int, offset: int, size: int) -> bytes:
        presented, name = self._resolve(fh)
        try:
            return await presented.read(name, offset, size)
        except Exception as exc:
            LOG.error("Read of %s/%s at %d failed: %s", presented.generation.id, name, offset, exc)
            raise pyfuse3.FUSEError(errno.EIO) from None

    async def write(self, fh: int, offset: int, buf: bytes) -> int:
        raise pyfuse3.FUSEError(errno.EROFS)

    async def release(self, fh: int) -> None:
        try:
            presented, _ = self._resolve(fh)
        except pyfuse3.FUSEError:
            return  # its generation is gone
        presented.closed()

    async def access(self, inode: int, mode: int, ctx: Any) -> bool:
        return True

    async def statfs(self, ctx: Any) -> pyfuse3.StatvfsData:
        data = pyfuse3.StatvfsData()
        data.f_bsize = data.f_frsize = 4096
        data.f_namemax = 255
        return data
