"""The page-addressable memory image of a snapshot generation.

A flat file as large as the guest's RAM, holding page N at offset
N * 4096. It is sparse: pages the guest never wrote are holes and cost no
disk. Clones map it privately (copy-on-write), so pages no clone wrote stay
shared in the host page cache. Every chunk has a SHA-256 checksum so a
damaged image is refused instead of booting a corrupt guest.
"""

from __future__ import annotations

import ctypes
import hashlib
import mmap
import os

from nova_clonedriver.engine.migstream import PAGE_SIZE_BYTES

CHUNK_SIZE_BYTES = 1 << 20
_COALESCE_MAX_BYTES = 1 << 20
_ZERO_PAGE = bytes(PAGE_SIZE_BYTES)


class MemoryImageWriter:
    """Receives pages in any order, several times each (pre-copy re-sends
    pages the guest dirtied); the last copy of a page wins."""

    def __init__(self, path: str, size_bytes: int) -> None:
        self.path = path
        self.size_bytes = size_bytes
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        os.ftruncate(self._fd, size_bytes)
        self._has_data = bytearray(size_bytes // PAGE_SIZE_BYTES)
        self._run_offset = 0
        self._run: list[bytes] = []

    def write_page(self, offset: int, data: bytes) -> None:
        run_end = self._run_offset + len(self._run) * PAGE_SIZE_BYTES
        if self._run and (
            offset != run_end or len(self._run) * PAGE_SIZE_BYTES >= _COALESCE_MAX_BYTES
        ):
            self._flush()
        if not self._run:
            self._run_offset = offset
        self._run.append(data)
        self._has_data[offset // PAGE_SIZE_BYTES] = 1

    def zero_page(self, offset: int) -> None:
        page = offset // PAGE_SIZE_BYTES
        if self._has_data[page]:
            # A page sent earlier with data and zero now: zero it on disk.
            self.write_page(offset, _ZERO_PAGE)

    def _flush(self) -> None:
        if self._run:
            os.pwrite(self._fd, b"".join(self._run), self._run_offset)
            self._run = []

    def close(self) -> list[str | None]:
        """Flush, sync, and return the chunk checksums (``None``: all zero)."""
        self._flush()
        os.fsync(self._fd)
        per_chunk = CHUNK_SIZE_BYTES // PAGE_SIZE_BYTES
        checksums: list[str | None] = []
        for chunk in range(chunk_count(self.size_bytes)):
            pages = self._has_data[chunk * per_chunk : (chunk + 1) * per_chunk]
            if any(pages):
                data = os.pread(self._fd, CHUNK_SIZE_BYTES, chunk * CHUNK_SIZE_BYTES)
                checksums.append(hashlib.sha256(data).hexdigest())
            else:
                checksums.append(None)
        os.close(self._fd)
        return checksums


def chunk_count(size_bytes: int) -> int:
    return (size_bytes + CHUNK_SIZE_BYTES - 1) // CHUNK_SIZE_BYTES


def find_bad_chunks(path: str, checksums: list[str | None]) -> list[int]:
    """Chunks whose content does not match ``checksums``."""
    bad = []
    with open(path, "rb") as image:
        for index, expected in enumerate(checksums):
            if not chunk_matches(image.read(CHUNK_SIZE_BYTES), expected):
                bad.append(index)
    return bad


def chunk_matches(data: bytes | bytearray, expected: str | None) -> bool:
    """Whether a chunk's bytes are those its checksum (``None``: zeros) says."""
    if expected is None:
        return data.count(0) == len(data)
    return hashlib.sha256(data).hexdigest() == expected


_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [
    ctypes.c_void_p,
    ctypes.c_size_t,
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_long,
]
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
_MAP_FAILED = ctypes.c_void_p(-1).value


def resident_bytes(path: str) -> int:
    """How much of the file is in the host page cache (mincore(2))."""
    size = os.path.getsize(path)
    if size == 0:
        return 0
    fd = os.open(path, os.O_RDONLY)
    try:
        address = _libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        if address == _MAP_FAILED:
            raise OSError(ctypes.get_errno(), f"mmap of {path} failed")
        try:
            pages = (size + mmap.PAGESIZE - 1) // mmap.PAGESIZE
            vec = (ctypes.c_ubyte * pages)()
            if _libc.mincore(address, size, vec) != 0:
                raise OSError(ctypes.get_errno(), f"mincore of {path} failed")
            flags = bytes(vec)
            return (len(flags) - flags.count(0)) * mmap.PAGESIZE
        finally:
            _libc.munmap(address, size)
    finally:
        os.close(fd)
