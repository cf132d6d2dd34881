"""The ``peer`` transport: this node's page service talks to the origin
node's over mutual TLS.

One TLS connection per origin carries every request, several at a time
(pipelined): replies come back in request order and are matched to their
request by id. A request that fails because the connection broke, or that
gets no reply, is sent again on a new connection until ``timeout_s`` has
passed since its first failure; then it fails with ``OriginUnavailable``.
From then on the origin counts as unreachable: each request tries it once,
for at most ``PROBE_TIMEOUT_S``, and fails if that does not get an answer (so
a clone's retried reads do not each wait ``timeout_s`` again), until a
request gets through.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import ssl
import time
from typing import Any

from nova_clonedriver.pageserver import protocol
from nova_clonedriver.pageserver import transport
from nova_clonedriver.pageserver.protocol import Kind

LOG = logging.getLogger(__name__)

RECONNECT_DELAY_S = 0.5
PROBE_TIMEOUT_S = 2.0


class OriginUnavailable(transport.Unavailable):
    """The origin did not answer within the fetch timeout."""


class _ConnectionLost(Exception):
    pass


class _Pending:
    def __init__(self, expected_replies: int) -> None:
        self.expected = expected_replies
        self.replies: list[tuple[int, bytes]] = []  # (flags, payload)
        self.done: asyncio.Future[list[tuple[int, bytes]]] = (
            asyncio.get_running_loop().create_future()
        )


class OriginClient:
    def __init__(
        self, address: str, ssl_context: ssl.SSLContext, timeout_s: float, max_inflight: int
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
        self._connect_lock = asyncio.Lock()
        self._writer: asyncio.StreamWriter | None = None
        self._pending: dict[int, _Pending] = {}
        # monotonic time of the first request that found it unreachable
        self._unreachable_since: float | None = None

    async def request_json(self, kind: Kind, data: dict[str, Any]) -> dict[str, Any]:
        replies = await self._request(kind, json.dumps(data).encode(), 1)
        return protocol.decode_json(replies[0][1])

    async def fetch(
        self, generation_id: str, file_number: int, chunks: list[int]
    ) -> dict[int, bytes | None]:
        """The chunks' bytes (``None``: all zeros), as the origin sent them."""
        payload = protocol.encode_fetch(generation_id, file_number, chunks)
        replies = await self._request(Kind.FETCH, payload, len(chunks))
        result: dict[int, bytes | None] = {}
        for flags, data in replies:
            chunk, content = protocol.decode_data(flags, data)
            result[chunk] = content
        if sorted(result) != sorted(chunks):
            raise transport.Malformed("the origin sent other chunks than asked for")
        return result

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    async def _request(
        self, kind: Kind, payload: bytes, expected_replies: int
    ) -> list[tuple[int, bytes]]:
        try:
            replies = await self._request_until_deadline(kind, payload, expected_replies)
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
        self, kind: Kind, payload: bytes, expected_replies: int
    ) -> list[tuple[int, bytes]]:
        since = self._unreachable_since
        timeout_s = self._timeout_s if since is None else min(self._timeout_s, PROBE_TIMEOUT_S)
        down = "" if since is None else f", {time.monotonic() - since:.0f} s after it first failed"
        deadline = time.monotonic() + timeout_s
        async with self._slots:
            while True:
                try:
                    return await asyncio.wait_for(
                        self._attempt(kind, payload, expected_replies),
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
        self, kind: Kind, payload: bytes, expected_replies: int
    ) -> list[tuple[int, bytes]]:
        writer = await self._connection()
        request_id = next(self._ids)
        pending = _Pending(expected_replies)
        self._pending[request_id] = pending
        try:
            writer.write(
                protocol.HEADER.pack(protocol.MAGIC, kind, 0, request_id, len(payload)) + payload
            )
            await writer.drain()
            return await pending.done
        except ConnectionError as exc:
            raise _ConnectionLost(str(exc)) from exc
        finally:
            self._pending.pop(request_id, None)

    async def _connection(self) -> asyncio.StreamWriter:
        async with self._connect_lock:
            if self._writer is None or self._writer.is_closing():
                reader, writer = await asyncio.open_connection(
                    self._host, self._port, ssl=self._ssl, server_hostname=self._host
                )
                self._writer = writer
                asyncio.get_running_loop().create_task(self._read_replies(reader, writer))
                LOG.info("Connected to origin %s", self.address)
            return self._writer

    async def _read_replies(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        reason: Exception = _ConnectionLost("connection closed by the origin")
        try:
            while True:
                kind, flags, request_id, payload = await protocol.read_message(
                    reader, protocol.MAX_REPLY_BYTES
                )
                pending = self._pending.get(request_id)
                if kind == Kind.ERROR:
                    message = protocol.decode_json(payload).get("error", "error")
                    if pending is None:  # not about one request: the origin hangs up
                        reason = _ConnectionLost(f"origin error: {message}")
                        break
                    _finish(pending, exception=transport.Refused(message))
                    continue
                if pending is None:
                    raise protocol.ProtocolError(f"reply to unknown request {request_id}")
                pending.replies.append((flags, payload))
                if len(pending.replies) == pending.expected:
                    _finish(pending)
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError) as exc:
            reason = _ConnectionLost(str(exc) or type(exc).__name__)
        except protocol.ProtocolError as exc:
            LOG.error("Origin %s broke the protocol: %s", self.address, exc)
            reason = _ConnectionLost(str(exc))
        finally:
            writer.close()
            if self._writer is writer:
                self._writer = None
            for pending in list(self._pending.values()):
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
            location, context.ssl_context, context.timeout_s, context.max_inflight
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
    ) -> dict[int, bytes | None]:
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
