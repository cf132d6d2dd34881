"""Serving this node's generations to the page services of other nodes.

A peer first OPENs a generation, which records a peer reference in the
store (so the generation cannot be discarded under its clones, and an
operator sees which node holds clones of it); only then does it get chunks
of it. Each connection is served in order, so a peer may pipeline requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import logging
import os

from nova_clonedriver.engine import store as store_mod
from nova_clonedriver.pageserver import protocol
from nova_clonedriver.pageserver import stats as stats_mod
from nova_clonedriver.pageserver import tls
from nova_clonedriver.pageserver.protocol import Kind

LOG = logging.getLogger(__name__)

WORKING_SET_FILE = "working-set.json"
MAX_CLONES_PER_PEER = 4096


def file_paths(generation: store_mod.Generation) -> list[str]:
    """The files of a generation by FETCH file number."""
    return ([generation.memory_image, generation.device_stream]
            + [generation.disk_base(d) for d in generation.disks])


def chunk_count(size_bytes: int, chunk_size_bytes: int) -> int:
    return -(-size_bytes // chunk_size_bytes)


class Refused(Exception):
    """A well-formed request this peer may not make; answered with an
    error, the connection stays open."""


class OriginServer:
    """Answers peers' requests for the generations blessed on this node."""

    def __init__(self, store: store_mod.SnapshotStore, stats: stats_mod.Stats) -> None:
        self.store = store
        self.stats = stats

    async def handle(self, reader: asyncio.StreamReader,
                     writer: asyncio.StreamWriter) -> None:
        try:
            peer = tls.peer_name(writer.get_extra_info("peercert"))
        except tls.CertificateError as exc:
            LOG.warning("Refusing a peer: %s", exc)
            writer.close()
            return
        LOG.debug("Peer %s connected", peer)
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

    async def _serve(self, peer: str, reader: asyncio.StreamReader,
                     writer: asyncio.StreamWriter) -> None:
        while True:
            kind, _flags, request_id, payload = await protocol.read_message(
                reader, protocol.MAX_REQUEST_BYTES)
            if kind not in protocol.REQUEST_KINDS:
                raise protocol.ProtocolError(f"{kind.name} is not a request")
            try:
                if kind == Kind.FETCH:
                    await self._fetch(peer, request_id, payload, writer)
                else:
                    reply = await self._json_request(peer, kind, protocol.decode_json(payload))
                    writer.write(protocol.encode_json(Kind.OK, request_id, reply))
            except Refused as exc:
                LOG.warning("Peer %s: %s refused: %s", peer, kind.name, exc)
                self.stats.count_origin("refused_requests")
                writer.write(protocol.encode_json(Kind.ERROR, request_id, {"error": str(exc)}))
            await writer.drain()

    async def _json_request(self, peer: str, kind: Kind, data: dict) -> dict:
        generation = self._local_generation(data.get("generation"))
        if kind == Kind.OPEN:
            clones = data.get("clones", [])
            if (not isinstance(clones, list) or len(clones) > MAX_CLONES_PER_PEER
                    or not all(isinstance(c, str) and len(c) <= 64 for c in clones)):
                raise protocol.ProtocolError("OPEN clones must be a list of clone ids")
            self.store.set_peer_reference(generation, store_mod.PeerReference(
                node=peer, generation=generation.id, clones=sorted(clones),
                updated_at=datetime.datetime.now(datetime.timezone.utc).isoformat()))
            LOG.info("Peer %s holds %d clone(s) of %s", peer, len(clones), generation.id)
            return {"generation": generation.to_json(),
                    "file_sizes": [os.stat(p).st_size for p in file_paths(generation)]}
        self._check_opened(peer, generation)
        path = os.path.join(generation.directory, WORKING_SET_FILE)
        if kind == Kind.RELEASE:
            self.store.drop_peer_reference(generation, peer)
            LOG.info("Peer %s released %s", peer, generation.id)
            return {}
        if kind == Kind.GET_WORKING_SET:
            try:
                with open(path) as f:
                    return {"chunks": json.load(f)}
            except FileNotFoundError:
                return {"chunks": []}
        chunks = data.get("chunks")  # PUT_WORKING_SET
        if (not isinstance(chunks, list) or len(chunks) > len(generation.chunks)
                or not all(isinstance(c, int) and 0 <= c < len(generation.chunks)
                           for c in chunks)):
            raise protocol.ProtocolError("working set must be a list of chunk numbers")
        if not os.path.exists(path):  # the first node's recording stays
            store_mod.write_json_atomic(path, chunks)
            LOG.info("Peer %s recorded a working set of %d chunks for %s",
                     peer, len(chunks), generation.id)
        return {}

    async def _fetch(self, peer: str, request_id: int, payload: bytes,
                     writer: asyncio.StreamWriter) -> None:
        generation_id, file_number, chunks = protocol.decode_fetch(payload)
        generation = self._local_generation(generation_id)
        self._check_opened(peer, generation)
        paths = file_paths(generation)
        if file_number >= len(paths):
            raise protocol.ProtocolError(f"no file {file_number} in a generation")
        path = paths[file_number]
        size = os.stat(path).st_size
        chunk_size = generation.chunk_size_bytes
        if max(chunks) >= chunk_count(size, chunk_size):
            raise protocol.ProtocolError(f"chunk {max(chunks)} is beyond the end of file "
                                         f"{file_number}")
        loop = asyncio.get_running_loop()
        with open(path, "rb", buffering=0) as f:
            for chunk in chunks:
                if file_number == protocol.MEMORY_FILE and generation.chunks[chunk] is None:
                    data = None
                else:
                    data = await loop.run_in_executor(
                        None, os.pread, f.fileno(), chunk_size, chunk * chunk_size)
                    if file_number != protocol.MEMORY_FILE and data.count(0) == len(data):
                        data = None  # a hole or zeros in a disk: nothing to send
                writer.write(protocol.encode_data(request_id, chunk, data))
                self.stats.served(generation.id, peer, 0 if data is None else len(data))
                await writer.drain()

    def _local_generation(self, generation_id: object) -> store_mod.Generation:
        if not isinstance(generation_id, str) or len(generation_id) != 32:
            raise protocol.ProtocolError("a generation id is 32 characters")
        if generation_id not in self.store.generation_ids():
            raise Refused(f"no snapshot generation {generation_id} on this node")
        generation = self.store.load(generation_id)
        if generation.origin:
            raise Refused(f"generation {generation_id} was not blessed on this node")
        return generation

    def _check_opened(self, peer: str, generation: store_mod.Generation) -> None:
        if not any(p.node == peer for p in self.store.peer_references(generation)):
            raise Refused(f"{peer} has not opened generation {generation.id}")

