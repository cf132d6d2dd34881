"""Scenario: how fast the page service moves memory between nodes.

No guest: node A (the origin, in its own network namespace) serves a
generation of random data written for the run; for each link delay, node B
(a fresh page service and cache each time) gets all of it, once by a full
prefetch and once by reading its FUSE file from start to end without any
prefetch (what a clone reading its memory in order causes: on-demand
fetches and read-ahead), each checked chunk by chunk against the bless-time
checksums. Both against a plain TCP and a TLS stream of the same size over
the same link, in the same run; the ratios are the point. The CPU time the
receiving node (page service and FUSE front) and the origin used per GiB
says how much of the machine each took: both run on this one machine.

``--baseline-checkout DIR`` runs the same rounds with the page services of
another checkout too (an origin of its own on the same host, serving the
same files), so that a change is measured against the code before it in
one run.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import time
from typing import Any
import uuid

from benchmarks import common
from benchmarks import link
from benchmarks import remote
from nova_clonedriver.demo import localnode
from nova_clonedriver.demo import pki as pki_mod
from nova_clonedriver.engine import memimage
from nova_clonedriver.engine import store as store_mod
from nova_clonedriver.pageserver import tls
from tests.functional import netns

READ_BLOCK_BYTES = 1 << 20
ROUNDS = 3


def run(
    memory_mib: int, delays_ms: list[int], baseline_checkout: str | None = None
) -> dict[str, Any]:
    root = os.path.join(common.STATE_DIR, f"transfer-{uuid.uuid4().hex[:6]}")
    os.makedirs(root)
    os.chmod(root, 0o711)
    network = netns.Network(os.path.basename(root)[-6:])
    nodes: list[localnode.LocalNode] = []
    try:
        return _measure(
            root, network.host("origin"), nodes, memory_mib, delays_ms, baseline_checkout
        )
    finally:
        for node in nodes:
            node.close()
        network.close()
        shutil.rmtree(root, ignore_errors=True)


def fabricate_generation(state_dir: str, memory_mib: int) -> store_mod.Generation:
    """A generation of ``memory_mib`` of random bytes (nothing compresses,
    no chunk is zero), as bless would leave it for the page service."""
    store = store_mod.SnapshotStore(state_dir)
    generation_id = uuid.uuid4().hex
    partial = store.new_generation_dir(generation_id)
    checksums: list[str | None] = []
    with open(os.path.join(partial, store_mod.MEMORY_IMAGE_FILE), "wb") as f:
        for _ in range(memimage.chunk_count(memory_mib << 20)):
            data = os.urandom(memimage.CHUNK_SIZE_BYTES)
            checksums.append(hashlib.sha256(data).hexdigest())
            f.write(data)
    device = os.urandom(600 * 1024)
    with open(os.path.join(partial, store_mod.DEVICE_STREAM_FILE), "wb") as f:
        f.write(device)
    generation = store_mod.Generation(
        id=generation_id,
        source_domain="transfer-benchmark",
        source_uuid=str(uuid.uuid4()),
        created_at=time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime()),
        memory_bytes=memory_mib << 20,
        vcpus=1,
        machine_type="pc",
        main_block="pc.ram",
        chunk_size_bytes=memimage.CHUNK_SIZE_BYTES,
        chunks=checksums,
        device_stream_sha256=hashlib.sha256(device).hexdigest(),
        disks=[],
        domain_xml="<domain/>",
        pause_ms=0.0,
        has_genid=True,
        access_key=os.urandom(32).hex(),
    )
    store.publish(generation, partial)
    return generation


def _measure(
    root: str,
    origin_host: netns.Host,
    nodes: list[localnode.LocalNode],
    memory_mib: int,
    delays_ms: list[int],
    baseline_checkout: str | None,
) -> dict[str, Any]:
    pki = pki_mod.ThrowawayPKI(os.path.join(root, "pki"))
    origins = {
        version: localnode.LocalNode(
            f"node-a{version}",
            root,
            pki,
            listen_host=origin_host.address,
            wrapper=origin_host.wrapper,
            code_dir=code_dir,
        )
        for version, code_dir in [("", None)]
        + ([("-baseline", baseline_checkout)] if baseline_checkout else [])
    }
    generation = fabricate_generation(origins[""].state_dir, memory_mib)
    for version, origin in origins.items():
        if version:
            _share_generation(generation, origin.state_dir)
        origin.start()
        nodes.append(origin)
    rows = []
    with remote.stream_servers(origin_host, pki, origins[""], memory_mib) as streams:
        targets = [(f"page service{v}", o.port) for v, o in origins.items()] + streams["ports"]
        for delay_ms in delays_ms:
            with link.delay_proxies(origin_host.address, targets, delay_ms) as proxies:
                rows.append(
                    _delay_row(
                        root,
                        pki,
                        nodes,
                        origin_host,
                        origins,
                        generation,
                        delay_ms,
                        proxies,
                        streams,
                    )
                )
    return {
        "memory_mib": memory_mib,
        "rounds": ROUNDS,
        "rows": rows,
        "baseline": _describe(baseline_checkout) if baseline_checkout else None,
        "link": "origin in its own network namespace (veth on a bridge); delay by "
        "a user-space proxy (no sch_netem in this kernel), each direction",
    }


def _share_generation(generation: store_mod.Generation, state_dir: str) -> None:
    """The same generation in another store (its files hard-linked)."""
    directory = os.path.join(state_dir, "generations", generation.id)
    os.makedirs(os.path.join(directory, store_mod.REFERENCES_DIR))
    for name in (
        store_mod.MEMORY_IMAGE_FILE,
        store_mod.DEVICE_STREAM_FILE,
        store_mod.GENERATION_FILE,
    ):
        os.link(os.path.join(generation.directory, name), os.path.join(directory, name))


def _describe(checkout: str) -> str:
    """The commit a checkout is at, for the record."""
    return subprocess.run(
        ["git", "-C", checkout, "log", "-1", "--format=%h %s"],
        capture_output=True,
        text=True,
    ).stdout.strip()


def _delay_row(
    root: str,
    pki: pki_mod.ThrowawayPKI,
    nodes: list[localnode.LocalNode],
    origin_host: netns.Host,
    origins: dict[str, localnode.LocalNode],
    generation: store_mod.Generation,
    delay_ms: int,
    proxies: dict[str, link.DelayProxy],
    streams: dict[str, Any],
) -> dict[str, Any]:
    def address(name: str, port: int) -> tuple[str, int]:
        return ("127.0.0.1", proxies[name].port) if delay_ms else (origin_host.address, port)

    client_cert = pki.node(f"stream-client-{delay_ms}")
    context = tls.client_context(*client_cert, pki.ca_file)
    runs = [f"{mode}{version}" for version in origins for mode in ("prefetch", "read")]
    measured: dict[str, list[float]] = {name: [] for name in ("tcp", "tls", *runs)}
    cpu_s_per_gib: dict[str, list[float]] = {name: [] for name in runs}
    origin_cpu_s_per_gib: dict[str, list[float]] = {version: [] for version in origins}
    # Rounds alternate all of them, so that a noisy moment hits all alike.
    for round_number in range(ROUNDS):
        measured["tcp"].append(link.stream_mib_per_s(*address("tcp", streams["tcp"]), None, ""))
        tls_host, tls_port = address("tls", streams["tls"])
        measured["tls"].append(link.stream_mib_per_s(tls_host, tls_port, context, tls_host))
        for version, origin in origins.items():
            host, port = address(f"page service{version}", origin.port)
            for mode in ("prefetch", "read"):
                node = localnode.LocalNode(
                    f"node-b-{delay_ms}-{mode}{version}-{round_number}",
                    root,
                    pki,
                    code_dir=origin.code_dir,
                    release_idle_s=3600,
                )
                node.start()
                nodes.append(node)
                pids = [node.process.pid, *_front_pids(node), origin.process.pid]
                cpu_before = [common.cpu_ms(pid) for pid in pids]
                started = time.monotonic()
                node.client.attach(
                    generation.id,
                    f"{host}:{port}",
                    generation.access_key,
                    "full" if mode == "prefetch" else "none",
                )
                if mode == "read":
                    _read_in_order(node.mount_path(generation.id))
                elapsed_s = time.monotonic() - started
                cpu_s = [
                    (common.cpu_ms(pid) - before) / 1000
                    for pid, before in zip(pids, cpu_before, strict=True)
                ]
                _check(node.mount_path(generation.id), generation)
                gib = memory_mib_of(generation) / 1024
                measured[f"{mode}{version}"].append(
                    round(memory_mib_of(generation) / elapsed_s, 1)
                )
                cpu_s_per_gib[f"{mode}{version}"].append(round(sum(cpu_s[:-1]) / gib, 2))
                origin_cpu_s_per_gib[version].append(round(cpu_s[-1] / gib, 2))
                node.close()
                shutil.rmtree(node.state_dir, ignore_errors=True)
    row: dict[str, Any] = {"delay_ms": delay_ms}
    for name, values in measured.items():
        row[f"{name}_mib_s"] = common.summary(values)
    tls_median = row["tls_mib_s"]["median"]
    for name in runs:
        row[f"{name}_of_tls"] = round(row[f"{name}_mib_s"]["median"] / tls_median, 2)
        # CPU seconds per GiB moved, of the receiving node's processes
        row[f"{name}_cpu_s_per_gib"] = common.summary(cpu_s_per_gib[name])
    for version, values in origin_cpu_s_per_gib.items():
        row[f"origin{version}_cpu_s_per_gib"] = common.summary(values)
    return row


def _front_pids(node: localnode.LocalNode) -> list[int]:
    """The FUSE front that holds ``node``'s mount (none before there were
    fronts, in a baseline checkout)."""
    found = subprocess.run(
        ["pgrep", "-f", f"fusefront --mount-dir {node.mount_dir()}"],
        capture_output=True,
        text=True,
    ).stdout
    return [int(pid) for pid in found.split()]


def memory_mib_of(generation: store_mod.Generation) -> float:
    return generation.memory_bytes / 2**20


def _read_in_order(path: str) -> None:
    """Read the file from start to end, as a clone touching all its memory
    in order would."""
    with open(path, "rb", buffering=0) as f:
        while f.read(READ_BLOCK_BYTES):
            pass


def _check(path: str, generation: store_mod.Generation) -> None:
    """After the clock stopped (so that this process's hashing does not
    take CPU from the page service): the file is the origin's."""
    with open(path, "rb", buffering=0) as f:
        for chunk, expected in enumerate(generation.chunks):
            if hashlib.sha256(f.read(READ_BLOCK_BYTES)).hexdigest() != expected:
                raise RuntimeError(f"chunk {chunk} read through FUSE is not the origin's")
