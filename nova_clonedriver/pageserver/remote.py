"""Generations of other nodes, presented on this one.

Attaching a generation OPENs it at its origin (which records that this node
holds it), fetches its small device state, and publishes it in the local
snapshot store like a local generation, except that its memory image and
disk bases are links into the FUSE mount. Clones launched from it map those
exactly as they map local files; each read the FUSE file system gets turns
into ``ensure()`` here, which fetches missing chunks (once, however many
clones ask) into the node's cache.

Clones read their memory mostly in ascending order (a guest's big
allocations are physically contiguous runs), so a reader found reading
chunk after chunk (``READ_AHEAD_AFTER_CHUNKS`` of them) gets the chunks
ahead of it fetched before it asks: read-ahead, with a window doubling up
to ``readahead_max_chunks`` while the run goes on. Several interleaved
readers (clones, vCPUs) are followed apart.

A periodic reconcile tells origins which clones this node runs, and releases
a generation (at the origin and in the cache) once no clone here has used
it for ``release_idle_s``.
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
from nova_clonedriver.pageserver import origin as origin_mod
from nova_clonedriver.pageserver import protocol
from nova_clonedriver.pageserver import stats as stats_mod
from nova_clonedriver.pageserver import transport

LOG = logging.getLogger(__name__)

PREFETCH_CHOICES = ("none", "working-set", "full")
MEMORY_FILE_NAME = store_mod.MEMORY_IMAGE_FILE
BACKGROUND_BATCH_CHUNKS = 16
BULK_REQUEST_CHUNKS = 16  # per FETCH of a prefetch: several in flight at once
READ_STREAMS_PER_FILE = 8  # sequential readers followed at once, per file
# A run of this many chunks before read-ahead starts: while a clone starts,
# its guest reads short runs (2-4 chunks) that read-ahead would overshoot.
READ_AHEAD_AFTER_CHUNKS = 5


class AttachError(RuntimeError):
    pass


@dataclasses.dataclass
class Settings:
    mount_dir: str
    cache_dir: str
    fetch_timeout_s: float = 60
    max_inflight_fetches: int = 8
    working_set_window_s: float = 20
    background_fetch_mib_per_s: int = 0
    release_idle_s: float = 300
    readahead_max_chunks: int = 16


@dataclasses.dataclass
class _ReadStream:
    """A sequential reader of one file: the last chunk it read, how far
    ahead of it to fetch, and up to where that was asked for already."""
    last_chunk: int
    run_chunks: int = 1
    window_chunks: int = 0
    ahead_until: int = -1


class Presented:
    """One remote generation on this node: its cached files by FETCH file
    number (the device state is a plain local file, so it has none)."""

    def __init__(self, generation: store_mod.Generation, origin: transport.Transport,
                 files: dict[int, cache_mod.CachedFile], names: dict[str, int],
                 stats: stats_mod.GenerationStats, working_set_window_s: float,
                 readahead_max_chunks: int) -> None:
        self.generation = generation
        self.window_s = working_set_window_s
        self.readahead_max_chunks = readahead_max_chunks
        self.origin = origin
        self.files = files
        self.names = names  # file name in the FUSE folder -> file number
        self.stats = stats
        self.told_clones: list[str] | None = None
        self.open_handles = 0  # FUSE opens: QEMU processes mapping its files
        self.attaching = 0  # attach calls (prefetches) under way
        self.last_used = time.monotonic()
        self.recording: list[int] | None = None
        self.record_until = 0.0
        self._inflight: dict[tuple[int, int], asyncio.Future] = {}
        self._streams: dict[int, list[_ReadStream]] = {}  # most recent first
        self._read_ahead_tasks: set[asyncio.Task] = set()
        self.background: asyncio.Task | None = None

    def busy(self) -> bool:
        """Whether files are open, chunks on their way or an attach under way."""
        return bool(self.open_handles or self._inflight or self.attaching)

    async def ensure(self, file_number: int, chunks: list[int], bulk: bool = False) -> None:
        """Return once all ``chunks`` of the file are in the cache; raises
        transport.Unavailable, transport.Refused or CorruptChunk when they
        cannot be.
        ``bulk`` (prefetch, background completion): many chunks, sent as
        several pipelined requests, and kept out of the latency samples,
        which are those of the reads clones wait for."""
        self.last_used = time.monotonic()
        waits, wanted = self._claim(file_number, chunks)
        if wanted and file_number == protocol.MEMORY_FILE and self.recording is not None:
            self._record(wanted)
        # The fetch of what is read is queued before read-ahead's, so that
        # its request goes first.
        fetching = (asyncio.ensure_future(self._fetch_all(file_number, wanted, bulk))
                    if wanted else None)
        if not bulk:
            self._read_ahead(file_number, chunks[0], chunks[-1])
        if fetching is not None:
            await fetching
        for future in waits:
            await future

    async def _fetch_all(self, file_number: int, chunks: list[int], bulk: bool) -> None:
        step = BULK_REQUEST_CHUNKS if bulk else protocol.MAX_CHUNKS_PER_FETCH
        await asyncio.gather(*(self._fetch(file_number, chunks[i:i + step], bulk)
                               for i in range(0, len(chunks), step)))

    def _claim(self, file_number: int, chunks: list[int], counted: bool = True
               ) -> tuple[list[asyncio.Future], list[int]]:
        """The futures to wait for until ``chunks`` are cached, and the
        chunks nobody fetches yet (the caller must fetch them). ``counted``:
        a clone asked for them (cache hits and waits go into the stats)."""
        cached = self.files[file_number]
        waits, wanted = [], []
        for chunk in chunks:
            if cached.present[chunk]:
                self.stats.counters["cache_hits"] += counted
            elif (file_number, chunk) in self._inflight:
                self.stats.counters["waits_on_inflight_fetch"] += counted
                waits.append(self._inflight[(file_number, chunk)])
            else:
                future = asyncio.get_running_loop().create_future()
                self._inflight[(file_number, chunk)] = future
                waits.append(future)
                wanted.append(chunk)
        return waits, wanted

    def _read_ahead(self, file_number: int, first: int, last: int) -> None:
        """Follow the reader of chunks ``first``..``last``; once it reads
        sequentially, fetch the chunks ahead of it (not waited for)."""
        if not self.readahead_max_chunks:
            return
        streams = self._streams.setdefault(file_number, [])
        stream = next((s for s in streams if s.last_chunk in (first - 1, first)), None)
        if stream is None:  # a new reader, or a jump
            streams.insert(0, _ReadStream(last_chunk=last, run_chunks=last - first + 1))
            del streams[READ_STREAMS_PER_FILE:]
            return
        streams.remove(stream)
        streams.insert(0, stream)
        if last == stream.last_chunk:  # still in the same chunk
            return
        stream.run_chunks += last - stream.last_chunk
        stream.last_chunk = last
        if stream.run_chunks < READ_AHEAD_AFTER_CHUNKS:
            return
        stream.window_chunks = min(max(2 * stream.window_chunks, 2),
                                   self.readahead_max_chunks)
        if last + stream.window_chunks // 2 < stream.ahead_until:
            return  # enough is on its way
        end = min(last + stream.window_chunks, self.files[file_number].chunk_count - 1)
        start = max(last, stream.ahead_until) + 1
        stream.ahead_until = max(stream.ahead_until, end)
        _, wanted = self._claim(file_number, list(range(start, end + 1)), counted=False)
        if wanted:
            self.stats.counters["chunks_read_ahead"] += len(wanted)
            task = asyncio.get_running_loop().create_task(
                self._fetch_all(file_number, wanted, bulk=True))
            self._read_ahead_tasks.add(task)
            task.add_done_callback(self._read_ahead_tasks.discard)

    async def _fetch(self, file_number: int, chunks: list[int], bulk: bool) -> None:
        cached = self.files[file_number]
        loop = asyncio.get_running_loop()
        started = time.monotonic()
        try:
            data = await self.origin.fetch(self.generation.id, file_number, chunks)
        except Exception as exc:
            self.stats.counters["fetch_failures"] += 1
            LOG.error("Fetching %d chunk(s) of file %d of %s from %s failed: %s",
                      len(chunks), file_number, self.generation.id, self.origin.address, exc)
            for chunk in chunks:
                self._settle(file_number, chunk, exc)
            return
        if not bulk:
            self.stats.fetch_latency_ms.append((time.monotonic() - started) * 1000)
        for chunk in chunks:
            try:
                # Checksum and write off the loop: hashing releases the GIL,
                # so it overlaps with TLS decryption of the next chunks.
                await loop.run_in_executor(None, cached.store, chunk, data[chunk])
            except Exception as exc:
                self.stats.counters["fetch_failures"] += 1
                LOG.error("Chunk %d of file %d of %s from %s refused: %s", chunk,
                          file_number, self.generation.id, self.origin.address, exc)
                self._settle(file_number, chunk, exc)
                continue
            self.stats.counters["chunks_fetched"] += 1
            self.stats.counters["bytes_fetched"] += len(data[chunk] or b"")
            self._settle(file_number, chunk)

    def _settle(self, file_number: int, chunk: int, error: Exception | None = None) -> None:
        future = self._inflight.pop((file_number, chunk))
        if error is None:
            future.set_result(None)
        else:
            future.set_exception(error)
            future.exception()  # retrieved: its waiters may all be gone

    def _record(self, chunks: list[int]) -> None:
        now = time.monotonic()
        if not self.record_until:
            self.record_until = now + self.window_s
            asyncio.get_running_loop().call_later(
                self.window_s, lambda: asyncio.ensure_future(self._send_working_set()))
        if now < self.record_until:
            self.recording.extend(chunks)

    async def _send_working_set(self) -> None:
        chunks = list(dict.fromkeys(self.recording or []))
        self.recording = None
        try:
            await self.origin.record_working_set(self.generation.id, chunks)
            LOG.info("Recorded the working set of %s: %d chunks", self.generation.id,
                     len(chunks))
        except Exception as exc:
            LOG.warning("Could not send the working set of %s to %s: %s",
                        self.generation.id, self.origin.address, exc)

    def close(self) -> None:
        if self.background is not None:
            self.background.cancel()
        for task in list(self._read_ahead_tasks):
            task.cancel()
        for cached in self.files.values():
            cached.close()


class RemoteGenerations:
    def __init__(self, store: store_mod.SnapshotStore, stats: stats_mod.Stats,
                 node: str, ssl_context: ssl.SSLContext, settings: Settings) -> None:
        self.store = store
        self.stats = stats
        self.settings = settings
        self._transport_context = transport.Context(
            node=node, ssl_context=ssl_context, timeout_s=settings.fetch_timeout_s,
            max_inflight=settings.max_inflight_fetches)
        self._origins: dict[str, transport.Transport] = {}
        self.presented: dict[str, Presented] = {}
        self._attach_lock = asyncio.Lock()

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
                LOG.error("Cannot present %s of %s again (%s); dropping it",
                          generation.id, generation.origin, exc)
                with contextlib.suppress(store_mod.GenerationInUse):
                    self.store.remove_generation(generation)
                continue
            dropped = sum(f.forget_unverifiable() for f in presented.files.values())
            LOG.info("Presenting %s of %s again (%d cached chunks to fetch again)",
                     generation.id, generation.origin, dropped)

    async def attach(self, generation_id: str, origin: str, key: str,
                     prefetch: str = "none") -> dict[str, Any]:
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
                    raise AttachError(f"generation {generation_id} is already here, "
                                      f"from {generation.origin}, not {origin}")
                if not generation.admits(key):
                    raise AttachError(f"that is not the access key of generation "
                                      f"{generation_id}")
            else:
                await self._import(generation_id, origin, key)
        presented = self.presented[generation_id]
        presented.last_used = time.monotonic()
        result: dict[str, Any] = {"generation": generation_id, "local": False,
                                  "prefetch": prefetch}
        if prefetch != "none":
            presented.attaching += 1
            try:
                result.update(await self._prefetch(presented, prefetch))
            finally:
                presented.attaching -= 1
        return result

    async def release(self, generation_id: str) -> None:
        presented = self.presented.get(generation_id)
        if presented is None:
            raise AttachError(f"generation {generation_id} is not presented here")
        generation = presented.generation
        if presented.open_handles:
            raise store_mod.GenerationInUse(
                f"generation {generation_id} has {presented.open_handles} open file(s)")
        self.store.remove_generation(generation)  # refused while clones use it
        del self.presented[generation_id]
        presented.close()
        shutil.rmtree(os.path.join(self.settings.cache_dir, generation_id),
                      ignore_errors=True)
        self.stats.remote.pop(generation_id, None)
        try:
            await presented.origin.release(generation_id)
        except Exception as exc:
            LOG.warning("Released %s here, but its origin %s was not told: %s",
                        generation_id, presented.origin.address, exc)
        LOG.info("Released generation %s of %s", generation_id, presented.origin.address)

    async def reconcile(self) -> None:
        """Tell origins which clones run here; release what none uses."""
        for generation_id, presented in list(self.presented.items()):
            clones = sorted(r.uuid for r in self.store.references(presented.generation))
            if clones:
                presented.last_used = time.monotonic()
            if clones != presented.told_clones:
                try:
                    await presented.origin.open(generation_id, clones,
                                                presented.generation.access_key)
                    presented.told_clones = clones
                except Exception as exc:
                    LOG.warning("Could not tell %s about the clones of %s: %s",
                                presented.origin.address, generation_id, exc)
            if presented.busy():
                presented.last_used = time.monotonic()
            idle_s = time.monotonic() - presented.last_used
            if not clones and idle_s >= self.settings.release_idle_s:
                LOG.info("No clone has used %s for %.0f s", generation_id, idle_s)
                await self.release(generation_id)

    def stats_json(self) -> dict[str, Any]:
        data = self.stats.to_json()
        for generation_id, presented in self.presented.items():
            files = {name: presented.files[n] for name, n in presented.names.items()}
            data["remote"].setdefault(generation_id, {}).update(
                origin=presented.origin.address,
                chunks_cached={name: sum(f.present) for name, f in files.items()},
                chunks_total={name: f.chunk_count for name, f in files.items()},
                cached_mib=round(sum(f.cached_bytes() for f in files.values()) / 2**20, 1))
        return data

    async def _import(self, generation_id: str, origin: str, key: str) -> None:
        try:
            source = self._transport(origin)
            reply = await source.open(generation_id, [], key)
        except ValueError as exc:  # a bad origin address
            raise AttachError(str(exc)) from exc
        except transport.Refused as exc:
            raise AttachError(f"origin {origin} refused generation {generation_id}: "
                              f"{exc}") from exc
        except transport.Unavailable as exc:
            raise AttachError(str(exc)) from exc
        data, sizes = reply.generation, reply.file_sizes
        if data.get("id") != generation_id or len(sizes) != 2 + len(data["disks"]):
            raise AttachError(f"origin {origin} sent inconsistent metadata")
        generation = store_mod.Generation(**{**data, "origin": origin})
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
            presented.recording = []  # this node's first clones define it
        LOG.info("Presenting generation %s of %s (%d MiB of memory, %d disk(s))",
                 generation_id, origin, generation.memory_bytes >> 20,
                 len(generation.disks))

    async def _fetch_device_stream(self, source: transport.Transport,
                                   generation: store_mod.Generation, size: int,
                                   directory: str) -> None:
        count = origin_mod.chunk_count(size, generation.chunk_size_bytes)
        chunks: dict[int, bytes | None] = {}
        step = protocol.MAX_CHUNKS_PER_FETCH
        for start in range(0, count, step):
            chunks.update(await source.fetch(generation.id, protocol.DEVICE_FILE,
                                             list(range(start, min(count, start + step)))))
        path = os.path.join(directory, store_mod.DEVICE_STREAM_FILE)
        with open(path, "wb") as f:
            for chunk in range(count):
                length = min(generation.chunk_size_bytes,
                             size - chunk * generation.chunk_size_bytes)
                f.write(chunks[chunk] if chunks[chunk] is not None else bytes(length))
        if store_mod.sha256_file(path) != generation.device_stream_sha256:
            raise AttachError(f"the device state of {generation.id} from "
                              f"{source.address} fails its checksum")

    def _links(self, generation: store_mod.Generation) -> dict[str, str]:
        """FUSE file name -> the store path that links to it."""
        links = {MEMORY_FILE_NAME: generation.memory_image}
        for disk in generation.disks:
            links[os.path.basename(disk["base"])] = generation.disk_base(disk)
        return links

    def _file_sizes(self, generation: store_mod.Generation) -> list[int]:
        cached = os.path.join(self.settings.cache_dir, generation.id)
        sizes = [generation.memory_bytes,
                 os.stat(generation.device_stream).st_size]
        for number in range(len(generation.disks)):
            sizes.append(os.stat(os.path.join(
                cached, f"file-{protocol.DISK_BASE_FILE + number}")).st_size)
        return sizes

    def _present(self, generation: store_mod.Generation, sizes: list[int]) -> Presented:
        directory = os.path.join(self.settings.cache_dir, generation.id)
        os.makedirs(directory, exist_ok=True)
        files, names = {}, {}
        for number, name in enumerate(self._links(generation)):
            file_number = protocol.MEMORY_FILE if number == 0 else number + 1
            files[file_number] = cache_mod.CachedFile(
                os.path.join(directory, f"file-{file_number}"), sizes[file_number],
                generation.chunk_size_bytes,
                generation.chunks if file_number == protocol.MEMORY_FILE else None)
            names[name] = file_number
        presented = Presented(generation, self._transport(generation.origin), files, names,
                              self.stats.remote[generation.id],
                              self.settings.working_set_window_s,
                              self.settings.readahead_max_chunks)
        if self.settings.background_fetch_mib_per_s:
            presented.background = asyncio.get_running_loop().create_task(
                self._complete_in_background(presented))
        self.presented[generation.id] = presented
        return presented

    async def _prefetch(self, presented: Presented, prefetch: str) -> dict[str, Any]:
        started = time.monotonic()
        before = presented.stats.counters["bytes_fetched"]
        if prefetch == "full":
            wanted = {n: f.missing() for n, f in presented.files.items()}
        else:
            wanted = {protocol.MEMORY_FILE: await presented.origin.working_set(
                presented.generation.id)}
        await asyncio.gather(*(presented.ensure(n, c, bulk=True)
                               for n, c in wanted.items() if c))
        elapsed_ms = (time.monotonic() - started) * 1000
        fetched = presented.stats.counters["bytes_fetched"] - before
        presented.stats.counters["prefetched_bytes"] += fetched
        LOG.info("Prefetched %s of %s (%s): %.1f MiB in %.0f ms", prefetch,
                 presented.generation.id, presented.origin.address, fetched / 2**20,
                 elapsed_ms)
        return {"prefetched_chunks": sum(len(c) for c in wanted.values()),
                "prefetched_mib": round(fetched / 2**20, 1),
                "prefetch_ms": round(elapsed_ms, 1)}

    async def _complete_in_background(self, presented: Presented) -> None:
        """Fetch what is missing at ``background_fetch_mib_per_s``; a batch
        that fails is left for clones to ask for (and logged)."""
        rate = self.settings.background_fetch_mib_per_s * 2**20
        for number, cached in presented.files.items():
            missing = cached.missing()
            for start in range(0, len(missing), BACKGROUND_BATCH_CHUNKS):
                batch = missing[start:start + BACKGROUND_BATCH_CHUNKS]
                with contextlib.suppress(Exception):  # _fetch logged it
                    await presented.ensure(number, batch, bulk=True)
                await asyncio.sleep(len(batch) * cached.chunk_size_bytes / rate)
        left = sum(len(f.missing()) for f in presented.files.values())
        if left:
            LOG.warning("Background fetch of %s ended with %d chunks missing",
                        presented.generation.id, left)
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
                None, qemuimg.backing_file, generation.disk_base(disk))
            if backing and not os.path.exists(backing):
                raise AttachError(
                    f"disk {disk['target']} of generation {generation.id} has the "
                    f"backing file {backing}, which this node does not have")

    def _transport(self, origin: str) -> transport.Transport:
        if origin not in self._origins:
            self._origins[origin] = transport.load(origin, self._transport_context)
        return self._origins[origin]
