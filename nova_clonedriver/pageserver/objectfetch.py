"""A remote generation's chunks from the object store its origin published
it to.

Wraps the transport to the origin: OPEN, RELEASE and working sets still go
to the origin, and so do fetches of generations it has not offered from
the store (not published yet, or published to a store this node does not
use). Chunks of an offered generation come from the store, sealed (see
objectstore.py); one that cannot be had or opened there is fetched from
the origin instead, and the failure logged and counted. What the origin
offered is kept beside the generation's cache (mode 0600: it holds the
key), so that a restarted page service reads from the store while the
origin is gone.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import json
import logging
import os
from typing import Any

from nova_clonedriver.engine import store as store_mod
from nova_clonedriver.pageserver import objectstore
from nova_clonedriver.pageserver import protocol
from nova_clonedriver.pageserver import ratelimit
from nova_clonedriver.pageserver import transport

LOG = logging.getLogger(__name__)

OFFER_FILE = "object-store.json"
GET_THREADS = 8


class ObjectStoreTransport(transport.Transport):
    def __init__(
        self, origin: transport.Transport, objects: objectstore.ObjectStore, records_dir: str
    ) -> None:
        """:param records_dir: where generations' caches are (the offer of
        generation G is kept in ``records_dir/G``)."""
        super().__init__(origin.location, origin.context)
        self.origin = origin
        self.objects = objects
        self._records_dir = records_dir
        self._offers: dict[str, dict[str, Any]] = {}
        self._pending: set[str] = set()  # offered once published
        self._pool = concurrent.futures.ThreadPoolExecutor(GET_THREADS, "object-get")
        self._failures = ratelimit.RateLimitedLog(LOG)
        self.counters: dict[str, collections.Counter[str]] = collections.defaultdict(
            collections.Counter
        )

    @property
    def address(self) -> str:
        return self.origin.address

    def wants_open(self, generation_id: str) -> bool:
        """Whether the origin said the generation is being published: an
        OPEN later gets the offer."""
        return generation_id in self._pending

    async def open(self, generation_id: str, clones: list[str], key: str) -> transport.Opened:
        reply = await self.origin.open(generation_id, clones, key)
        offer = reply.object_store
        if offer is not None and offer["store"] == self.objects.name:
            self._keep(generation_id, offer)
            self._pending.discard(generation_id)
        elif reply.object_store_pending:
            self._pending.add(generation_id)
        return reply

    async def fetch(
        self, generation_id: str, file_number: int, chunks: list[int]
    ) -> dict[int, transport.Chunk | None]:
        offer = self._offer(generation_id)
        if offer is None or file_number == protocol.DEVICE_FILE:
            return await self.origin.fetch(generation_id, file_number, chunks)
        zero = set(offer["zero_chunks"].get(str(file_number), []))
        result: dict[int, transport.Chunk | None] = {c: None for c in chunks if c in zero}
        wanted = [c for c in chunks if c not in zero]
        loop = asyncio.get_running_loop()
        got = await asyncio.gather(
            *(
                loop.run_in_executor(
                    self._pool, self._get, generation_id, offer, file_number, chunk
                )
                for chunk in wanted
            ),
            return_exceptions=True,
        )
        counters = self.counters[generation_id]
        missing = []
        for chunk, data in zip(wanted, got, strict=True):
            if isinstance(data, bytes):
                result[chunk] = data
                counters["chunks_from_object_store"] += 1
                counters["bytes_from_object_store"] += len(data)
                continue
            if not isinstance(data, Exception):
                raise data  # cancelled
            counters["object_store_failures"] += 1
            self._failures.warning(
                generation_id,
                "Chunk %d of file %d of %s from the object store failed (%s); "
                "fetching it from its origin %s",
                chunk,
                file_number,
                generation_id,
                data,
                self.origin.address,
            )
            missing.append(chunk)
        if missing:
            result.update(await self.origin.fetch(generation_id, file_number, missing))
        return result

    def _get(
        self, generation_id: str, offer: dict[str, Any], file_number: int, chunk: int
    ) -> bytes:
        sealed = self.objects.get(offer["container"], objectstore.object_name(file_number, chunk))
        return objectstore.unseal(offer["key"], generation_id, file_number, chunk, sealed)

    async def release(self, generation_id: str) -> None:
        self._offers.pop(generation_id, None)
        self._pending.discard(generation_id)
        self.counters.pop(generation_id, None)
        await self.origin.release(generation_id)

    async def working_set(self, generation_id: str) -> list[int]:
        return await self.origin.working_set(generation_id)

    async def record_working_set(self, generation_id: str, chunks: list[int]) -> None:
        await self.origin.record_working_set(generation_id, chunks)

    async def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        await self.origin.close()

    def _path(self, generation_id: str) -> str:
        return os.path.join(self._records_dir, generation_id, OFFER_FILE)

    def _keep(self, generation_id: str, offer: dict[str, Any]) -> None:
        if self._offers.get(generation_id) == offer:
            return
        os.makedirs(os.path.dirname(self._path(generation_id)), exist_ok=True)
        store_mod.write_json_atomic(self._path(generation_id), offer, mode=0o600)
        self._offers[generation_id] = offer
        LOG.info(
            "Generation %s: chunks from the %s object store (%s) from now on",
            generation_id,
            offer["store"],
            offer["container"],
        )

    def _offer(self, generation_id: str) -> dict[str, Any] | None:
        if generation_id not in self._offers:
            try:
                with open(self._path(generation_id)) as f:
                    offer = objectstore.offer_from_json(json.load(f))
            except (OSError, ValueError):
                return None
            if offer is None or offer["store"] != self.objects.name:
                return None
            self._offers[generation_id] = offer
        return self._offers[generation_id]
