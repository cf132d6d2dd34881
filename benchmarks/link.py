"""Delay on the link between two "hosts", and the baseline streams.

The hosts are network namespaces on a bridge (tests/functional/netns.py).
``tc netem`` would add delay on their veth pairs, but this host's kernel
has no ``sch_netem``; ``DelayProxy`` adds the delay in user space instead
(each byte is held ``delay_ms`` in each direction), which emulates latency
but not a bandwidth limit. ``python -m benchmarks.link serve`` is the plain
TCP (or TLS) stream the page service's bulk transfer is compared with.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Iterator
import contextlib
import os
import socket
import ssl
import sys
import time

from nova_clonedriver.engine import native
from nova_clonedriver.pageserver import tls

BLOCK_BYTES = 1 << 20


class DelayProxy:
    """127.0.0.1:<port> -> target, every byte held ``delay_ms`` each way."""

    def __init__(self, target_host: str, target_port: int, delay_ms: float) -> None:
        self._target = (target_host, target_port)
        self._delay_s = delay_ms / 1000
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.AbstractServer | None = None
        ready = native.thread_class()(target=self._loop.run_forever, daemon=True)
        ready.start()
        self.port = asyncio.run_coroutine_threadsafe(self._listen(), self._loop).result()

    async def _listen(self) -> int:
        self._server = await asyncio.start_server(self._connection, "127.0.0.1", 0)
        return self._server.sockets[0].getsockname()[1]

    async def _connection(
        self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter
    ) -> None:
        try:
            server_reader, server_writer = await asyncio.open_connection(*self._target)
        except OSError:
            client_writer.close()
            return
        await asyncio.gather(
            self._pipe(client_reader, server_writer), self._pipe(server_reader, client_writer)
        )

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def deliver() -> None:
            while True:
                due, data = await queue.get()
                if not data:
                    break
                await asyncio.sleep(max(0.0, due - time.monotonic()))
                writer.write(data)
                await writer.drain()

        sender = asyncio.ensure_future(deliver())
        try:
            while data := await reader.read(65536):
                queue.put_nowait((time.monotonic() + self._delay_s, data))
        except ConnectionError:
            pass
        queue.put_nowait((0.0, b""))
        with contextlib.suppress(ConnectionError):
            await sender
        writer.close()

    def close(self) -> None:
        if self._server is not None:
            self._loop.call_soon_threadsafe(self._server.close)
        self._loop.call_soon_threadsafe(self._loop.stop)


@contextlib.contextmanager
def delay_proxies(
    target_host: str, targets: list[tuple[str, int]], delay_ms: float
) -> Iterator[dict[str, DelayProxy]]:
    """A DelayProxy per (name, port) of ``target_host``, by name; none at 0 ms."""
    proxies: dict[str, DelayProxy] = {}
    try:
        if delay_ms:
            for name, port in targets:
                proxies[name] = DelayProxy(target_host, port, delay_ms)
        yield proxies
    finally:
        for proxy in proxies.values():
            proxy.close()


def stream_mib_per_s(
    host: str, port: int, context: ssl.SSLContext | None, server_hostname: str
) -> float:
    """Read the whole stream the server sends; its rate."""
    with socket.create_connection((host, port), timeout=120) as raw:
        sock = context.wrap_socket(raw, server_hostname=server_hostname) if context else raw
        started = time.monotonic()
        received = 0
        while data := sock.recv(BLOCK_BYTES):
            received += len(data)
        elapsed = time.monotonic() - started
        sock.close()
    return round(received / 2**20 / elapsed, 1)


def serve(host: str, port: int, mib: int, certs: list[str] | None) -> None:
    """Send ``mib`` MiB to each client that connects (until killed)."""
    context = tls.server_context(*certs) if certs else None
    block = os.urandom(BLOCK_BYTES)
    with socket.create_server((host, port)) as server:
        while True:
            raw, _ = server.accept()
            with contextlib.suppress(OSError):
                sock = context.wrap_socket(raw, server_side=True) if context else raw
                for _ in range(mib):
                    sock.sendall(block)
                sock.close()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.link")
    parser.add_argument("command", choices=["serve"])
    parser.add_argument("host")
    parser.add_argument("port", type=int)
    parser.add_argument("--mib", type=int, default=256)
    parser.add_argument("--tls", nargs=3, metavar=("CERT", "KEY", "CA"))
    args = parser.parse_args()
    serve(args.host, args.port, args.mib, args.tls)


if __name__ == "__main__":
    sys.exit(main())
