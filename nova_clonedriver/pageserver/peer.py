"""The ``peer`` transport: this node's page service talks to the origin
node's over mutual TLS.

A client keeps up to ``connections`` TLS connections to an origin and
spreads FETCH requests over them. Each carries several requests at a time
(pipelined): replies come back in request order and are matched to their
request by id. A connection is read and written by a native thread of its
own (non-blocking socket, select): decryption and socket reads release the
GIL, so connections use more than one core while the event loop serves
FUSE. The loop hands a connection whole requests and gets whole replies.

A request that fails because the connection broke, or that gets no reply,
is sent again on a new connection until ``timeout_s`` has passed since its
first failure; then it fails with ``OriginUnavailable``. From then on the
origin counts as unreachable: each request tries it once, for at most
``PROBE_TIMEOUT_S``, and fails if that does not get an answer (so a clone's
retried reads do not each wait ``timeout_s`` again), until a request gets
through.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import json
import logging
import os
import selectors
import socket
import ssl
import threading
import time
from typing import Any

from nova_clonedriver.engine import native
from nova_clonedriver.pageserver import protocol
from nova_clonedriver.pageserver import transport
from nova_clonedriver.pageserver.protocol import Kind

LOG = logging.getLogger(__name__)

RECONNECT_DELAY_S = 0.5
PROBE_TIMEOUT_S = 2.0
CONNECT_TIMEOUT_S = 10.0

Message = tuple[Kind, int, int, bytearray]  # kind, flags, request id, payload


class OriginUnavailable(transport.Unavailable):
    """The origin did not answer within the fetch timeout."""


class _ConnectionLost(Exception):
    pass


class _Connection:
    """One TLS connection to the origin and the thread that reads and
    writes it. ``send`` may be called from the event loop at any time;
    ``on_messages`` (whole replies, in order) and ``on_closed`` (once, with
    the reason) are called on the loop."""

    def __init__(
        self,
        sock: ssl.SSLSocket,
        loop: asyncio.AbstractEventLoop,
        on_messages: Any,
        on_closed: Any,
    ) -> None:
        self._sock = sock
        self._loop = loop
        self._on_messages = on_messages
        self._on_closed = on_closed
        self._outgoing: collections.deque[memoryview] = collections.deque()
        self._lock = threading.Lock()
        self._wake_read, self._wake_write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._closing = False
        self.closed = False  # set on the loop, by on_closed's caller
        # The message being received: its header, then its payload.
        self._header = bytearray(protocol.HEADER.size)
        self._payload: bytearray | None = None
        self._received = 0
        self._kind: tuple[Kind, int, int] | None = None
        native.thread_class()(target=self._run, name="origin-connection", daemon=True).start()

    @staticmethod
    def connect(host: str, port: int, context: ssl.SSLContext) -> ssl.SSLSocket:
        """A TLS connection, handshake done (blocking: run it off the loop)."""
        raw = socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S)
        try:
            sock = context.wrap_socket(raw, server_hostname=host)
        except BaseException:
            raw.close()
            raise
        sock.setblocking(False)
        return sock

    def send(self, message: bytes) -> None:
        with self._lock:
            self._outgoing.append(memoryview(message))
        self._wake()

    def close(self) -> None:
        self._closing = True
        self._wake()

    def _wake(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            os.write(self._wake_write, b"\0")

    def _run(self) -> None:
        reason: Exception = _ConnectionLost("connection closed")
        want_write = False
        # Not select.select: descriptors above FD_SETSIZE (1024) fail there.
        selector = selectors.DefaultSelector()
        selector.register(self._wake_read, selectors.EVENT_READ)
        selector.register(self._sock, selectors.EVENT_READ)
        try:
            while not self._closing:
                with self._lock:
                    writing = want_write or bool(self._outgoing)
                selector.modify(
                    self._sock, selectors.EVENT_READ | (selectors.EVENT_WRITE if writing else 0)
                )
                if any(key.fd == self._wake_read for key, _ in selector.select()):
                    with contextlib.suppress(BlockingIOError):
                        os.read(self._wake_read, 4096)
                if self._closing:
                    break
                want_write = self._flush()
                self._receive()
        except protocol.ProtocolError as exc:
            reason = exc
        except (OSError, ValueError) as exc:  # ssl.SSLError, ConnectionClosed among them
            reason = _ConnectionLost(str(exc) or type(exc).__name__)
        finally:
            selector.close()
            with contextlib.suppress(OSError):
                self._sock.close()
            os.close(self._wake_read)
            os.close(self._wake_write)
            with contextlib.suppress(RuntimeError):  # the loop is closed
                self._loop.call_soon_threadsafe(self._on_closed, self, reason)

    def _flush(self) -> bool:
        """Send what is queued; whether the socket must become writable first."""
        while True:
            with self._lock:
                if not self._outgoing:
                    return False
                data = self._outgoing[0]
            try:
                sent = self._sock.send(data)
            except (ssl.SSLWantWriteError, ssl.SSLWantReadError, BlockingIOError):
                return True
            with self._lock:
                if sent < len(data):
                    self._outgoing[0] = data[sent:]
                else:
                    self._outgoing.popleft()

    def _receive(self) -> None:
        """Read what can be read now; hand the loop every whole message."""
        messages: list[Message] = []
        try:
            self._read_messages(messages)
        finally:  # those that came before the end of the connection too
            if messages:
                self._loop.call_soon_threadsafe(self._on_messages, self, messages)

    def _read_messages(self, messages: list[Message]) -> None:
        """Until the socket has nothing more: a message is its header, then
        its payload, each read into a buffer of its own."""
        while True:
            if self._payload is None:
                if not self._fill(memoryview(self._header)):
                    return
                kind, flags, request_id, length = protocol.parse_header(
                    self._header, protocol.MAX_REPLY_BYTES
                )
                self._kind = (kind, flags, request_id)
                self._payload = bytearray(length)
                self._received = 0
            if not self._fill(memoryview(self._payload)):
                return
            assert self._kind is not None
            messages.append((*self._kind, self._payload))
            self._payload = None
            self._received = 0

    def _fill(self, buffer: memoryview) -> bool:
        """Read into ``buffer`` from ``_received`` on; whether it is full
        (False: the socket has nothing more for now)."""
        receive = self._sock.recv_into
        while self._received < len(buffer):
            try:
                count = receive(buffer[self._received :])
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
                return False
            if not count:
                raise protocol.ConnectionClosed("connection closed by the origin")
            self._received += count
        return True


class _Pending:
    def __init__(self, expected_replies: int, connection: _Connection) -> None:
        self.expected = expected_replies
        self.connection = connection
        self.replies: list[tuple[int, bytearray]] = []  # (flags, payload)
        self.done: asyncio.Future[list[tuple[int, bytearray]]] = (
            asyncio.get_running_loop().create_future()
        )


class OriginClient:
    def __init__(
        self,
        address: str,
        ssl_context: ssl.SSLContext,
        timeout_s: float,
        max_inflight: int,
        connections: int = 1,
    ) -> None:
        host, _, port = address.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"origin address {address!r} is not <host>:<port>")
        self.address = address
        self._host, self._port = host.strip("[]"), int(port)
        self._ssl = ssl_context
        self._timeout_s = timeout_s
        self._slots = asyncio.Semaphore(max_inflight)
        self._ids = itertools.count(1)
        self._next_connection = itertools.cycle(range(max(1, connections)))
        self._connect_locks = [asyncio.Lock() for _ in range(max(1, connections))]
        self._connections: list[_Connection | None] = [None] * max(1, connections)
        self._pending: dict[int, _Pending] = {}
        # monotonic time of the first request that found it unreachable
        self._unreachable_since: float | None = None

    async def request_json(self, kind: Kind, data: dict[str, Any]) -> dict[str, Any]:
        replies = await self._request(kind, json.dumps(data).encode(), 1, 0)
        return protocol.decode_json(replies[0][1])

    async def fetch(
        self, generation_id: str, file_number: int, chunks: list[int]
    ) -> dict[int, transport.Chunk | None]:
        """The chunks' bytes (``None``: all zeros), as the origin sent them."""
        payload = protocol.encode_fetch(generation_id, file_number, chunks)
        replies = await self._request(
            Kind.FETCH, payload, len(chunks), next(self._next_connection)
        )
        result: dict[int, transport.Chunk | None] = {}
        for flags, data in replies:
            chunk, content = protocol.decode_data(flags, data)
            result[chunk] = content
        if sorted(result) != sorted(chunks):
            raise transport.Malformed("the origin sent other chunks than asked for")
        return result

    async def close(self) -> None:
        for connection in self._connections:
            if connection is not None:
                connection.close()
        self._connections = [None] * len(self._connections)

    async def _request(
        self, kind: Kind, payload: bytes, expected_replies: int, slot: int
    ) -> list[tuple[int, bytearray]]:
        try:
            replies = await self._request_until_deadline(kind, payload, expected_replies, slot)
        except OriginUnavailable:
            if self._unreachable_since is None:
                self._unreachable_since = time.monotonic()
                LOG.warning(
                    "Origin %s is unreachable: requests to it now fail after one "
                    "try (at most %.0f s) until it answers again",
                    self.address,
                    PROBE_TIMEOUT_S,
                )
            raise
        except transport.Refused:  # an answer all the same
            self._answered()
            raise
        self._answered()
        return replies

    def _answered(self) -> None:
        if self._unreachable_since is not None:
            LOG.info(
                "Origin %s answers again after %.0f s",
                self.address,
                time.monotonic() - self._unreachable_since,
            )
            self._unreachable_since = None

    async def _request_until_deadline(
        self, kind: Kind, payload: bytes, expected_replies: int, slot: int
    ) -> list[tuple[int, bytearray]]:
        since = self._unreachable_since
        timeout_s = self._timeout_s if since is None else min(self._timeout_s, PROBE_TIMEOUT_S)
        down = "" if since is None else f", {time.monotonic() - since:.0f} s after it first failed"
        deadline = time.monotonic() + timeout_s
        async with self._slots:
            while True:
                try:
                    return await asyncio.wait_for(
                        self._attempt(kind, payload, expected_replies, slot),
                        max(0.1, deadline - time.monotonic()),
                    )
                except asyncio.TimeoutError:
                    raise OriginUnavailable(
                        f"origin {self.address} sent no reply within {timeout_s} s{down}"
                    ) from None
                except (_ConnectionLost, OSError) as exc:
                    if since is not None:  # known to be down: one try only
                        raise OriginUnavailable(
                            f"origin {self.address} still unreachable{down}: {exc}"
                        ) from exc
                    if time.monotonic() >= deadline:
                        raise OriginUnavailable(
                            f"origin {self.address} unreachable for {timeout_s} s: {exc}"
                        ) from exc
                    LOG.warning("Request to origin %s failed (%s); retrying", self.address, exc)
                    await asyncio.sleep(RECONNECT_DELAY_S)

    async def _attempt(
        self, kind: Kind, payload: bytes, expected_replies: int, slot: int
    ) -> list[tuple[int, bytearray]]:
        connection = await self._connection(slot)
        request_id = next(self._ids)
        pending = _Pending(expected_replies, connection)
        self._pending[request_id] = pending
        try:
            connection.send(protocol.encode(kind, request_id, payload))
            return await pending.done
        finally:
            self._pending.pop(request_id, None)

    async def _connection(self, slot: int) -> _Connection:
        async with self._connect_locks[slot]:
            connection = self._connections[slot]
            if connection is None or connection.closed:
                loop = asyncio.get_running_loop()
                sock = await loop.run_in_executor(
                    None, _Connection.connect, self._host, self._port, self._ssl
                )
                connection = _Connection(sock, loop, self._on_messages, self._on_closed)
                self._connections[slot] = connection
                LOG.info("Connected to origin %s (connection %d)", self.address, slot)
            return connection

    def _on_messages(self, connection: _Connection, messages: list[Message]) -> None:
        for kind, flags, request_id, payload in messages:
            pending = self._pending.get(request_id)
            if kind == Kind.ERROR:
                message = protocol.decode_json(payload).get("error", "error")
                if pending is None:  # not about one request: the origin hangs up
                    connection.close()
                    self._lost(connection, _ConnectionLost(f"origin error: {message}"))
                    return
                _finish(pending, exception=transport.Refused(message))
                continue
            if pending is None:
                LOG.error(
                    "Origin %s broke the protocol: reply to unknown request %d",
                    self.address,
                    request_id,
                )
                connection.close()
                self._lost(connection, _ConnectionLost(f"reply to unknown request {request_id}"))
                return
            pending.replies.append((flags, payload))
            if len(pending.replies) == pending.expected:
                _finish(pending)

    def _on_closed(self, connection: _Connection, reason: Exception) -> None:
        if isinstance(reason, protocol.ProtocolError):
            LOG.error("Origin %s broke the protocol: %s", self.address, reason)
            reason = _ConnectionLost(str(reason))
        self._lost(connection, reason)

    def _lost(self, connection: _Connection, reason: Exception) -> None:
        """Every request waiting on ``connection`` fails with ``reason``."""
        connection.closed = True
        for pending in list(self._pending.values()):
            if pending.connection is connection:
                _finish(pending, exception=reason)


def _finish(pending: _Pending, exception: Exception | None = None) -> None:
    if pending.done.done():
        return
    if exception is None:
        pending.done.set_result(pending.replies)
    else:
        pending.done.set_exception(exception)


class PeerTransport(transport.Transport):
    """``peer://host:port``: the origin node's page service."""

    def __init__(self, location: str, context: transport.Context) -> None:
        super().__init__(location, context)
        self._client = OriginClient(
            location,
            context.ssl_context,
            context.timeout_s,
            context.max_inflight,
            context.connections,
        )

    @property
    def address(self) -> str:
        return self.location

    async def open(self, generation_id: str, clones: list[str], key: str) -> transport.Opened:
        reply = await self._client.request_json(
            Kind.OPEN, {"generation": generation_id, "clones": clones, "key": key}
        )
        return transport.Opened.from_json(reply)

    async def fetch(
        self, generation_id: str, file_number: int, chunks: list[int]
    ) -> dict[int, transport.Chunk | None]:
        return await self._client.fetch(generation_id, file_number, chunks)

    async def release(self, generation_id: str) -> None:
        await self._client.request_json(Kind.RELEASE, {"generation": generation_id})

    async def working_set(self, generation_id: str) -> list[int]:
        reply = await self._client.request_json(
            Kind.GET_WORKING_SET, {"generation": generation_id}
        )
        return transport.chunk_list(reply.get("chunks"))

    async def record_working_set(self, generation_id: str, chunks: list[int]) -> None:
        await self._client.request_json(
            Kind.PUT_WORKING_SET, {"generation": generation_id, "chunks": chunks}
        )

    async def close(self) -> None:
        await self._client.close()
