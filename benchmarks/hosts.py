"""Scenario "hosts": clones of one generation on N hosts at once, their
memory from the origin's page service or from the cloud's Swift.

Every host is a network namespace of its own (tests/functional/netns.py)
with a page service of its own: the origin, which blesses the master and
publishes the generation to Swift, and N compute hosts. Swift is the
one-machine cloud's (``tools/minicloud start``; run with its openrc
sourced): the page services get a token of the openrc's user and the
account's storage URL at the bridge's address (the proxy listens on every
address of the machine).

For each path (origin only, then Swift) a fresh page service per host
attaches the generation and launches a clone, all hosts at once: the time
until every clone answers, until every clone has read its whole pattern,
and the bytes the origin host sent meanwhile (its link's counter). Then,
per path, clones are launched on every host and the origin's page service
is killed before they read their pattern: how many finish reading.
"""

from __future__ import annotations

import concurrent.futures
import os
import signal
import time
from typing import Any

from benchmarks import common
from cloudtests.test_cloud import openstack
from nova_clonedriver.demo import agent as agent_mod
from nova_clonedriver.demo import localnode
from nova_clonedriver.demo import pki as pki_mod
from nova_clonedriver.demo import testguest
from nova_clonedriver.engine import api
from tests.functional import netns

SWIFT_PORT = 8080  # tools/minicloud.d/swift.sh
PUBLISH_TIMEOUT_S = 600
READ_TIMEOUT_S = 900
# With the origin gone, a clone's read of a page no host has fails after
# about this long (and the clone stops); short, so that the run is too.
FETCH_TIMEOUT_S = 10
NOTE = (
    "Every host a network namespace with its own page service on one "
    "machine (2 cores); Swift is the one-machine cloud's (``tools/minicloud "
    "start``, its openrc sourced): proxy, account, container and object "
    "servers of Debian's packages, one replica, one device. Origin egress: "
    "what the origin host's link carried out while the clones started and "
    "read (and, for Swift, once before: the upload of the generation)."
)


def run(memory_mib: int, hosts: int) -> dict[str, Any]:
    bench = common.Bench()
    network = netns.Network(bench.prefix[-6:])
    nodes: list[localnode.LocalNode] = []
    try:
        return _measure(bench, network, nodes, memory_mib, hosts)
    finally:
        testguest.destroy_all(bench.conn, bench.prefix)
        for node in nodes:
            node.close()
        network.close()
        bench.close()


def swift_options(gateway: str) -> dict[str, str]:
    """[pageserver_swift] of the page services: a token of the openrc's
    user and its account, reached at ``gateway``."""
    token = openstack("token", "issue")
    return {
        "auth_type": "admin_token",
        "token": token["id"],
        "endpoint": f"http://{gateway}:{SWIFT_PORT}/v1/AUTH_{token['project_id']}",
    }


def _measure(
    bench: common.Bench,
    network: netns.Network,
    nodes: list[localnode.LocalNode],
    memory_mib: int,
    host_count: int,
) -> dict[str, Any]:
    root = bench.state_dir
    pki = pki_mod.ThrowawayPKI(os.path.join(root, "pki"))
    swift = swift_options(network.gateway)
    origin_host = network.host("origin")
    origin = localnode.LocalNode(
        "origin",
        root,
        pki,
        listen_host=origin_host.address,
        wrapper=origin_host.wrapper,
        state_dir=root,
        swift=swift,
        object_store="swift",
    )
    origin.start()
    nodes.append(origin)
    master = bench.master(memory_mib)
    sent_before = origin_host.sent_bytes()
    started = time.monotonic()
    generation = bench.engine.bless(master.domain.name())
    _wait_published(origin, generation.id)
    publish = {
        "publish_s": round(time.monotonic() - started, 1),
        "origin_sent_mib": round((origin_host.sent_bytes() - sent_before) / 2**20, 1),
        **origin.client.stats()["published"][generation.id],
    }
    hosts = [network.host(f"host-{i}") for i in range(host_count)]
    rows = []
    for path in ("origin", "swift"):
        placed = _place(bench, root, pki, nodes, hosts, path, swift, origin, generation, "burst")
        sent_before = origin_host.sent_bytes()
        rows.append(
            {
                "path": path,
                **_start_and_read(bench, placed, generation, master),
                "origin_sent_mib": round((origin_host.sent_bytes() - sent_before) / 2**20, 1),
            }
        )
        _remove(bench, placed)
    survival = []
    for path in ("origin", "swift"):
        placed = _place(bench, root, pki, nodes, hosts, path, swift, origin, generation, "down")
        clients = _launch_all(bench, placed, generation)
        origin.stop(signal.SIGKILL)
        try:
            finished = _read_all(clients, master.checksum)
        finally:
            origin.start()
        survival.append({"path": path, "clones": len(placed), "read_their_memory": sum(finished)})
        _remove(bench, placed)
    return {
        "hosts": host_count,
        "pattern_mib": master.pattern_mib,
        "publish": publish,
        "rows": rows,
        "origin_killed": survival,
        "note": NOTE,
    }


def _wait_published(origin: localnode.LocalNode, generation_id: str) -> None:
    deadline = time.monotonic() + PUBLISH_TIMEOUT_S
    while not origin.client.stats()["published"].get(generation_id, {}).get("complete"):
        if time.monotonic() > deadline:
            raise RuntimeError(f"not published in {PUBLISH_TIMEOUT_S} s:\n{origin.log()}")
        time.sleep(0.5)


def _place(
    bench: common.Bench,
    root: str,
    pki: pki_mod.ThrowawayPKI,
    nodes: list[localnode.LocalNode],
    hosts: list[netns.Host],
    path: str,
    swift: dict[str, str],
    origin: localnode.LocalNode,
    generation: api.Generation,
    tag: str,
) -> list[tuple[localnode.LocalNode, api.CloneEngine]]:
    """A fresh page service per host, the generation attached (this is not
    timed: a nova driver attaches as it launches, in well under a second)."""
    placed = []
    for host in hosts:
        node = localnode.LocalNode(
            f"{path}-{tag}-{host.name}",
            root,
            pki,
            listen_host=host.address,
            wrapper=host.wrapper,
            swift=swift if path == "swift" else None,
            release_idle_s=3600,
            fetch_timeout_s=FETCH_TIMEOUT_S,
            **({"object_store": "swift"} if path == "swift" else {}),
        )
        node.start()
        nodes.append(node)
        node.client.attach(generation.id, origin.address, generation.access_key)
        placed.append((node, api.CloneEngine(bench.conn, node.state_dir)))
    return placed


def _launch_all(
    bench: common.Bench,
    placed: list[tuple[localnode.LocalNode, api.CloneEngine]],
    generation: api.Generation,
) -> list[agent_mod.AgentClient]:
    """A clone per host, all at once; their agents once they answer."""

    def launch(engine: api.CloneEngine) -> agent_mod.AgentClient:
        [clone] = engine.launch(generation.id, 1, name_prefix=f"{bench.prefix}-h")
        client = testguest.agent_in(engine.store.clone_dir(clone.uuid))
        client.wait_ready(timeout_s=READ_TIMEOUT_S)
        return client

    with concurrent.futures.ThreadPoolExecutor(len(placed)) as pool:
        return list(pool.map(launch, [engine for _, engine in placed]))


def _read_all(clients: list[agent_mod.AgentClient], checksum: str) -> list[bool]:
    """Each clone reads its whole pattern, all at once: whether it read
    the master's."""

    def read(client: agent_mod.AgentClient) -> bool:
        client.timeout_s = READ_TIMEOUT_S
        try:
            return client.request("checksum")["checksum"] == checksum
        except agent_mod.AgentError:
            return False
        finally:
            client.close()

    with concurrent.futures.ThreadPoolExecutor(len(clients)) as pool:
        return list(pool.map(read, clients))


def _start_and_read(
    bench: common.Bench,
    placed: list[tuple[localnode.LocalNode, api.CloneEngine]],
    generation: api.Generation,
    master: common.Master,
) -> dict[str, Any]:
    started = time.monotonic()
    clients = _launch_all(bench, placed, generation)
    all_running_s = time.monotonic() - started
    finished = _read_all(clients, master.checksum)
    if not all(finished):
        raise RuntimeError(f"{finished.count(False)} clone(s) did not read the master's pattern")
    return {
        "all_answering_s": round(all_running_s, 1),
        "all_read_s": round(time.monotonic() - started, 1),
    }


def _remove(
    bench: common.Bench, placed: list[tuple[localnode.LocalNode, api.CloneEngine]]
) -> None:
    """Destroy the hosts' clones and stop their page services."""
    testguest.destroy_all(bench.conn, f"{bench.prefix}-h")
    for node, _ in placed:
        node.close()
