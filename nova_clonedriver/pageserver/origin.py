"""Serving this node's generations to other nodes.

A peer first OPENs a generation with its access key (a secret made at
bless, which only those who may launch its clones learn: a valid
certificate of the deployment alone gets nothing), which records a peer
reference in the store (so the generation cannot be discarded under its
clones, and an operator sees which node holds clones of it); only then does
it get chunks of it. Each connection is served in order, so a peer may
pipeline requests.
"""

from __future__ import annotations

from collections.abc import Callable
import contextlib
import datetime
import functools
import json
import logging
import os
import socket
import ssl
import threading
from typing import Any

from nova_clonedriver.engine import native
from nova_clonedriver.engine import store as store_mod
from nova_clonedriver.pageserver import protocol
from nova_clonedriver.pageserver import ratelimit
from nova_clonedriver.pageserver import stats as stats_mod
from nova_clonedriver.pageserver import tls
from nova_clonedriver.pageserver import transport
from nova_clonedriver.pageserver.protocol import Kind

LOG = logging.getLogger(__name__)

WORKING_SET_FILE = "working-set.json"
MAX_CLONES_PER_PEER = 4096
# A peer that connects and says nothing holds a connection this long.
HANDSHAKE_TIMEOUT_S = 10.0
# A peer's connection with no request this long is closed (peers connect
# again when they need to).
IDLE_TIMEOUT_S = 600.0
# Connections (threads) at once; more are closed at once.
MAX_CONNECTIONS = 256


def file_paths(generation: store_mod.Generation) -> list[str]:
    """The files of a generation by FETCH file number."""
    return [generation.memory_image, generation.device_stream] + [
        generation.disk_base(d) for d in generation.disks
    ]


def chunk_count(size_bytes: int, chunk_size_bytes: int) -> int:
    return -(-size_bytes // chunk_size_bytes)


class OriginStore:
    """The origin's side of every request, on its snapshot store: the TLS
    server below answers peers with it, and the ``local`` transport (the
    origin's store on shared storage) calls it directly.

    Malformed requests raise ProtocolError, refused ones transport.Refused.
    """

    def __init__(
        self,
        store: store_mod.SnapshotStore,
        offers: Callable[[store_mod.Generation], dict[str, Any]] | None = None,
    ) -> None:
        """:param offers: what an OPEN answer says of where the generation
        is published, if this node publishes (publish.Publisher.offer)."""
        self.store = store
        self.offers = offers
        # Peer references and working sets are files rewritten in place:
        # one change at a time, whichever connection asks.
        self._lock = threading.Lock()

    def open(
        self, node: str, generation_id: object, clones: object, key: object
    ) -> dict[str, Any]:
        generation = self._generation(generation_id)
        if not isinstance(key, str):
            raise protocol.ProtocolError("OPEN needs the generation's access key")
        if not generation.admits(key):
            raise transport.Refused(
                f"{node} did not present the access key of generation {generation.id}"
            )
        if (
            not isinstance(clones, list)
            or len(clones) > MAX_CLONES_PER_PEER
            or not all(isinstance(c, str) and len(c) <= 64 for c in clones)
        ):
            raise protocol.ProtocolError("OPEN clones must be a list of clone ids")
        with self._lock:
            self.store.set_peer_reference(
                generation,
                store_mod.PeerReference(
                    node=node,
                    generation=generation.id,
                    clones=sorted(clones),
                    updated_at=datetime.datetime.now(datetime.timezone.utc).isoformat(),
                ),
            )
        LOG.info("Peer %s holds %d clone(s) of %s", node, len(clones), generation.id)
        return {
            "generation": generation.to_json(),
            "file_sizes": [os.stat(p).st_size for p in file_paths(generation)],
            **(self.offers(generation) if self.offers is not None else {}),
        }

    def release(self, node: str, generation_id: object) -> None:
        generation = self.opened(node, generation_id)
        with self._lock:
            self.store.drop_peer_reference(generation, node)
        LOG.info("Peer %s released %s", node, generation.id)

    def working_set(self, node: str, generation_id: object) -> list[int]:
        generation = self.opened(node, generation_id)
        try:
            with open(os.path.join(generation.directory, WORKING_SET_FILE)) as f:
                return transport.chunk_list(json.load(f))
        except FileNotFoundError:
            return []

    def record_working_set(self, node: str, generation_id: object, chunks: object) -> None:
        generation = self.opened(node, generation_id)
        count = len(generation.chunks)
        if (
            not isinstance(chunks, list)
            or len(chunks) > count
            or not all(isinstance(c, int) and 0 <= c < count for c in chunks)
        ):
            raise protocol.ProtocolError("working set must be a list of chunk numbers")
        path = os.path.join(generation.directory, WORKING_SET_FILE)
        with self._lock:
            if os.path.exists(path):  # the first node's recording stays
                return
            store_mod.write_json_atomic(path, chunks)
            LOG.info(
                "Peer %s recorded a working set of %d chunks for %s",
                node,
                len(chunks),
                generation.id,
            )

    def chunk_file(
        self, node: str, generation_id: object, file_number: int, chunks: list[int]
    ) -> tuple[store_mod.Generation, str]:
        """The generation and the path of its file ``file_number``, once the
        request is known to be allowed and within the file."""
        generation = self.opened(node, generation_id)
        paths = file_paths(generation)
        if file_number >= len(paths):
            raise protocol.ProtocolError(f"no file {file_number} in a generation")
        size = os.stat(paths[file_number]).st_size
        if max(chunks) >= chunk_count(size, generation.chunk_size_bytes):
            raise protocol.ProtocolError(
                f"chunk {max(chunks)} is beyond the end of file {file_number}"
            )
        return generation, paths[file_number]

    def opened(self, node: str, generation_id: object) -> store_mod.Generation:
        generation = self._generation(generation_id)
        if not any(p.node == node for p in self.store.peer_references(generation)):
            raise transport.Refused(f"{node} has not opened generation {generation.id}")
        return generation

    def _generation(self, generation_id: object) -> store_mod.Generation:
        if not isinstance(generation_id, str) or len(generation_id) != 32:
            raise protocol.ProtocolError("a generation id is 32 characters")
        if generation_id not in self.store.generation_ids():
            raise transport.Refused(f"no snapshot generation {generation_id} on this node")
        generation = self.store.load(generation_id)
        if generation.origin:
            raise transport.Refused(f"generation {generation_id} was not blessed on this node")
        return generation


def _reason(exc: BaseException) -> str:
    """What went wrong in a handshake, in OpenSSL's words where it has some."""
    if isinstance(exc, ssl.SSLCertVerificationError) and exc.verify_message:
        return f"certificate not accepted: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return exc.reason.replace("_", " ").lower()
    if isinstance(exc, TimeoutError):
        return f"no handshake within {HANDSHAKE_TIMEOUT_S:.0f} s"
    return str(exc) or type(exc).__name__


@functools.lru_cache(maxsize=4)
def _zeros(length: int) -> bytes:
    return bytes(length)


def read_chunk(
    generation: store_mod.Generation,
    file_number: int,
    fd: int,
    chunk: int,
    buffer: bytearray,
    at: int,
) -> int | None:
    """Read a chunk of an open generation file into ``buffer`` at offset
    ``at``: its length, or ``None`` when it is all zeros (memory: known from
    its checksum; disks: a hole or zeros read)."""
    if file_number == protocol.MEMORY_FILE and generation.chunks[chunk] is None:
        return None
    size = generation.chunk_size_bytes
    length = os.preadv(fd, [memoryview(buffer)[at : at + size]], chunk * size)
    if file_number != protocol.MEMORY_FILE and buffer.startswith(_zeros(length), at):
        return None
    return length


class OriginServer:
    """Answers peers' requests for the generations blessed on this node."""

    def __init__(
        self,
        store: store_mod.SnapshotStore,
        stats: stats_mod.Stats,
        ssl_context: ssl.SSLContext,
        offers: Callable[[store_mod.Generation], dict[str, Any]] | None = None,
    ) -> None:
        self.origin = OriginStore(store, offers)
        self.stats = stats
        self._ssl_context = ssl_context
        self._refusals = ratelimit.RateLimitedLog(LOG)
        self._listener: socket.socket | None = None
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)

    def start(self, host: str, port: int) -> socket.socket:
        """Listen on ``host``:``port`` (OSError if it cannot) and serve from
        a thread of its own; returns the listening socket."""
        self._listener = socket.create_server(
            (host, port), family=socket.AF_INET6 if ":" in host else socket.AF_INET
        )
        native.thread_class()(target=self._accept, name="origin-accept", daemon=True).start()
        return self._listener

    def close(self) -> None:
        """Stop accepting; connections end with the process."""
        if self._listener is not None:
            self._listener.close()

    def _accept(self) -> None:
        assert self._listener is not None
        while True:
            try:
                raw, address = self._listener.accept()
            except OSError:
                return  # closed
            if not self._slots.acquire(blocking=False):
                self._refusals.warning(
                    "connections", "Refusing a peer: %d connections already", MAX_CONNECTIONS
                )
                raw.close()
                continue
            native.thread_class()(
                target=self._connection, args=(raw, str(address[0])), daemon=True
            ).start()

    def _connection(self, raw: socket.socket, host: str) -> None:
        try:
            self.handle(raw, host)
        finally:
            self._slots.release()

    def handle(self, raw: socket.socket, host: str) -> None:
        """Serve one connection, from its TLS handshake to its end."""
        raw.settimeout(HANDSHAKE_TIMEOUT_S)
        try:
            sock = self._ssl_context.wrap_socket(raw, server_side=True)
            peer = tls.peer_name(sock.getpeercert())
        except (ssl.SSLError, tls.CertificateError, ConnectionError, TimeoutError) as exc:
            self.stats.count_origin("refused_handshakes")
            self._refusals.warning(
                host, "Refusing a peer: %s in the TLS handshake: %s", host, _reason(exc)
            )
            raw.close()
            return
        LOG.debug("Peer %s connected from %s", peer, host)
        sock.settimeout(IDLE_TIMEOUT_S)
        try:
            self._serve(peer, sock)
        except (ConnectionError, TimeoutError, ssl.SSLError) as exc:
            LOG.debug("Peer %s disconnected: %s", peer, exc)
        except protocol.ProtocolError as exc:
            LOG.warning("Closing the connection of peer %s: %s", peer, exc)
            self.stats.count_origin("malformed_requests")
            with contextlib.suppress(OSError):
                sock.sendall(protocol.encode_json(Kind.ERROR, 0, {"error": str(exc)}))
        finally:
            with contextlib.suppress(OSError):
                sock.close()

    def _serve(self, peer: str, sock: ssl.SSLSocket) -> None:
        buffer = bytearray()  # FETCH replies, one chunk at a time
        while True:
            try:
                kind, _flags, request_id, payload = protocol.read_message(
                    sock, protocol.MAX_REQUEST_BYTES
                )
            except protocol.ConnectionClosed:
                return
            if kind not in protocol.REQUEST_KINDS:
                raise protocol.ProtocolError(f"{kind.name} is not a request")
            try:
                if kind == Kind.FETCH:
                    self._fetch(peer, request_id, payload, sock, buffer)
                else:
                    reply = self._json_request(peer, kind, protocol.decode_json(payload))
                    sock.sendall(protocol.encode_json(Kind.OK, request_id, reply))
            except transport.Refused as exc:
                LOG.warning("Peer %s: %s refused: %s", peer, kind.name, exc)
                self.stats.count_origin("refused_requests")
                sock.sendall(protocol.encode_json(Kind.ERROR, request_id, {"error": str(exc)}))

    def _json_request(self, peer: str, kind: Kind, data: dict[str, Any]) -> dict[str, Any]:
        generation_id = data.get("generation")
        if kind == Kind.OPEN:
            return self.origin.open(peer, generation_id, data.get("clones", []), data.get("key"))
        if kind == Kind.RELEASE:
            self.origin.release(peer, generation_id)
            return {}
        if kind == Kind.GET_WORKING_SET:
            return {"chunks": self.origin.working_set(peer, generation_id)}
        self.origin.record_working_set(peer, generation_id, data.get("chunks"))
        return {}

    def _fetch(
        self,
        peer: str,
        request_id: int,
        payload: bytearray,
        sock: ssl.SSLSocket,
        buffer: bytearray,
    ) -> None:
        """Each chunk is read into ``buffer`` behind its header and sent from
        there: no copy on the way but encryption's."""
        generation_id, file_number, chunks = protocol.decode_fetch(payload)
        generation, path = self.origin.chunk_file(peer, generation_id, file_number, chunks)
        head = protocol.DATA_HEAD_BYTES
        if len(buffer) < head + generation.chunk_size_bytes:
            buffer.extend(bytes(head + generation.chunk_size_bytes - len(buffer)))
        view = memoryview(buffer)
        with open(path, "rb", buffering=0) as f:
            for chunk in chunks:
                length = read_chunk(generation, file_number, f.fileno(), chunk, buffer, head)
                view[:head] = protocol.data_head(request_id, chunk, length)
                sock.sendall(view[: head + (length or 0)])
                self.stats.served(generation.id, peer, length or 0)
