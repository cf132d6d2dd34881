"""Split a QEMU migration stream into guest RAM pages and device state.

A clone must not copy its master's RAM, so bless takes the master's
migration stream apart: the pages of the main RAM block go into a sparse,
page-addressable memory image (which clones map privately), and everything
else - the device state and the small ROM/firmware blocks - becomes a
"device stream" that a clone's QEMU loads on restore. In that stream the main
block is renamed to the clone's file-backed RAM backend, whose contents are
already in place, so no page of it is sent.

The format is QEMU's (migration/savevm.c, migration/ram.c in QEMU 7.2):
a ``QEVM`` header, a configuration section, the iterable ``ram`` section
(START, PART..., END; each a list of page records ending with an EOS flag,
followed by a section footer), then the non-iterable device sections, which
are copied untouched.
"""

from __future__ import annotations

import io
import struct
from typing import BinaryIO
from typing import Protocol

QEMU_VM_FILE_MAGIC = b"QEVM"
QEMU_VM_FILE_VERSION = 3

QEMU_VM_EOF = 0x00
QEMU_VM_SECTION_START = 0x01
QEMU_VM_SECTION_PART = 0x02
QEMU_VM_SECTION_END = 0x03
QEMU_VM_SECTION_FULL = 0x04
QEMU_VM_CONFIGURATION = 0x07
QEMU_VM_SECTION_FOOTER = 0x7E

RAM_SAVE_FLAG_ZERO = 0x02
RAM_SAVE_FLAG_MEM_SIZE = 0x04
RAM_SAVE_FLAG_PAGE = 0x08
RAM_SAVE_FLAG_EOS = 0x10
RAM_SAVE_FLAG_CONTINUE = 0x20
RAM_SAVE_FLAGS_SUPPORTED = (
    RAM_SAVE_FLAG_ZERO | RAM_SAVE_FLAG_PAGE | RAM_SAVE_FLAG_EOS | RAM_SAVE_FLAG_CONTINUE
)

PAGE_SIZE_BYTES = 4096
_FLAGS_MASK = PAGE_SIZE_BYTES - 1
_BE64 = struct.Struct(">Q")
_BE32 = struct.Struct(">I")


class StreamError(Exception):
    """The stream is not one this module can split (truncated, or a feature
    such as compression or postcopy that bless never enables)."""


class PageSink(Protocol):
    """Where the main RAM block's pages go (see memimage.MemoryImageWriter)."""

    def write_page(self, offset: int, data: bytes) -> None: ...

    def zero_page(self, offset: int) -> None: ...


class _Reader:
    def __init__(self, source: BinaryIO) -> None:
        self._source = source

    def exact(self, size: int) -> bytes:
        data = self._source.read(size)
        if data is None or len(data) != size:
            raise StreamError("migration stream ended early")
        return data

    def u8(self) -> int:
        return self.exact(1)[0]

    def be32(self) -> int:
        return int(_BE32.unpack(self.exact(4))[0])

    def be64(self) -> int:
        return int(_BE64.unpack(self.exact(8))[0])

    def idstr(self) -> bytes:
        return self.exact(self.u8())

    def rest(self) -> bytes:
        return self._source.read()


def _idstr(name: bytes) -> bytes:
    return bytes([len(name)]) + name


class StreamSplitter:
    """Reads one migration stream and splits it as the module doc says.

    :param main_block: the RAM block whose pages go to ``sink``; ``None``
        picks the largest block in the stream's block list.
    :param renamed_block: the name the main block gets in the device stream
        (the id of the clone's file-backed memory backend).
    """

    def __init__(
        self,
        sink: PageSink,
        device_out: BinaryIO,
        renamed_block: bytes,
        main_block: bytes | None = None,
    ) -> None:
        self._sink = sink
        self._out = device_out
        self._renamed = renamed_block
        self.main_block = main_block
        self.main_block_size_bytes = 0
        self.machine_type = ""
        self.pages_written = 0
        self.pages_zero = 0
        self._ram_section_id: int | None = None
        self._record_block: bytes | None = None  # block of the last record read
        self._emitted_block: bytes | None = None  # ... and of the last one kept

    def split(self, source: BinaryIO) -> None:
        """Consume ``source`` to its end."""
        reader = _Reader(source)
        if reader.exact(4) != QEMU_VM_FILE_MAGIC:
            raise StreamError("not a QEMU migration stream (no QEVM magic)")
        version = reader.be32()
        if version != QEMU_VM_FILE_VERSION:
            raise StreamError(f"unsupported migration stream version {version}")
        self._out.write(QEMU_VM_FILE_MAGIC + _BE32.pack(version))
        while True:
            kind = reader.u8()
            if kind == QEMU_VM_CONFIGURATION:
                name = reader.exact(reader.be32())
                self.machine_type = name.decode()
                self._out.write(bytes([kind]) + _BE32.pack(len(name)) + name)
            elif kind == QEMU_VM_SECTION_START:
                self._ram_start(reader)
            elif kind in (QEMU_VM_SECTION_PART, QEMU_VM_SECTION_END):
                section_id = reader.be32()
                if section_id != self._ram_section_id:
                    raise StreamError(f"section {section_id} is not the RAM section")
                self._out.write(bytes([kind]) + _BE32.pack(section_id))
                self._ram_records(reader)
            elif kind in (QEMU_VM_SECTION_FULL, QEMU_VM_EOF):
                # Device state from here on: nothing of it refers to RAM pages.
                self._out.write(bytes([kind]))
                self._out.write(reader.rest())
                return
            else:
                raise StreamError(f"unexpected section type {kind:#x}")

    def _ram_start(self, reader: _Reader) -> None:
        section_id = reader.be32()
        name = reader.idstr()
        instance_id, version_id = reader.be32(), reader.be32()
        if name != b"ram":
            raise StreamError(
                f"iterable section {name!r} is not supported "
                "(only RAM may be migrated iteratively)"
            )
        self._ram_section_id = section_id
        total = reader.be64()
        if not total & RAM_SAVE_FLAG_MEM_SIZE:
            raise StreamError("RAM section does not start with its block list")
        blocks = []
        remaining = total & ~_FLAGS_MASK
        while remaining > 0:
            block, size = reader.idstr(), reader.be64()
            blocks.append((block, size))
            remaining -= size
        if remaining != 0:
            raise StreamError("RAM block list does not add up to its total")
        if reader.be64() != RAM_SAVE_FLAG_EOS:
            raise StreamError(
                "RAM block list has extra fields (postcopy or x-ignore-shared enabled?)"
            )
        if self.main_block is None:
            self.main_block = max(blocks, key=lambda b: b[1])[0]
        sizes = dict(blocks)
        if self.main_block not in sizes:
            raise StreamError(f"RAM block {self.main_block!r} not in stream")
        self.main_block_size_bytes = sizes[self.main_block]

        out = io.BytesIO()
        out.write(
            bytes([QEMU_VM_SECTION_START])
            + _BE32.pack(section_id)
            + _idstr(name)
            + _BE32.pack(instance_id)
            + _BE32.pack(version_id)
            + _BE64.pack(total)
        )
        for block, size in blocks:
            out.write(
                _idstr(self._renamed if block == self.main_block else block) + _BE64.pack(size)
            )
        out.write(_BE64.pack(RAM_SAVE_FLAG_EOS))
        self._out.write(out.getvalue())
        self._footer(reader)

    def _ram_records(self, reader: _Reader) -> None:
        while True:
            header = reader.be64()
            flags, offset = header & _FLAGS_MASK, header & ~_FLAGS_MASK
            if flags & ~RAM_SAVE_FLAGS_SUPPORTED:
                raise StreamError(
                    f"unsupported RAM record flags {flags:#x} (compression or xbzrle enabled?)"
                )
            if flags & RAM_SAVE_FLAG_EOS:
                self._out.write(_BE64.pack(header))
                break
            if not flags & RAM_SAVE_FLAG_CONTINUE:
                self._record_block = reader.idstr()
            elif self._record_block is None:
                raise StreamError("RAM record continues a block never named")
            if flags & RAM_SAVE_FLAG_ZERO:
                payload = reader.exact(1)
            elif flags & RAM_SAVE_FLAG_PAGE:
                payload = reader.exact(PAGE_SIZE_BYTES)
            else:
                raise StreamError(f"RAM record without page or zero flag: {flags:#x}")
            if self._record_block == self.main_block:
                self._store(offset, flags, payload)
            else:
                self._keep(offset, flags, payload)
        self._footer(reader)

    def _store(self, offset: int, flags: int, payload: bytes) -> None:
        if offset + PAGE_SIZE_BYTES > self.main_block_size_bytes:
            raise StreamError(f"page at {offset:#x} beyond the RAM block")
        if flags & RAM_SAVE_FLAG_PAGE:
            self._sink.write_page(offset, payload)
            self.pages_written += 1
        elif payload == b"\0":
            self._sink.zero_page(offset)
            self.pages_zero += 1
        else:
            raise StreamError("zero-page record with a non-zero fill byte")

    def _keep(self, offset: int, flags: int, payload: bytes) -> None:
        # "Continue" means "same block as the previous record"; records of
        # the main block no longer stand between, so re-name where needed.
        flags &= ~RAM_SAVE_FLAG_CONTINUE
        name = b""
        if self._record_block == self._emitted_block:
            flags |= RAM_SAVE_FLAG_CONTINUE
        else:
            name = _idstr(self._record_block or b"")
        self._emitted_block = self._record_block
        self._out.write(_BE64.pack(offset | flags) + name + payload)

    def _footer(self, reader: _Reader) -> None:
        if reader.u8() != QEMU_VM_SECTION_FOOTER:
            raise StreamError("section without footer")
        section_id = reader.be32()
        if section_id != self._ram_section_id:
            raise StreamError("section footer does not match its section")
        self._out.write(bytes([QEMU_VM_SECTION_FOOTER]) + _BE32.pack(section_id))
