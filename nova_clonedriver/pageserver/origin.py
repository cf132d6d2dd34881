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

import asyncio
import contextlib
import datetime
import json
import logging
import os
import ssl
from typing import Any

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

    def __init__(self, store: store_mod.SnapshotStore) -> None:
        self.store = store

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
        }

    def release(self, node: str, generation_id: object) -> None:
        generation = self.opened(node, generation_id)
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
        if not os.path.exists(path):  # the first node's recording stays
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


def read_chunk(
    generation: store_mod.Generation, file_number: int, fd: int, chunk: int
) -> bytes | None:
    """A chunk of an open generation file; ``None`` when it is all zeros
    (memory: known from its checksum; disks: a hole or zeros read)."""
    if file_number == protocol.MEMORY_FILE and generation.chunks[chunk] is None:
        return None
    size = generation.chunk_size_bytes
    data = os.pread(fd, size, chunk * size)
    if file_number != protocol.MEMORY_FILE and data.count(0) == len(data):
        return None
    return data


class OriginServer:
    """Answers peers' requests for the generations blessed on this node."""

    def __init__(
        self,
        store: store_mod.SnapshotStore,
        stats: stats_mod.Stats,
        ssl_context: ssl.SSLContext,
    ) -> None:
        self.origin = OriginStore(store)
        self.stats = stats
        self._ssl_context = ssl_context
        self._refusals = ratelimit.RateLimitedLog(LOG)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Serve one connection: the TLS handshake here rather than in
        asyncio's server, which would drop a failed one without a word."""
        address = writer.get_extra_info("peername")
        host = str(address[0]) if address else "?"
        try:
            await writer.start_tls(self._ssl_context, ssl_handshake_timeout=HANDSHAKE_TIMEOUT_S)
            peer = tls.peer_name(writer.get_extra_info("peercert"))
        except (ssl.SSLError, tls.CertificateError, ConnectionError, TimeoutError) as exc:
            self.stats.count_origin("refused_handshakes")
            self._refusals.warning(
                host, "Refusing a peer: %s in the TLS handshake: %s", host, _reason(exc)
            )
            writer.close()
            return
        LOG.debug("Peer %s connected from %s", peer, host)
        try:
            await self._serve(peer, reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError):
            LOG.debug("Peer %s disconnected", peer)
        except protocol.ProtocolError as exc:
            LOG.warning("Closing the connection of peer %s: %s", peer, exc)
            self.stats.count_origin("malformed_requests")
            writer.write(protocol.encode_json(Kind.ERROR, 0, {"error": str(exc)}))
            with contextlib.suppress(ConnectionError):
                await writer.drain()
        finally:
            writer.close()

    async def _serve(
        self, peer: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        while True:
            kind, _flags, request_id, payload = await protocol.read_message(
                reader, protocol.MAX_REQUEST_BYTES
            )
            if kind not in protocol.REQUEST_KINDS:
                raise protocol.ProtocolError(f"{kind.name} is not a request")
            try:
                if kind == Kind.FETCH:
                    await self._fetch(peer, request_id, payload, writer)
                else:
                    reply = await self._json_request(peer, kind, protocol.decode_json(payload))
                    writer.write(protocol.encode_json(Kind.OK, request_id, reply))
            except transport.Refused as exc:
                LOG.warning("Peer %s: %s refused: %s", peer, kind.name, exc)
                self.stats.count_origin("refused_requests")
                writer.write(protocol.encode_json(Kind.ERROR, request_id, {"error": str(exc)}))
            await writer.drain()

    async def _json_request(self, peer: str, kind: Kind, data: dict[str, Any]) -> dict[str, Any]:
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

    async def _fetch(
        self, peer: str, request_id: int, payload: bytes, writer: asyncio.StreamWriter
    ) -> None:
        generation_id, file_number, chunks = protocol.decode_fetch(payload)
        generation, path = self.origin.chunk_file(peer, generation_id, file_number, chunks)
        loop = asyncio.get_running_loop()
        with open(path, "rb", buffering=0) as f:
            for chunk in chunks:
                data = await loop.run_in_executor(
                    None, read_chunk, generation, file_number, f.fileno(), chunk
                )
                writer.write(protocol.encode_data(request_id, chunk, data))
                self.stats.served(generation.id, peer, 0 if data is None else len(data))
                await writer.drain()
