"""Recording a generation's working set: the memory chunks the first clones
on a node read in their first ``window_s``, sent to the origin once, so that
later nodes can prefetch them (``prefetch=working-set``)."""

from __future__ import annotations

import asyncio
import logging
import time

from nova_clonedriver.pageserver import transport

LOG = logging.getLogger(__name__)


class WorkingSetRecorder:
    def __init__(self, generation_id: str, origin: transport.Transport, window_s: float) -> None:
        self.generation_id = generation_id
        self.origin = origin
        self.window_s = window_s
        self._chunks: list[int] = []
        self._until = 0.0
        self._sending: asyncio.Task[None] | None = None

    def record(self, chunks: list[int]) -> None:
        """Chunks a clone asked for; the first call starts the window."""
        now = time.monotonic()
        if not self._until:
            self._until = now + self.window_s
            asyncio.get_running_loop().call_later(self.window_s, self._send_soon)
        if now < self._until:
            self._chunks.extend(chunks)

    def _send_soon(self) -> None:
        self._sending = asyncio.get_running_loop().create_task(self._send())

    async def _send(self) -> None:
        chunks = list(dict.fromkeys(self._chunks))
        self._chunks = []
        try:
            await self.origin.record_working_set(self.generation_id, chunks)
            LOG.info("Recorded the working set of %s: %d chunks", self.generation_id, len(chunks))
        except Exception as exc:
            LOG.warning(
                "Could not send the working set of %s to %s: %s",
                self.generation_id,
                self.origin.address,
                exc,
            )
