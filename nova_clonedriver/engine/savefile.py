"""libvirt's save-image header, so a clone starts through virDomainRestore.

Layout (libvirt src/qemu/qemu_saveimage.h, version 2): the 16-byte magic
``LibvirtQemudSave``, native-endian uint32 version, data_len, was_running,
compressed, cookieOffset and 14 unused words (92 bytes), then ``data_len``
bytes holding the NUL-terminated domain XML (and, at ``cookieOffset``, a
cookie XML), then the QEMU migration stream. Writing our own header in front
of a generation's device stream lets libvirt restore a *new* domain (its own
name, UUID and devices) from the master's state.
"""

from __future__ import annotations

import struct
from typing import BinaryIO

SAVE_MAGIC = b"LibvirtQemudSave"
SAVE_VERSION = 2
_HEADER = struct.Struct("=16s5I14I")
HEADER_SIZE_BYTES = _HEADER.size
COMPRESSION_RAW = 0


class SaveImageError(Exception):
    """Not a libvirt save image this module understands."""


def build_header(domain_xml: str, cookie_xml: str | None = None) -> bytes:
    """Header and XML block for a running, uncompressed save image."""
    data = domain_xml.encode() + b"\0"
    cookie_offset = 0
    if cookie_xml:
        cookie_offset = len(data)
        data += cookie_xml.encode() + b"\0"
    fields = [SAVE_MAGIC, SAVE_VERSION, len(data), 1, COMPRESSION_RAW, cookie_offset] + [0] * 14
    return _HEADER.pack(*fields) + data


def read_header(source: BinaryIO) -> tuple[str, str | None]:
    """Domain XML and cookie XML of a save image; leaves ``source`` at the
    start of the migration stream."""
    raw = source.read(HEADER_SIZE_BYTES)
    if len(raw) != HEADER_SIZE_BYTES:
        raise SaveImageError("save image shorter than its header")
    magic, version, data_len, _running, compressed, cookie_offset, *_ = _HEADER.unpack(raw)
    if magic != SAVE_MAGIC or version != SAVE_VERSION:
        raise SaveImageError("not a version 2 libvirt save image")
    if compressed != COMPRESSION_RAW:
        raise SaveImageError("compressed save images are not supported")
    data = source.read(data_len)
    xml_end = data.index(b"\0")
    cookie = None
    if cookie_offset:
        cookie = data[cookie_offset : data.index(b"\0", cookie_offset)].decode()
    return data[:xml_end].decode(), cookie
