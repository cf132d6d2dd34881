"""The scenarios of issue 6, each with its baselines in the same run."""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import statistics
import time
from typing import Any

from benchmarks import common
from benchmarks import ksm
from benchmarks import smaps
from nova_clonedriver.demo import run as demo_mod
from nova_clonedriver.engine import api
from nova_clonedriver.engine import hostmem

# A clone's agent reading its whole pattern, with N clones reading at once.
READ_TIMEOUT_S = 60
READ_TIMEOUT_S_PER_CLONE = 10


def start_latency(memory_mib: int, repeat: int) -> dict[str, Any]:
    """Bless-to-running of one clone against an eager restore of a full save
    and a cold boot of the same guest, each until the guest agent answers."""
    bench = common.Bench()
    try:
        master = bench.master(memory_mib)
        generation = bench.engine.bless(master.domain.name())
        eager = common.EagerCopies(bench, master)
        [(eager_name, eager_path)] = eager.prepare(1)
        clone_ms, clone_running_ms, eager_ms, eager_running_ms, cold_ms = [], [], [], [], []
        phases: dict[str, list[float]] = {}
        for round_number in range(repeat):
            started = time.monotonic()
            [clone] = bench.engine.launch(generation.id, 1)
            client = bench.clone_agent(clone)
            client.wait_ready()
            clone_ms.append((time.monotonic() - started) * 1000)
            clone_running_ms.append(clone.restore_ms)
            for phase, ms in clone.phases_ms.items():
                phases.setdefault(phase, []).append(ms)
            client.close()
            bench.engine.destroy_clone(clone.uuid)

            started = time.monotonic()
            eager_running_ms.append(eager.restore(eager_path))
            client = eager.agent(eager_path)
            client.wait_ready()
            eager_ms.append((time.monotonic() - started) * 1000)
            client.close()
            bench.conn.lookupByName(eager_name).destroy()

            cold_ms.append(bench.cold_boot_ms(memory_mib, f"cold{round_number}"))
        clone, eager_s, cold = (common.summary(v) for v in (clone_ms, eager_ms, cold_ms))
        return {
            "clone_to_agent_ms": clone,
            "clone_running_ms": common.summary(clone_running_ms),
            "clone_phases_ms": {
                phase: round(statistics.median(values), 1) for phase, values in phases.items()
            },
            "clone_cpu": _clone_cpu(bench, generation.id),
            "eager_restore_to_agent_ms": eager_s,
            "eager_restore_running_ms": common.summary(eager_running_ms),
            "cold_boot_to_agent_ms": cold,
            "eager_over_clone": round(eager_s["median"] / clone["median"], 2),
            "cold_over_clone": round(cold["median"] / clone["median"], 2),
            "pattern_mib": master.pattern_mib,
            "bless_pause_ms": generation.pause_ms,
        }
    finally:
        bench.close()


def _clone_cpu(
    bench: common.Bench, generation_id: str, settle_s: float = 5.0, idle_s: float = 10.0
) -> dict[str, float]:
    """Host CPU one clone's start costs (libvirtd's and QEMU's until it runs),
    what its guest takes in its first seconds (under TCG every code path is
    translated anew), and what it costs once idle: what bounds a burst."""
    libvirtd = common.libvirtd_pid()
    libvirtd_before = common.cpu_ms(libvirtd)
    [clone] = bench.engine.launch(generation_id, 1)
    libvirtd_ms = common.cpu_ms(libvirtd) - libvirtd_before
    qemu = common.domain_pid(clone.name)
    at_running_ms = common.cpu_ms(qemu)
    time.sleep(settle_s)
    settled_ms = common.cpu_ms(qemu)
    time.sleep(idle_s)
    idle_ms = common.cpu_ms(qemu) - settled_ms
    bench.engine.destroy_clone(clone.uuid)
    return {
        "libvirtd_ms": round(libvirtd_ms),
        "qemu_to_running_ms": round(at_running_ms),
        "settle_s": settle_s,
        "guest_settle_ms": round(settled_ms - at_running_ms),
        "idle_percent": round(idle_ms / idle_s / 10, 1),
    }


def burst_density(
    memory_mib: int,
    counts: list[int],
    with_ksm: bool,
    eager_max: int | None = None,
    tcg_tb_cache_mib: int = 0,
) -> dict[str, Any]:
    """N clones at once against N eager restores (and N eager restores after
    KSM has merged what it can): time until all answer, host memory.
    ``eager_max``: no eager restores for larger N (they would not fit in the
    host's memory). ``tcg_tb_cache_mib``: also N clones with that
    translation cache, in the same run."""
    bench = common.Bench()
    rows = []
    try:
        master = bench.master(memory_mib)
        generation = bench.engine.bless(master.domain.name())
        eager = common.EagerCopies(bench, master)
        small_tb = api.CloneEngine(
            bench.conn,
            bench.state_dir,
            launch_options=api.LaunchOptions(common.LAUNCH_PARALLELISM, tcg_tb_cache_mib),
        )
        for count in counts:
            row: dict[str, Any] = {"count": count, "guest_memory_mib": count * memory_mib}
            row.update(_clone_burst(bench, bench.engine, generation.id, count))
            if tcg_tb_cache_mib:
                burst = _clone_burst(bench, small_tb, generation.id, count)
                row.update({f"tb_{key}": value for key, value in burst.items()})
            if eager_max is None or count <= eager_max:
                row.update(_eager_burst(bench, eager, count, with_ksm))
            rows.append(row)
        return {
            "pattern_mib": master.pattern_mib,
            "tcg_tb_cache_mib": tcg_tb_cache_mib,
            "rows": rows,
        }
    finally:
        bench.close()


def _clone_burst(
    bench: common.Bench, engine: api.CloneEngine, generation_id: str, count: int
) -> dict[str, Any]:
    started = time.monotonic()
    clones = engine.launch(generation_id, count)
    running_ms = (time.monotonic() - started) * 1000
    clients = [bench.clone_agent(c) for c in clones]
    bench.wait_agents(clients)
    ready_ms = (time.monotonic() - started) * 1000
    names = [c.name for c in clones]
    idle_mib = hostmem.domains_pss_mib(names)
    for client in clients:  # N guests reading at once share 2 cores
        client.timeout_s = READ_TIMEOUT_S + READ_TIMEOUT_S_PER_CLONE * count
    with concurrent.futures.ThreadPoolExecutor(count) as pool:
        list(pool.map(lambda c: c.request("checksum"), clients))  # read every page
    read_mib = hostmem.domains_pss_mib(names)
    for client in clients:
        client.close()
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(pool.map(engine.destroy_clone, [c.uuid for c in clones]))
    return {
        "clone_all_running_ms": round(running_ms, 1),
        "clone_all_ready_ms": round(ready_ms, 1),
        "clone_host_mib_idle": idle_mib,
        "clone_host_mib_after_read": read_mib,
    }


def _eager_burst(
    bench: common.Bench, eager: common.EagerCopies, count: int, with_ksm: bool
) -> dict[str, Any]:
    prepared = eager.prepare(count)
    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(min(count, 8)) as pool:
        list(pool.map(eager.restore, [path for _, path in prepared]))
    running_ms = (time.monotonic() - started) * 1000
    clients = [eager.agent(path) for _, path in prepared]
    bench.wait_agents(clients)
    ready_ms = (time.monotonic() - started) * 1000
    for client in clients:
        client.close()
    names = [name for name, _ in prepared]
    result: dict[str, Any] = {
        "eager_all_running_ms": round(running_ms, 1),
        "eager_all_ready_ms": round(ready_ms, 1),
        "eager_host_mib": hostmem.domains_pss_mib(names),
    }
    if with_ksm:
        merged = ksm.merge_until_converged()
        result.update(
            {
                "ksm_host_mib": hostmem.domains_pss_mib(names),
                "ksm_converge_s": merged["seconds"],
                "ksm_converged": merged["converged"],
                "ksm_cpu_s": merged["ksmd_cpu_s"],
                "ksm_pages_sharing": merged["pages_sharing"],
            }
        )
    for name, path in prepared:
        with contextlib.suppress(Exception):
            bench.conn.lookupByName(name).destroy()
        os.unlink(path)
    if with_ksm:
        ksm.stop()
    return result


def divergence(memory_mib: int, clones: int, percents: list[int]) -> dict[str, Any]:
    """Host memory growth per clone as each clone reads its pattern, then
    rewrites a share of it (what oversubscription costs as clones drift
    apart); the first clone's memory by mapping at each step (smaps.py)."""
    bench = common.Bench()
    try:
        master = bench.master(memory_mib)
        generation = bench.engine.bless(master.domain.name())
        launched = bench.engine.launch(generation.id, clones)
        clients = [bench.clone_agent(c) for c in launched]
        bench.wait_agents(clients)
        names = [c.name for c in launched]
        first_pid = hostmem.qemu_pid(names[0])
        assert first_pid is not None

        def step(label: str, percent: int | None) -> dict[str, Any]:
            return {
                "step": label,
                "percent": percent,
                "host_mib_per_clone": round(hostmem.domains_pss_mib(names) / clones, 1),
                "first_clone": smaps.breakdown(first_pid, generation.memory_image),
            }

        rows = [step("idle", 0)]
        for client in clients:
            if client.request("checksum")["checksum"] != master.checksum:
                raise RuntimeError("a clone read another pattern than its master's")
        rows.append(step("read", 0))
        for percent in sorted(percents):
            for seed, client in enumerate(clients, start=1):
                # The pages "dirty p" rewrites include those of any smaller p,
                # so after this step ``percent`` of the pattern is rewritten.
                client.request("dirty", percent, 1000 * percent + seed)
            rows.append(step(f"rewrote {percent}%", percent))
        for client in clients:
            client.close()
        return {"pattern_mib": master.pattern_mib, "clones": clones, "rows": rows}
    finally:
        bench.close()


def bless_pause(memory_sizes_mib: list[int], repeat: int) -> dict[str, Any]:
    """The master's pause and the whole bless time against memory size."""
    rows = []
    for memory_mib in memory_sizes_mib:
        bench = common.Bench()
        try:
            master = bench.master(memory_mib)
            pauses, totals = [], []
            for _ in range(repeat):
                hb_before = master.agent.request("ping")["hb"]
                started = time.monotonic()
                generation = bench.engine.bless(master.domain.name())
                totals.append((time.monotonic() - started) * 1000)
                pauses.append(generation.pause_ms)
                if master.agent.request("ping")["hb"] < hb_before:
                    raise RuntimeError("heartbeat went backwards across a bless")
                bench.engine.discard(generation.id)
            rows.append(
                {
                    "memory_mib": memory_mib,
                    "pattern_mib": master.pattern_mib,
                    "pause_ms": common.summary(pauses),
                    "bless_total_ms": common.summary(totals),
                }
            )
            master.agent.close()
        finally:
            bench.close()
    return {"rows": rows}


def demo(memory_mib: int, clones: int) -> dict[str, Any]:
    """nova-clone demo, recorded like the other scenarios."""
    bench = common.Bench()
    try:
        return demo_mod.run(bench.conn, bench.state_dir, clones=clones, memory_mib=memory_mib)
    finally:
        bench.close()
