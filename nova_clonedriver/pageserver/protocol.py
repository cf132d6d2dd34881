"""The page service's wire format between nodes (always inside TLS).

Every message is a 12-byte header (magic ``NC``, kind, flags, request id,
payload length) and a payload. Requests are small and bounded; a reader
refuses anything else before reading it, so a malformed or oversized
request costs the server nothing but an error reply and a closed connection.

Requests:
  OPEN     JSON {"generation": id, "clones": [uuid, ...]}: the peer will run
           (or runs) these clones of the generation; replies OK with the
           generation's metadata and file sizes. Only generations a peer has
           opened are served to it.
  FETCH    binary: generation id, file number, chunk numbers; replies one DATA
           message per chunk, in order (flag ZERO: the chunk is all zeros and
           carries no bytes).
  RELEASE  JSON {"generation": id}: the peer holds no clone of it any more.
  GET_WORKING_SET / PUT_WORKING_SET  JSON: the chunks a generation's first
           clone touched (recorded by the first node that ran one).
"""

from __future__ import annotations

import enum
import json
import socket
import struct
from typing import Any

from nova_clonedriver.pageserver import transport

MAGIC = b"NC"
HEADER = struct.Struct("!2sBBII")
FETCH_HEAD = struct.Struct("!32sBH")
CHUNK_INDEX = struct.Struct("!I")

MAX_REQUEST_BYTES = 64 * 1024
MAX_CHUNKS_PER_FETCH = 256
# A reply carries at most one chunk plus its index.
MAX_CHUNK_BYTES = 4 << 20
MAX_REPLY_BYTES = MAX_CHUNK_BYTES + CHUNK_INDEX.size

# File numbers of FETCH: the memory image, the device state, then disk k
# (in the order of the generation's ``disks``) as DISK_BASE_FILE + k.
MEMORY_FILE = 0
DEVICE_FILE = 1
DISK_BASE_FILE = 2

FLAG_ZERO = 1


class Kind(enum.IntEnum):
    OPEN = 1
    FETCH = 2
    RELEASE = 3
    GET_WORKING_SET = 4
    PUT_WORKING_SET = 5
    OK = 0x81
    DATA = 0x82
    ERROR = 0xFF


REQUEST_KINDS = {Kind.OPEN, Kind.FETCH, Kind.RELEASE, Kind.GET_WORKING_SET, Kind.PUT_WORKING_SET}


class ProtocolError(transport.Malformed):
    """The other side broke the protocol; the connection must close."""


def encode(kind: Kind, request_id: int, payload: bytes = b"", flags: int = 0) -> bytes:
    return HEADER.pack(MAGIC, kind, flags, request_id, len(payload)) + payload


def encode_json(kind: Kind, request_id: int, data: Any) -> bytes:
    return encode(kind, request_id, json.dumps(data).encode())


class ConnectionClosed(ConnectionError):
    """The other side closed the connection (between or within messages)."""


def parse_header(header: bytes | bytearray, max_payload_bytes: int) -> tuple[Kind, int, int, int]:
    """(kind, flags, request id, payload length) of a message header;
    ProtocolError for anything that does not start a well-formed message of
    acceptable size, before its payload is read."""
    magic, kind, flags, request_id, length = HEADER.unpack(header)
    if magic != MAGIC:
        raise ProtocolError("bad magic: not a page service peer")
    try:
        kind = Kind(kind)
    except ValueError:
        raise ProtocolError(f"unknown message kind {kind}") from None
    if length > max_payload_bytes:
        raise ProtocolError(f"message of {length} bytes exceeds the limit of {max_payload_bytes}")
    return kind, flags, request_id, length


def receive_exactly(sock: socket.socket, size: int) -> bytearray:
    """``size`` bytes from a blocking socket (TLS included); raises
    ConnectionClosed if it closes first."""
    buffer = bytearray(size)
    view = memoryview(buffer)
    received = 0
    while received < size:
        count = sock.recv_into(view[received:], size - received)
        if not count:
            raise ConnectionClosed(f"connection closed {received} bytes into {size}")
        received += count
    return buffer


def read_message(sock: socket.socket, max_payload_bytes: int) -> tuple[Kind, int, int, bytearray]:
    """(kind, flags, request id, payload) of the next message on a blocking
    socket; ProtocolError as parse_header, ConnectionClosed."""
    kind, flags, request_id, length = parse_header(
        receive_exactly(sock, HEADER.size), max_payload_bytes
    )
    return kind, flags, request_id, receive_exactly(sock, length)


def decode_json(payload: bytes | bytearray) -> dict[str, Any]:
    try:
        data = json.loads(payload)
    except ValueError as exc:
        raise ProtocolError(f"malformed JSON payload: {exc}") from None
    if not isinstance(data, dict):
        raise ProtocolError("JSON payload is not an object")
    return data


def encode_fetch(generation_id: str, file_number: int, chunks: list[int]) -> bytes:
    return FETCH_HEAD.pack(generation_id.encode(), file_number, len(chunks)) + b"".join(
        CHUNK_INDEX.pack(c) for c in chunks
    )


def decode_fetch(payload: bytes | bytearray) -> tuple[str, int, list[int]]:
    if len(payload) < FETCH_HEAD.size:
        raise ProtocolError("FETCH request too short")
    raw_id, file_number, count = FETCH_HEAD.unpack_from(payload)
    if count < 1 or count > MAX_CHUNKS_PER_FETCH:
        raise ProtocolError(f"FETCH of {count} chunks (1 to {MAX_CHUNKS_PER_FETCH})")
    if len(payload) != FETCH_HEAD.size + count * CHUNK_INDEX.size:
        raise ProtocolError("FETCH length does not match its chunk count")
    try:
        generation_id = raw_id.decode("ascii")
    except UnicodeDecodeError:
        raise ProtocolError("FETCH generation id is not ASCII") from None
    chunks = [
        CHUNK_INDEX.unpack_from(payload, FETCH_HEAD.size + i * CHUNK_INDEX.size)[0]
        for i in range(count)
    ]
    return generation_id, file_number, chunks


DATA_HEAD_BYTES = HEADER.size + CHUNK_INDEX.size


def data_head(request_id: int, chunk: int, length: int | None) -> bytes:
    """The header of one chunk of a FETCH reply, its bytes to follow;
    ``None``: an all-zero chunk (flag ZERO, no bytes follow)."""
    if length is None:
        return encode(Kind.DATA, request_id, CHUNK_INDEX.pack(chunk), FLAG_ZERO)
    return HEADER.pack(MAGIC, Kind.DATA, 0, request_id, CHUNK_INDEX.size + length) + (
        CHUNK_INDEX.pack(chunk)
    )


def decode_data(flags: int, payload: bytearray) -> tuple[int, bytearray | None]:
    """(chunk, its bytes) of a DATA reply: the payload itself, its chunk
    index cut off (CPython does that without copying); ``None``: all zeros."""
    if len(payload) < CHUNK_INDEX.size:
        raise ProtocolError("DATA message too short")
    chunk = CHUNK_INDEX.unpack_from(payload)[0]
    if flags & FLAG_ZERO:
        return chunk, None
    del payload[: CHUNK_INDEX.size]
    return chunk, payload
