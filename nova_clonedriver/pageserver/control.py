"""The local control socket: how the nova driver and nova-clone on this node
ask the page service to present (attach) or release a remote generation,
and read its stats. One JSON object per line each way; only local processes
that may open the socket (mode 0600 for the service's user, or 0660 for
``[pageserver] control_socket_group``) can ask.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from collections.abc import Callable
import grp
import json
import logging
import os
import socket
from typing import Any

LOG = logging.getLogger(__name__)

MAX_LINE_BYTES = 64 * 1024
Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


def socket_path(state_dir: str, configured: str | None = None) -> str:
    """[pageserver] control_socket, by default in the [clone] state_dir."""
    return configured or os.path.join(state_dir, "pageserver.sock")


class PageServiceError(RuntimeError):
    """The page service refused a request."""


class PageServiceUnavailable(PageServiceError):
    """The page service of this node does not answer."""


async def serve(path: str, handler: Handler, group: str | None = None) -> asyncio.AbstractServer:
    """Answer requests on the unix socket ``path``: mode 0600, or 0660 and
    owned by ``group`` when given."""
    if os.path.exists(path):
        os.unlink(path)  # left by an earlier run of the service

    async def connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while line := await reader.readline():
                try:
                    request = json.loads(line)
                    if not isinstance(request, dict):
                        raise ValueError("a request is a JSON object")
                    reply = {"ok": True, **await handler(request)}
                except Exception as exc:
                    LOG.warning("Control request %s failed: %s", line[:200], exc)
                    reply = {"ok": False, "error": str(exc)}
                writer.write(json.dumps(reply).encode() + b"\n")
                await writer.drain()
        except (ConnectionError, ValueError):
            pass  # ValueError: a line over the limit
        finally:
            writer.close()

    server = await asyncio.start_unix_server(connection, path, limit=MAX_LINE_BYTES)
    if group:
        os.chown(path, -1, grp.getgrnam(group).gr_gid)
    os.chmod(path, 0o660 if group else 0o600)
    return server


class PageServiceClient:
    """Blocking client for the engine's callers (nova driver, nova-clone)."""

    def __init__(self, path: str, timeout_s: float = 900) -> None:
        self.path = path
        self.timeout_s = timeout_s

    def attach(
        self, generation_id: str, origin: str, key: str, prefetch: str = "none"
    ) -> dict[str, Any]:
        """``key``: the generation's access key (the origin checks it)."""
        return self._call(
            {
                "op": "attach",
                "generation": generation_id,
                "origin": origin,
                "key": key,
                "prefetch": prefetch,
            }
        )

    def release(self, generation_id: str) -> dict[str, Any]:
        return self._call({"op": "release", "generation": generation_id})

    def stats(self) -> dict[str, Any]:
        return self._call({"op": "stats"})

    def _call(self, request: dict[str, Any]) -> dict[str, Any]:
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(self.timeout_s)
                sock.connect(self.path)
                sock.sendall(json.dumps(request).encode() + b"\n")
                with sock.makefile("rb") as replies:
                    line = replies.readline()
        except OSError as exc:
            raise PageServiceUnavailable(
                f"the page service does not answer on {self.path}: {exc}"
            ) from exc
        if not line:
            raise PageServiceUnavailable("the page service closed the connection")
        reply: dict[str, Any] = json.loads(line)
        if not reply.pop("ok"):
            raise PageServiceError(reply["error"])
        return reply
