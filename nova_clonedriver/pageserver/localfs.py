"""The ``local`` transport: the origin's snapshot store on a file system
this node mounts too (shared instance storage such as NFS or CephFS).

``local:///var/lib/nova-clonedriver`` reads the generation's files there,
and records this node's peer reference in that store, exactly as the
origin's page service would; nothing crosses the origin's network stack.
The node still caches what clones read (and checks memory chunks against
their checksums), so a shared file system serves each chunk once per node.
"""

from __future__ import annotations

import asyncio
from typing import Any

from nova_clonedriver.engine import store as store_mod
from nova_clonedriver.pageserver import origin as origin_mod
from nova_clonedriver.pageserver import transport


class LocalTransport(transport.Transport):
    def __init__(self, location: str, context: transport.Context) -> None:
        super().__init__(location, context)
        self._origin = origin_mod.OriginStore(store_mod.SnapshotStore(location))

    @property
    def address(self) -> str:
        return f"local://{self.location}"

    async def open(self, generation_id: str, clones: list[str], key: str) -> transport.Opened:
        reply = await self._run(self._origin.open, generation_id, clones, key)
        return transport.Opened.from_json(reply)

    async def fetch(
        self, generation_id: str, file_number: int, chunks: list[int]
    ) -> dict[int, transport.Chunk | None]:
        data: dict[int, transport.Chunk | None] = await self._run(
            self._read, generation_id, file_number, chunks
        )
        return data

    async def release(self, generation_id: str) -> None:
        await self._run(self._origin.release, generation_id)

    async def working_set(self, generation_id: str) -> list[int]:
        chunks: list[int] = await self._run(self._origin.working_set, generation_id)
        return chunks

    async def record_working_set(self, generation_id: str, chunks: list[int]) -> None:
        await self._run(self._origin.record_working_set, generation_id, chunks)

    async def close(self) -> None:
        """Nothing stays open between requests."""

    def _read(
        self, node: str, generation_id: str, file_number: int, chunks: list[int]
    ) -> dict[int, transport.Chunk | None]:
        generation, path = self._origin.chunk_file(node, generation_id, file_number, chunks)
        data: dict[int, transport.Chunk | None] = {}
        with open(path, "rb", buffering=0) as f:
            for chunk in chunks:
                buffer = bytearray(generation.chunk_size_bytes)
                length = origin_mod.read_chunk(
                    generation, file_number, f.fileno(), chunk, buffer, 0
                )
                if length is not None:
                    del buffer[length:]
                data[chunk] = None if length is None else buffer
        return data

    async def _run(self, function: Any, *args: Any) -> Any:
        """File I/O off the event loop (the loop also serves FUSE reads)."""
        return await asyncio.get_running_loop().run_in_executor(
            None, function, self.context.node, *args
        )
