"""Scenario 4: clones on another node, through the page services.

Node A (the origin) blesses the master and runs its page service in its own
network namespace (a host on a bridge, tests/functional/netns.py); node B (a fresh page service and
store for every prefetch mode) launches two clones of the generation. Per
link delay and prefetch mode: attach time, start latency (launch to agent
answer) and bytes fetched for the first and the second clone, time to read
the whole pattern, fetch latency p50/p99, and the full prefetch's rate
against a plain TCP and a TLS stream over the same link in the same run.
A clone started on A itself is the local baseline.
"""

from __future__ import annotations

from collections.abc import Iterator
import contextlib
import os
import subprocess
import sys
import time
from typing import Any

from benchmarks import common
from benchmarks import link
from nova_clonedriver.demo import localnode
from nova_clonedriver.demo import pki as pki_mod
from nova_clonedriver.demo import testguest
from nova_clonedriver.engine import api
from nova_clonedriver.pageserver import tls
from tests.functional import netns

MODES = ("none", "working-set", "full")
WORKING_SET_WINDOW_S = 3
STREAM_MIB = 256


def run(memory_mib: int, delays_ms: list[int]) -> dict[str, Any]:
    bench = common.Bench()
    network = netns.Network(bench.prefix[-6:])
    nodes: list[localnode.LocalNode] = []
    try:
        return _measure(bench, network.host("origin"), nodes, memory_mib, delays_ms)
    finally:
        # Clones before page services: a mount still mapped cannot go.
        testguest.destroy_all(bench.conn, bench.prefix)
        for node in nodes:
            node.close()
        network.close()
        bench.close()


def _measure(
    bench: common.Bench,
    origin_host: netns.Host,
    nodes: list[localnode.LocalNode],
    memory_mib: int,
    delays_ms: list[int],
) -> dict[str, Any]:
    root = bench.state_dir
    pki = pki_mod.ThrowawayPKI(os.path.join(root, "pki"))
    origin = localnode.LocalNode(
        "node-a",
        root,
        pki,
        listen_host=origin_host.address,
        wrapper=origin_host.wrapper,
        state_dir=root,
    )
    origin.start()
    nodes.append(origin)
    master = bench.master(memory_mib)
    generation = bench.engine.bless(master.domain.name())
    local = _clone_run(bench, bench.engine, generation.id, "local")
    rows = []
    with stream_servers(origin_host, pki, origin, STREAM_MIB) as streams:
        targets = [("page service", origin.port), *streams["ports"]]
        for delay_ms in delays_ms:
            with link.delay_proxies(origin_host.address, targets, delay_ms) as proxies:
                rows += _delay_rows(
                    bench,
                    root,
                    pki,
                    nodes,
                    origin_host,
                    origin,
                    generation,
                    delay_ms,
                    proxies,
                    streams,
                )
    return {
        "pattern_mib": master.pattern_mib,
        "local_clone": local,
        "rows": rows,
        "link": "origin in its own network namespace (veth on a bridge); delay by "
        "a user-space proxy (no sch_netem in this kernel), each direction",
    }


def _delay_rows(
    bench: common.Bench,
    root: str,
    pki: pki_mod.ThrowawayPKI,
    nodes: list[localnode.LocalNode],
    origin_host: netns.Host,
    origin: localnode.LocalNode,
    generation: api.Generation,
    delay_ms: int,
    proxies: dict[str, link.DelayProxy],
    streams: dict[str, Any],
) -> list[dict[str, Any]]:
    def address(name: str, port: int) -> tuple[str, int]:
        return ("127.0.0.1", proxies[name].port) if delay_ms else (origin_host.address, port)

    host, port = address("page service", origin.port)
    client_cert = pki.node(f"stream-client-{delay_ms}")
    context = tls.client_context(*client_cert, pki.ca_file)
    tcp_host, tcp_port = address("tcp", streams["tcp"])
    tls_host, tls_port = address("tls", streams["tls"])
    baseline = {
        "tcp_stream_mib_s": link.stream_mib_per_s(tcp_host, tcp_port, None, ""),
        "tls_stream_mib_s": link.stream_mib_per_s(tls_host, tls_port, context, tls_host),
    }
    rows = []
    for mode in MODES:
        node = localnode.LocalNode(
            f"node-b-{delay_ms}-{mode}",
            root,
            pki,
            release_idle_s=3600,
            working_set_window_s=WORKING_SET_WINDOW_S,
        )
        node.start()
        nodes.append(node)
        engine = api.CloneEngine(bench.conn, node.state_dir)
        started = time.monotonic()
        attach = node.client.attach(generation.id, f"{host}:{port}", generation.access_key, mode)
        row: dict[str, Any] = {
            "delay_ms": delay_ms,
            "prefetch": mode,
            "attach_ms": round((time.monotonic() - started) * 1000, 1),
            "prefetched_mib": attach.get("prefetched_mib", 0.0),
            **baseline,
        }
        if mode == "full" and attach.get("prefetch_ms"):
            row["prefetch_mib_s"] = round(
                attach["prefetched_mib"] / attach["prefetch_ms"] * 1000, 1
            )
        for which in ("first", "second"):
            before = _fetched_mib(node, generation.id)
            # The first clone on the first node defines the working set: let
            # its recording window close before it reads the whole pattern,
            # so the set is what a clone needs to start, not everything.
            recording = mode == "none" and which == "first"
            result = _clone_run(
                bench,
                engine,
                generation.id,
                f"{delay_ms}{mode[0]}",
                node,
                settle_s=WORKING_SET_WINDOW_S + 1 if recording else 0,
            )
            result["fetched_mib_to_start"] = round(result.pop("fetched_mib_at_start") - before, 1)
            result["fetched_mib_total"] = round(_fetched_mib(node, generation.id) - before, 1)
            row[f"{which}_clone"] = result
        stats = node.client.stats()["remote"][generation.id]
        row["fetch_latency_ms"] = stats.get("fetch_latency_ms", {})
        rows.append(row)
        if mode == "none":  # B was the first node: wait for its recording
            working_set = os.path.join(generation.directory, "working-set.json")
            deadline = time.monotonic() + 4 * WORKING_SET_WINDOW_S
            while not os.path.exists(working_set) and time.monotonic() < deadline:
                time.sleep(0.5)
        node.close()
    return rows


def _clone_run(
    bench: common.Bench,
    engine: api.CloneEngine,
    generation_id: str,
    tag: str,
    node: localnode.LocalNode | None = None,
    settle_s: float = 0,
) -> dict[str, Any]:
    """Launch one clone: ms to its agent's answer, then (after ``settle_s``)
    to reading the whole pattern, and MiB ``node`` had fetched when it
    answered; the clone is destroyed afterwards."""
    started = time.monotonic()
    [clone] = engine.launch(generation_id, 1, name_prefix=f"{bench.prefix}-{tag}")
    client = testguest.agent_in(engine.store.clone_dir(clone.uuid))
    try:
        client.wait_ready(timeout_s=600)
        result = {
            "start_ms": round((time.monotonic() - started) * 1000, 1),
            "running_ms": clone.restore_ms,
        }
        if node is not None:
            result["fetched_mib_at_start"] = _fetched_mib(node, generation_id)
        time.sleep(settle_s)
        read_started = time.monotonic()
        client.request("checksum")
        result["read_pattern_ms"] = round((time.monotonic() - read_started) * 1000, 1)
    finally:
        client.close()
        engine.destroy_clone(clone.uuid)
    return result


def _fetched_mib(node: localnode.LocalNode, generation_id: str) -> float:
    stats = node.client.stats()["remote"].get(generation_id, {})
    return stats.get("bytes_fetched", 0) / 2**20


@contextlib.contextmanager
def stream_servers(
    origin_host: netns.Host, pki: pki_mod.ThrowawayPKI, origin: localnode.LocalNode, mib: int
) -> Iterator[dict[str, Any]]:
    """A plain TCP and a TLS server on the origin's host, each sending
    ``mib`` MiB to every client (benchmarks.link), until the block ends."""
    ports = {"tcp": localnode.free_port(), "tls": localnode.free_port()}
    command = [
        *origin_host.wrapper,
        sys.executable,
        "-m",
        "benchmarks.link",
        "serve",
        origin_host.address,
    ]
    servers = [
        subprocess.Popen([*command, str(ports["tcp"]), "--mib", str(mib)]),
        subprocess.Popen(
            [
                *command,
                str(ports["tls"]),
                "--mib",
                str(mib),
                "--tls",
                origin.cert_file,
                origin.key_file,
                pki.ca_file,
            ]
        ),
    ]
    try:
        time.sleep(1)  # let them listen
        yield {**ports, "ports": list(ports.items())}
    finally:
        for server in servers:
            server.kill()
