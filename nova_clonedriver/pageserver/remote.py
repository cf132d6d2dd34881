"""The registry of other nodes' generations presented on this one.

Attaching a generation OPENs it at its origin (which records that this node
holds it), fetches its small device state, and publishes it in the local
snapshot store like a local generation, except that its memory image and
disk bases are links into the FUSE mount. Clones launched from it map those
exactly as they map local files; what their reads fetch is presented.py's.

A periodic reconcile tells origins which clones this node runs, and releases
a generation (at the origin and in the cache) once no clone here has used
it for ``release_idle_s``. A prefetch at attach, or a background completion,
fetches all or the recorded working set ahead of the clones.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import shutil
import ssl
import time
from typing import Any

from nova_clonedriver.engine import qemuimg
from nova_clonedriver.engine import store as store_mod
from nova_clonedriver.pageserver import cache as cache_mod
from nova_clonedriver.pageserver import objectfetch
from nova_clonedriver.pageserver import objectstore
from nova_clonedriver.pageserver import origin as origin_mod
from nova_clonedriver.pageserver import presented as presented_mod
from nova_clonedriver.pageserver import protocol
from nova_clonedriver.pageserver import stats as stats_mod
from nova_clonedriver.pageserver import transport

LOG = logging.getLogger(__name__)

PREFETCH_CHOICES = ("none", "working-set", "full")
MEMORY_FILE_NAME = store_mod.MEMORY_IMAGE_FILE
BACKGROUND_RETRY_S = 10.0  # while the origin is unreachable
BACKGROUND_BATCH_CHUNKS = 16


class AttachError(RuntimeError):
    pass


@dataclasses.dataclass
class Settings:
    mount_dir: str
    cache_dir: str
    fetch_timeout_s: float = 60
    max_inflight_fetches: int = 8
    connections_per_origin: int = 2
    working_set_window_s: float = 20
    background_fetch_mib_per_s: int = 0
    release_idle_s: float = 300
    readahead_max_chunks: int = 32


class RemoteGenerations:
    def __init__(
        self,
        store: store_mod.SnapshotStore,
        stats: stats_mod.Stats,
        node: str,
        ssl_context: ssl.SSLContext,
        settings: Settings,
        objects: objectstore.ObjectStore | None = None,
    ) -> None:
        """:param objects: the object store this node reads generations
        from where their origins published them (objectfetch.py)."""
        self.store = store
        self.objects = objects
        self.stats = stats
        self.settings = settings
        self._transport_context = transport.Context(
            node=node,
            ssl_context=ssl_context,
            timeout_s=settings.fetch_timeout_s,
            max_inflight=settings.max_inflight_fetches,
            connections=settings.connections_per_origin,
        )
        self._origins: dict[str, transport.Transport] = {}
        self._presented: dict[str, presented_mod.Presented] = {}
        self._attach_lock = asyncio.Lock()

    def get(self, generation_id: str) -> presented_mod.Presented | None:
        """The generation if it is presented here."""
        return self._presented.get(generation_id)

    def generation_ids(self) -> list[str]:
        return sorted(self._presented)

    def close(self) -> None:
        for presented in self._presented.values():
            presented.close()

    def load_existing(self) -> None:
        """Present again what this node held before a restart; cache marks
        that cannot be trusted are dropped (those chunks are fetched again)."""
        for generation_id in self.store.generation_ids():
            try:
                generation = self.store.load(generation_id)
            except store_mod.GenerationNotFound as exc:
                LOG.error("Skipping a damaged generation: %s", exc)
                continue
            if not generation.origin:
                continue
            try:
                presented = self._present(generation, self._file_sizes(generation))
            except OSError as exc:  # its cache is gone: attach it anew
                LOG.error(
                    "Cannot present %s of %s again (%s); dropping it",
                    generation.id,
                    generation.origin,
                    exc,
                )
                with contextlib.suppress(store_mod.GenerationInUse):
                    self.store.remove_generation(generation)
                continue
            dropped = presented.forget_unverifiable()
            LOG.info(
                "Presenting %s of %s again (%d cached chunks to fetch again)",
                generation.id,
                generation.origin,
                dropped,
            )

    async def attach(
        self, generation_id: str, origin: str, key: str, prefetch: str = "none"
    ) -> dict[str, Any]:
        """Make a generation of ``origin`` launchable here; ``prefetch``
        fetches its working set or all of it before returning. ``key``: its
        access key; a generation already here is checked against it too, so
        the key is needed every time."""
        if prefetch not in PREFETCH_CHOICES:
            raise AttachError(f"prefetch must be one of {', '.join(PREFETCH_CHOICES)}")
        async with self._attach_lock:
            if generation_id in self.store.generation_ids():
                generation = self.store.load(generation_id)
                if not generation.origin:
                    return {"generation": generation_id, "local": True}
                if generation.origin != origin:
                    raise AttachError(
                        f"generation {generation_id} is already here, "
                        f"from {generation.origin}, not {origin}"
                    )
                if not generation.admits(key):
                    raise AttachError(f"that is not the access key of generation {generation_id}")
            else:
                await self._import(generation_id, origin, key)
        presented = self._presented[generation_id]
        presented.last_used = time.monotonic()
        result: dict[str, Any] = {
            "generation": generation_id,
            "local": False,
            "prefetch": prefetch,
        }
        if prefetch != "none":
            presented.attaching += 1
            try:
                result.update(await self._prefetch(presented, prefetch))
            finally:
                presented.attaching -= 1
        return result

    async def release(self, generation_id: str) -> None:
        presented = self._presented.get(generation_id)
        if presented is None:
            raise AttachError(f"generation {generation_id} is not presented here")
        generation = presented.generation
        if presented.open_handles:
            raise store_mod.GenerationInUse(
                f"generation {generation_id} has {presented.open_handles} open file(s)"
            )
        self.store.remove_generation(generation)  # refused while clones use it
        del self._presented[generation_id]
        presented.close()
        shutil.rmtree(os.path.join(self.settings.cache_dir, generation_id), ignore_errors=True)
        self.stats.remote.pop(generation_id, None)
        try:
            await presented.origin.release(generation_id)
        except Exception as exc:
            LOG.warning(
                "Released %s here, but its origin %s was not told: %s",
                generation_id,
                presented.origin.address,
                exc,
            )
        LOG.info("Released generation %s of %s", generation_id, presented.origin.address)

    async def reconcile(self) -> None:
        """Tell origins which clones run here; release what none uses."""
        for generation_id, presented in list(self._presented.items()):
            clones = sorted(r.uuid for r in self.store.references(presented.generation))
            if clones:
                presented.last_used = time.monotonic()
            if clones != presented.told_clones or presented.origin.wants_open(generation_id):
                try:
                    await presented.origin.open(
                        generation_id, clones, presented.generation.access_key
                    )
                    presented.told_clones = clones
                except Exception as exc:
                    LOG.warning(
                        "Could not tell %s about the clones of %s: %s",
                        presented.origin.address,
                        generation_id,
                        exc,
                    )
            if presented.busy():
                presented.last_used = time.monotonic()
            idle_s = time.monotonic() - presented.last_used
            if not clones and idle_s >= self.settings.release_idle_s:
                LOG.info("No clone has used %s for %.0f s", generation_id, idle_s)
                await self.release(generation_id)

    def stats_json(self) -> dict[str, Any]:
        data = self.stats.to_json()
        for generation_id, presented in self._presented.items():
            entry = data["remote"].setdefault(generation_id, {})
            entry.update(presented.cache_json())
            if isinstance(presented.origin, objectfetch.ObjectStoreTransport):
                entry.update(presented.origin.counters.get(generation_id, {}))
        return data

    async def _import(self, generation_id: str, origin: str, key: str) -> None:
        try:
            source = self._transport(origin)
            reply = await source.open(generation_id, [], key)
        except ValueError as exc:  # a bad origin address
            raise AttachError(str(exc)) from exc
        except transport.Refused as exc:
            raise AttachError(
                f"origin {origin} refused generation {generation_id}: {exc}"
            ) from exc
        except transport.Unavailable as exc:
            raise AttachError(str(exc)) from exc
        except transport.Malformed as exc:
            raise AttachError(f"origin {origin} sent inconsistent metadata: {exc}") from exc
        generation, sizes = reply.generation, reply.file_sizes
        if generation.id != generation_id or len(sizes) != 2 + len(generation.disks):
            raise AttachError(f"origin {origin} sent inconsistent metadata")
        generation.origin = origin
        partial = self.store.new_generation_dir(generation_id)
        try:
            await self._fetch_device_stream(source, generation, sizes[1], partial)
            generation.directory = partial
            for name, path in self._links(generation).items():
                os.makedirs(os.path.dirname(path), exist_ok=True)
                os.symlink(os.path.join(self.settings.mount_dir, generation_id, name), path)
            self.store.publish(generation, partial)
        except BaseException:
            self.store.discard_partial(partial)
            with contextlib.suppress(Exception):
                await source.release(generation_id)
            raise
        presented = self._present(generation, sizes)
        try:
            await self._check_backing_files(generation)
            recorded = await source.working_set(generation_id)
        except (AttachError, transport.Unavailable, transport.Refused):
            await self.release(generation_id)
            raise
        if not recorded and self.settings.working_set_window_s:
            # This node's first clones define it.
            presented.record_working_set(self.settings.working_set_window_s)
        LOG.info(
            "Presenting generation %s of %s (%d MiB of memory, %d disk(s))",
            generation_id,
            origin,
            generation.memory_bytes >> 20,
            len(generation.disks),
        )

    async def _fetch_device_stream(
        self,
        source: transport.Transport,
        generation: store_mod.Generation,
        size: int,
        directory: str,
    ) -> None:
        count = origin_mod.chunk_count(size, generation.chunk_size_bytes)
        chunks: dict[int, transport.Chunk | None] = {}
        step = protocol.MAX_CHUNKS_PER_FETCH
        for start in range(0, count, step):
            chunks.update(
                await source.fetch(
                    generation.id,
                    protocol.DEVICE_FILE,
                    list(range(start, min(count, start + step))),
                )
            )
        path = os.path.join(directory, store_mod.DEVICE_STREAM_FILE)
        with open(path, "wb") as f:
            for chunk in range(count):
                length = min(
                    generation.chunk_size_bytes, size - chunk * generation.chunk_size_bytes
                )
                data = chunks[chunk]
                f.write(data if data is not None else bytes(length))
        if store_mod.sha256_file(path) != generation.device_stream_sha256:
            raise AttachError(
                f"the device state of {generation.id} from {source.address} fails its checksum"
            )

    def _links(self, generation: store_mod.Generation) -> dict[str, str]:
        """FUSE file name -> the store path that links to it."""
        links = {MEMORY_FILE_NAME: generation.memory_image}
        for disk in generation.disks:
            links[os.path.basename(disk["base"])] = generation.disk_base(disk)
        return links

    def _file_sizes(self, generation: store_mod.Generation) -> list[int]:
        cached = os.path.join(self.settings.cache_dir, generation.id)
        sizes = [generation.memory_bytes, os.stat(generation.device_stream).st_size]
        for number in range(len(generation.disks)):
            sizes.append(
                os.stat(os.path.join(cached, f"file-{protocol.DISK_BASE_FILE + number}")).st_size
            )
        return sizes

    def _present(
        self, generation: store_mod.Generation, sizes: list[int]
    ) -> presented_mod.Presented:
        directory = os.path.join(self.settings.cache_dir, generation.id)
        os.makedirs(directory, exist_ok=True)
        files: dict[int, cache_mod.CachedFile] = {}
        names: dict[str, int] = {}
        for number, name in enumerate(self._links(generation)):
            file_number = protocol.MEMORY_FILE if number == 0 else number + 1
            files[file_number] = cache_mod.CachedFile(
                os.path.join(directory, f"file-{file_number}"),
                sizes[file_number],
                generation.chunk_size_bytes,
                generation.chunks if file_number == protocol.MEMORY_FILE else None,
            )
            names[name] = file_number
        presented = presented_mod.Presented(
            generation,
            self._transport(generation.origin),
            files,
            names,
            self.stats.remote[generation.id],
            self.settings.readahead_max_chunks,
        )
        if self.settings.background_fetch_mib_per_s:
            presented.background = asyncio.get_running_loop().create_task(
                self._complete_in_background(presented)
            )
        self._presented[generation.id] = presented
        return presented

    async def _prefetch(self, presented: presented_mod.Presented, prefetch: str) -> dict[str, Any]:
        started = time.monotonic()
        before = presented.stats.counters["bytes_fetched"]
        if prefetch == "full":
            wanted = presented.missing()
        else:
            wanted = {
                protocol.MEMORY_FILE: await presented.origin.working_set(presented.generation.id)
            }
        await asyncio.gather(*(presented.ensure(n, c, bulk=True) for n, c in wanted.items() if c))
        elapsed_ms = (time.monotonic() - started) * 1000
        fetched = presented.stats.counters["bytes_fetched"] - before
        presented.stats.counters["prefetched_bytes"] += fetched
        LOG.info(
            "Prefetched %s of %s (%s): %.1f MiB in %.0f ms",
            prefetch,
            presented.generation.id,
            presented.origin.address,
            fetched / 2**20,
            elapsed_ms,
        )
        return {
            "prefetched_chunks": sum(len(c) for c in wanted.values()),
            "prefetched_mib": round(fetched / 2**20, 1),
            "prefetch_ms": round(elapsed_ms, 1),
        }

    async def _complete_in_background(self, presented: presented_mod.Presented) -> None:
        """Fetch what is missing at ``background_fetch_mib_per_s``. While the
        origin is unreachable, wait for it; a batch that fails otherwise (a
        damaged chunk) is left for clones to ask for. The fetcher logs each
        failure."""
        rate = self.settings.background_fetch_mib_per_s * 2**20
        for number, missing in presented.missing().items():
            for start in range(0, len(missing), BACKGROUND_BATCH_CHUNKS):
                batch = missing[start : start + BACKGROUND_BATCH_CHUNKS]
                while True:
                    try:
                        await presented.ensure(number, batch, bulk=True)
                        break
                    except transport.Unavailable:  # wait for the origin
                        await asyncio.sleep(BACKGROUND_RETRY_S)
                    except Exception:  # a damaged chunk: left for clones
                        break
                await asyncio.sleep(len(batch) * presented.chunk_size_bytes(number) / rate)
        left = sum(len(chunks) for chunks in presented.missing().values())
        if left:
            LOG.warning(
                "Background fetch of %s ended with %d chunks missing",
                presented.generation.id,
                left,
            )
        else:
            LOG.info("Generation %s is complete in the cache", presented.generation.id)

    async def _check_backing_files(self, generation: store_mod.Generation) -> None:
        """A qcow2 base may have a backing file (a nova master's image in the
        image cache); it must exist here under the same path."""
        loop = asyncio.get_running_loop()
        for disk in generation.disks:
            if disk["format"] != "qcow2":
                continue
            backing = await loop.run_in_executor(
                None, qemuimg.backing_file, generation.disk_base(disk)
            )
            if backing and not os.path.exists(backing):
                raise AttachError(
                    f"disk {disk['target']} of generation {generation.id} has the "
                    f"backing file {backing}, which this node does not have"
                )

    def _transport(self, origin: str) -> transport.Transport:
        if origin not in self._origins:
            source = transport.load(origin, self._transport_context)
            if self.objects is not None:
                source = objectfetch.ObjectStoreTransport(
                    source, self.objects, self.settings.cache_dir
                )
            self._origins[origin] = source
        return self._origins[origin]
