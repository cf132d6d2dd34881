"""Publishing the generations blessed on this node to the object store.

A thread of the page service's own looks at the store every
``reconcile_interval_s``: each local generation not published yet is put
into a container of its own (memory and disk chunks, sealed with a key made
for it; chunks of zeros are not stored but listed), and the container of a
generation that is gone (discarded) is deleted. The record of a
publication (container, key, zero chunks, whether it is complete) is a
file of root's under ``<state_dir>/published``; OPEN answers offer it to
peers once it is complete (origin.py).
"""

from __future__ import annotations

import concurrent.futures
import json
import logging
import os
import threading
import time
from typing import Any

from nova_clonedriver.engine import store as store_mod
from nova_clonedriver.pageserver import objectstore
from nova_clonedriver.pageserver import origin as origin_mod
from nova_clonedriver.pageserver import protocol

LOG = logging.getLogger(__name__)

RECORDS_DIR = "published"
CONTAINER_PREFIX = "nova-clone-"
UPLOAD_THREADS = 4


def container_of(generation_id: str) -> str:
    return CONTAINER_PREFIX + generation_id


class Publisher:
    def __init__(
        self,
        store: store_mod.SnapshotStore,
        objects: objectstore.ObjectStore,
        published: dict[str, dict[str, Any]],
    ) -> None:
        """:param published: the stats' record of publications (generation
        -> chunks, bytes, complete), kept up to date here."""
        self.store = store
        self.objects = objects
        self.published = published
        self.records_dir = os.path.join(store.state_dir, RECORDS_DIR)
        os.makedirs(self.records_dir, mode=0o700, exist_ok=True)
        self._lock = threading.Lock()

    def offer(self, generation: store_mod.Generation) -> dict[str, Any]:
        """What an OPEN answer says of the generation's publication: where
        and how to read it once it is complete, else that it is coming."""
        record = self._record(generation.id)
        if record is None or not record["complete"]:
            return {"object_store_pending": True}
        return {
            "object_store": {
                "store": self.objects.name,
                "container": record["container"],
                "key": record["key"],
                "zero_chunks": record["zero_chunks"],
            }
        }

    def reconcile(self) -> None:
        """Publish what is not published, unpublish what is gone; a failure
        is logged and tried again next time."""
        local = {}
        for generation_id in self.store.generation_ids():
            try:
                generation = self.store.load(generation_id)
            except store_mod.GenerationNotFound:
                continue
            if not generation.origin:
                local[generation_id] = generation
        for generation in local.values():
            record = self._record(generation.id)
            if record is None or not record["complete"]:
                try:
                    self._publish(generation, record)
                except (objectstore.StoreError, OSError) as exc:
                    LOG.warning("Publishing %s to the object store failed: %s", generation.id, exc)
        for name in os.listdir(self.records_dir):
            generation_id = name.removesuffix(".json")
            if name.endswith(".json") and generation_id not in local:
                try:
                    self._unpublish(generation_id)
                except objectstore.StoreError as exc:
                    LOG.warning("Unpublishing %s failed: %s", generation_id, exc)

    def _record(self, generation_id: str) -> dict[str, Any] | None:
        path = os.path.join(self.records_dir, f"{generation_id}.json")
        with self._lock:
            try:
                with open(path) as f:
                    record: dict[str, Any] = json.load(f)
            except FileNotFoundError:
                return None
        return record

    def _write(self, generation_id: str, record: dict[str, Any]) -> None:
        with self._lock:
            store_mod.write_json_atomic(
                os.path.join(self.records_dir, f"{generation_id}.json"), record, mode=0o600
            )

    def _publish(self, generation: store_mod.Generation, record: dict[str, Any] | None) -> None:
        started = time.monotonic()
        if record is None:  # the key is kept before anything is stored under it
            record = {
                "container": container_of(generation.id),
                "key": objectstore.new_key(),
                "zero_chunks": {},
                "complete": False,
            }
            self._write(generation.id, record)
        self.objects.create_container(record["container"])
        counts = self.published.setdefault(generation.id, {})
        counts.update(chunks=0, bytes=0, complete=False)
        zero_chunks: dict[str, list[int]] = {}
        with concurrent.futures.ThreadPoolExecutor(UPLOAD_THREADS) as pool:
            uploads: set[concurrent.futures.Future[int]] = set()
            for file_number, path in enumerate(origin_mod.file_paths(generation)):
                if file_number == protocol.DEVICE_FILE:
                    continue  # peers get it from the origin at attach
                size = os.stat(path).st_size
                with open(path, "rb", buffering=0) as f:
                    for chunk in range(origin_mod.chunk_count(size, generation.chunk_size_bytes)):
                        buffer = bytearray(generation.chunk_size_bytes)
                        length = origin_mod.read_chunk(
                            generation, file_number, f.fileno(), chunk, buffer, 0
                        )
                        if length is None:
                            if file_number != protocol.MEMORY_FILE:  # memory: from checksums
                                zero_chunks.setdefault(str(file_number), []).append(chunk)
                            continue
                        del buffer[length:]
                        if len(uploads) >= 2 * UPLOAD_THREADS:
                            done, uploads = concurrent.futures.wait(
                                uploads, return_when=concurrent.futures.FIRST_COMPLETED
                            )
                            self._count(counts, done)
                        uploads.add(
                            pool.submit(
                                self._upload, generation.id, record, file_number, chunk, buffer
                            )
                        )
            self._count(counts, concurrent.futures.wait(uploads).done)
        record.update(zero_chunks=zero_chunks, complete=True)
        self._write(generation.id, record)
        counts["complete"] = True
        LOG.info(
            "Published generation %s to the %s object store (%s): %d chunks, %.1f MiB in %.1f s",
            generation.id,
            self.objects.name,
            record["container"],
            counts["chunks"],
            counts["bytes"] / 2**20,
            time.monotonic() - started,
        )

    def _upload(
        self,
        generation_id: str,
        record: dict[str, Any],
        file_number: int,
        chunk: int,
        data: bytearray,
    ) -> int:
        sealed = objectstore.seal(record["key"], generation_id, file_number, chunk, data)
        self.objects.put(record["container"], objectstore.object_name(file_number, chunk), sealed)
        return len(sealed)

    @staticmethod
    def _count(counts: dict[str, Any], done: set[concurrent.futures.Future[int]]) -> None:
        for future in done:
            counts["bytes"] += future.result()  # raises what the upload raised
            counts["chunks"] += 1

    def _unpublish(self, generation_id: str) -> None:
        record = self._record(generation_id)
        if record is not None:
            self.objects.delete_container(record["container"])
        os.unlink(os.path.join(self.records_dir, f"{generation_id}.json"))
        self.published.pop(generation_id, None)
        LOG.info("Generation %s is gone: deleted it from the object store", generation_id)
