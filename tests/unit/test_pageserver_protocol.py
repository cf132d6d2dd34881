"""The page service's wire format: what a reader accepts and refuses."""

from __future__ import annotations

import socket

import testtools

from nova_clonedriver.pageserver import protocol
from nova_clonedriver.pageserver.protocol import Kind


def read(data: bytes, max_payload_bytes: int = protocol.MAX_REQUEST_BYTES):
    """The message ``data`` holds, read from a socket as the peers do."""
    sender, receiver = socket.socketpair()
    with sender, receiver:
        sender.sendall(data)
        sender.shutdown(socket.SHUT_WR)
        return protocol.read_message(receiver, max_payload_bytes)


def data_message(request_id: int, chunk: int, data: bytes | None) -> bytes:
    """A DATA reply as an origin sends it."""
    return protocol.data_head(request_id, chunk, None if data is None else len(data)) + (
        data or b""
    )


class TestMessages(testtools.TestCase):
    def test_a_message_reads_back(self):
        kind, flags, request_id, payload = read(protocol.encode(Kind.OPEN, 7, b"{}", 1))
        self.assertEqual((Kind.OPEN, 1, 7, b"{}"), (kind, flags, request_id, payload))

    def test_bad_magic_unknown_kind_and_oversize_are_refused_before_the_payload(self):
        for data, message in [
            (b"XX" + bytes(10), "bad magic"),
            (protocol.HEADER.pack(protocol.MAGIC, 42, 0, 1, 0), "unknown message kind"),
            (protocol.HEADER.pack(protocol.MAGIC, Kind.OPEN, 0, 1, 1 << 20), "exceeds the limit"),
        ]:
            error = self.assertRaises(protocol.ProtocolError, read, data)
            self.assertIn(message, str(error))

    def test_a_truncated_message_is_a_closed_connection(self):
        self.assertRaises(
            protocol.ConnectionClosed, read, protocol.encode(Kind.OPEN, 1, b"{}")[:-1]
        )

    def test_json_payload_must_be_an_object(self):
        self.assertEqual({"a": 1}, protocol.decode_json(b'{"a": 1}'))
        self.assertRaises(protocol.ProtocolError, protocol.decode_json, b"[1]")
        self.assertRaises(protocol.ProtocolError, protocol.decode_json, b"{bad")


class TestFetch(testtools.TestCase):
    def test_fetch_round_trip(self):
        payload = protocol.encode_fetch("a" * 32, protocol.DISK_BASE_FILE, [3, 1, 4])
        self.assertEqual(("a" * 32, 2, [3, 1, 4]), protocol.decode_fetch(payload))

    def test_malformed_fetches_are_refused(self):
        good = protocol.encode_fetch("a" * 32, 0, [1, 2])
        for payload, message in [
            (b"short", "too short"),
            (protocol.FETCH_HEAD.pack(b"a" * 32, 0, 0), "FETCH of 0 chunks"),
            (
                protocol.FETCH_HEAD.pack(b"a" * 32, 0, protocol.MAX_CHUNKS_PER_FETCH + 1),
                "FETCH of 257 chunks",
            ),
            (good[:-1], "does not match its chunk count"),
            (good + b"\0", "does not match its chunk count"),
            (
                protocol.encode_fetch("a" * 32, 0, [1]).replace(b"a" * 32, b"\xff" * 32),
                "not ASCII",
            ),
        ]:
            error = self.assertRaises(protocol.ProtocolError, protocol.decode_fetch, payload)
            self.assertIn(message, str(error))

    def test_data_carries_bytes_or_says_zero(self):
        kind, flags, request_id, payload = read(
            data_message(5, 9, b"abc"), protocol.MAX_REPLY_BYTES
        )
        self.assertEqual((Kind.DATA, 5), (kind, request_id))
        self.assertEqual((9, b"abc"), protocol.decode_data(flags, payload))
        _, flags, _, payload = read(data_message(5, 9, None), protocol.MAX_REPLY_BYTES)
        self.assertEqual((9, None), protocol.decode_data(flags, payload))
        self.assertRaises(protocol.ProtocolError, protocol.decode_data, 0, bytearray(b"\0"))
