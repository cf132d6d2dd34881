"""The local cache of one file of a remote generation.

A sparse file as large as the origin's, filled chunk by chunk as chunks
arrive, and a map with one byte per chunk saying which are here. The cache
is what the FUSE file reads from, so every clone on the node shares what
one of them caused to be fetched, and no chunk is fetched twice.
"""

from __future__ import annotations

import os

from nova_clonedriver.engine import memimage


class CorruptChunk(ValueError):
    """A chunk from the origin does not match its checksum."""


class CachedFile:
    """:param checksums: per chunk (memory image); ``None`` for files without
    (disks), whose chunks TLS alone protects in transit."""

    def __init__(
        self, path: str, size_bytes: int, chunk_size_bytes: int, checksums: list[str | None] | None
    ) -> None:
        self.path = path
        self.size_bytes = size_bytes
        self.chunk_size_bytes = chunk_size_bytes
        self.checksums = checksums
        self.chunk_count = -(-size_bytes // chunk_size_bytes)
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        if os.fstat(self._fd).st_size != size_bytes:
            os.ftruncate(self._fd, size_bytes)
        self._map_fd = os.open(f"{path}.present", os.O_RDWR | os.O_CREAT, 0o600)
        self.present = bytearray(self.chunk_count)
        stored = os.pread(self._map_fd, self.chunk_count, 0)
        self.present[: len(stored)] = stored
        if checksums is not None:
            # Zero chunks need no fetch: the sparse file reads as zeros.
            for chunk, checksum in enumerate(checksums):
                if checksum is None:
                    self.present[chunk] = 1

    def missing(self) -> list[int]:
        return [c for c in range(self.chunk_count) if not self.present[c]]

    def cached_bytes(self) -> int:
        return os.fstat(self._fd).st_blocks * 512

    def store(self, chunk: int, data: bytes | bytearray | None) -> None:
        """Keep a chunk from the origin (``None``: all zeros), after checking
        it against its checksum; refuse (and keep nothing of) a bad one."""
        expected_bytes = min(
            self.chunk_size_bytes, self.size_bytes - chunk * self.chunk_size_bytes
        )
        if data is not None and len(data) != expected_bytes:
            raise CorruptChunk(
                f"chunk {chunk} of {self.path} has {len(data)} bytes, not {expected_bytes}"
            )
        if self.checksums is not None and not memimage.chunk_matches(
            bytes(expected_bytes) if data is None else data, self.checksums[chunk]
        ):
            raise CorruptChunk(f"chunk {chunk} of {self.path} fails its checksum")
        if data is not None:
            os.pwrite(self._fd, data, chunk * self.chunk_size_bytes)
        # Data first, then the mark: a crash in between costs a re-fetch.
        self.present[chunk] = 1
        os.pwrite(self._map_fd, b"\x01", chunk)

    def read(self, offset: int, size: int) -> bytes:
        return os.pread(self._fd, size, offset)

    def forget_unverifiable(self) -> int:
        """After a restart: drop marks that cannot be re-checked (chunks
        without checksums) and those whose data fails its checksum (the node
        lost power between writing data and mark). Returns how many."""
        dropped = 0
        for chunk in range(self.chunk_count):
            if not self.present[chunk]:
                continue
            if self.checksums is None:
                ok = False
            elif self.checksums[chunk] is None:
                continue
            else:
                data = self.read(chunk * self.chunk_size_bytes, self.chunk_size_bytes)
                ok = memimage.chunk_matches(data, self.checksums[chunk])
            if not ok:
                self.present[chunk] = 0
                os.pwrite(self._map_fd, b"\x00", chunk)
                dropped += 1
        return dropped

    def close(self) -> None:
        os.close(self._fd)
        os.close(self._map_fd)
