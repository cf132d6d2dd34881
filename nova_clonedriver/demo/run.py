"""The demo: fork a running VM into clones and prove what each one sees.

Boots the test guest as a master, fills most of its RAM with a seeded
pattern, blesses it, launches clones, and checks every clone: heartbeat
carries on from the master's, the pattern's checksum is the master's,
random bytes differ between clones, and the NIC carries the clone's own MAC.
Then measures host memory and, as a baseline in the same run, an eager
restore of a full save of the same master.

The page service runs embedded: two nova-clone-pageserver processes of the
demo's own (node A holding the snapshot, node B an empty store, with a
throwaway CA) stand for two compute nodes, and clones launched on node B
get their memory from A through B's page service, fetched on first touch
over mutual TLS. Everything lives in a folder of its own under the state
dir and is removed at the end.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import os
import shutil
import statistics
import tempfile
import time
from typing import Any
import uuid

import libvirt

from nova_clonedriver.demo import agent as agent_mod
from nova_clonedriver.demo import localnode
from nova_clonedriver.demo import pki as pki_mod
from nova_clonedriver.demo import testguest
from nova_clonedriver.engine import api
from nova_clonedriver.engine import hostmem
from nova_clonedriver.engine import store as store_mod
from nova_clonedriver.pageserver import control

PATTERN_HEADROOM_MIB = 24  # left to the guest kernel so the agent is not OOM-killed
PATTERN_SEED = 20091
MIB = 1 << 20


@dataclasses.dataclass
class CloneCheck:
    name: str
    start_ms: float
    ready_ms: float
    first_heartbeat: int | None
    checksum_ok: bool
    mac_ok: bool
    random: str
    problems: list[str]

    @property
    def ok(self) -> bool:
        return not self.problems


def run(
    conn: libvirt.virConnect,
    state_dir: str,
    clones: int = 8,
    memory_mib: int = 256,
    guest_dir: str | None = None,
    baseline: bool = True,
    remote_clones: int = 2,
) -> dict[str, Any]:
    """``remote_clones``: how many clones node B launches through the page
    services (0: none, and no page service is started)."""
    store_mod.make_traversable_dir(state_dir)  # on a new host, nothing made it
    workdir = tempfile.mkdtemp(prefix="demo-", dir=state_dir)
    os.chmod(workdir, 0o711)  # QEMU's user reaches the store through it
    # Node A's store: the demo's snapshot and clones stay out of the state
    # dir's own store (and out of reach of a page service serving it).
    engine = api.CloneEngine(conn, os.path.join(workdir, "node-a"))
    name = f"clone-demo-{uuid.uuid4().hex[:6]}"
    master, master_agent = testguest.boot(conn, name, memory_mib, workdir, guest_dir)
    generation = None
    launched: list[api.Clone] = []
    try:
        fill_mib = pattern_size_mib(master_agent)
        expected = master_agent.request("fill", fill_mib, PATTERN_SEED)["checksum"]
        hb_before = master_agent.request("ping")["hb"]
        generation = engine.bless(name)
        hb_after = master_agent.request("ping")["hb"]
        result: dict[str, Any] = {}
        if baseline:  # measured while only the master runs, like the first clone
            result["eager_restore_ms"] = _eager_restore_ms(conn, master, workdir)
        prefix = f"{name}-clone"
        launched = engine.launch(generation.id, 1, name_prefix=prefix)
        burst_started = time.monotonic()
        if clones > 1:
            launched += engine.launch(generation.id, clones - 1, name_prefix=prefix)
        burst_wall_ms = (time.monotonic() - burst_started) * 1000
        checks = [_check(engine, c, expected, hb_before, hb_after) for c in launched]
        _flag_shared_randomness(checks)
        result.update(
            {
                "clones_requested": clones,
                "clones_ok": sum(1 for c in checks if c.ok),
                "first_clone_start_ms": checks[0].start_ms,
                "clone_start_ms": [c.start_ms for c in checks],
                "clone_ready_ms": [c.ready_ms for c in checks],
                "clone_start_median_ms": statistics.median(c.start_ms for c in checks),
                "burst_wall_ms": round(burst_wall_ms, 1),
                "bless_pause_ms": generation.pause_ms,
                "guest_memory_mib": memory_mib,
                "pattern_mib": fill_mib,
                "guest_memory_mib_total": memory_mib * len(launched),
                "host_memory_mib_used": hostmem.domains_pss_mib([c.name for c in launched]),
                "problems": {c.name: c.problems for c in checks if c.problems},
            }
        )
        result["host_memory_mib_per_clone"] = round(
            result["host_memory_mib_used"] / len(launched), 1
        )
        result["oversubscription"] = round(
            result["guest_memory_mib_total"] / result["host_memory_mib_used"], 2
        )
        if baseline:
            result["eager_to_clone_ratio"] = round(
                result["eager_restore_ms"] / result["first_clone_start_ms"], 2
            )
        if remote_clones:
            result.update(
                _remote(
                    conn,
                    engine,
                    generation,
                    workdir,
                    remote_clones,
                    f"{name}-b-clone",
                    (expected, hb_before, hb_after),
                )
            )
        return result
    finally:
        master_agent.close()
        try:
            with concurrent.futures.ThreadPoolExecutor(8) as pool:
                list(pool.map(engine.destroy_clone, [c.uuid for c in launched]))
            if generation is not None:
                engine.discard(generation.id)
        finally:
            testguest.destroy_all(conn, name)
            shutil.rmtree(workdir, ignore_errors=True)


def _remote(
    conn: libvirt.virConnect,
    engine: api.CloneEngine,
    generation: api.Generation,
    workdir: str,
    count: int,
    name_prefix: str,
    master_state: tuple[str, int, int],
) -> dict[str, Any]:
    """Clones on node B, whose store has nothing of the snapshot: B's page
    service presents it and fetches its memory from A's as clones touch it."""
    pki = pki_mod.ThrowawayPKI(os.path.join(workdir, "pki"))
    origin = localnode.LocalNode("node-a", workdir, pki, state_dir=engine.store.state_dir)
    node_b = localnode.LocalNode("node-b", workdir, pki)
    engine_b = api.CloneEngine(conn, node_b.state_dir)
    launched: list[api.Clone] = []
    try:
        origin.start()
        node_b.start()
        node_b.client.attach(generation.id, origin.address, generation.access_key)
        launched = engine_b.launch(generation.id, count, name_prefix=name_prefix)
        fetched_to_start = _fetched_mib(node_b, generation.id)
        checks = [_check(engine_b, c, *master_state) for c in launched]
        return {
            "remote_clones_requested": count,
            "remote_clones_ok": sum(1 for c in checks if c.ok),
            "remote_clone_start_ms": [c.start_ms for c in checks],
            "remote_fetched_mib_to_start": fetched_to_start,
            "remote_fetched_mib_total": _fetched_mib(node_b, generation.id),
            "remote_problems": {c.name: c.problems for c in checks if c.problems},
        }
    finally:
        try:
            for clone in launched:
                engine_b.destroy_clone(clone.uuid)
            if generation.id in engine_b.store.generation_ids():
                _release(node_b, generation.id)
        finally:
            node_b.close()
            origin.close()


def _release(node: localnode.LocalNode, generation_id: str, timeout_s: float = 30) -> None:
    """Release the snapshot at the node, which tells its origin (so the
    origin may discard it); QEMU of a clone just destroyed may still hold
    its memory file open for a moment."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            node.client.release(generation_id)
            return
        except control.PageServiceError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def _fetched_mib(node: localnode.LocalNode, generation_id: str) -> float:
    """What the node's page service fetched from the origin for the snapshot."""
    remote = node.client.stats()["remote"][generation_id]
    return round(remote["bytes_fetched"] / MIB, 1)


def pattern_size_mib(client: agent_mod.AgentClient) -> int:
    """As much of the guest's RAM as it can spare: most of it."""
    available = client.request("ping")["mem_available_mib"]
    return max(1, available - PATTERN_HEADROOM_MIB)


def _check(
    engine: api.CloneEngine,
    clone: api.Clone,
    expected_checksum: str,
    hb_before: int,
    hb_after: int,
) -> CloneCheck:
    directory = engine.store.clone_dir(clone.uuid)
    client = testguest.agent_in(directory)
    problems = []
    try:
        client.wait_ready(timeout_s=60)
        checksum = client.request("checksum")["checksum"]
        identity = _identity_with_mac(client, clone.mac_addresses)
    finally:
        client.close()
    beats = agent_mod.first_heartbeats(testguest.console_log_in(directory))
    first = beats[0] if beats else None
    if first is None or not hb_before <= first <= hb_after + 2:
        problems.append(f"first heartbeat {first}, master was at {hb_before}-{hb_after}")
    if beats != sorted(beats):
        problems.append("heartbeat went backwards")
    if checksum != expected_checksum:
        problems.append(f"pattern checksum {checksum} != master's {expected_checksum}")
    macs = sorted(n["mac"] for n in identity["nics"])
    mac_ok = macs == sorted(clone.mac_addresses)
    if not mac_ok:
        problems.append(f"guest NIC MACs {macs}, clone's are {clone.mac_addresses}")
    return CloneCheck(
        clone.name,
        clone.restore_ms,
        clone.ready_ms,
        first,
        checksum == expected_checksum,
        mac_ok,
        identity["random"],
        problems,
    )


def _identity_with_mac(
    client: agent_mod.AgentClient, macs: list[str], timeout_s: float = 30
) -> dict[str, Any]:
    """The guest sees a hot-plugged NIC a moment after libvirt does."""
    deadline = time.monotonic() + timeout_s
    while True:
        identity = client.request("identity")
        seen = sorted(n["mac"] for n in identity["nics"])
        if seen == sorted(macs) or time.monotonic() > deadline:
            return identity
        time.sleep(0.5)


def _flag_shared_randomness(checks: list[CloneCheck]) -> None:
    seen: dict[str, str] = {}
    for check in checks:
        if check.random in seen:
            check.problems.append(f"same random bytes as {seen[check.random]}")
        seen.setdefault(check.random, check.name)


def _eager_restore_ms(conn: libvirt.virConnect, master: libvirt.virDomain, workdir: str) -> float:
    """The alternative to a clone: restore a full save (all RAM copied)."""
    path = os.path.join(workdir, "eager.save")
    master.save(path)
    started = time.monotonic()
    conn.restoreFlags(path, None, libvirt.VIR_DOMAIN_SAVE_RUNNING)
    elapsed_ms = (time.monotonic() - started) * 1000
    os.unlink(path)
    return round(elapsed_ms, 1)
