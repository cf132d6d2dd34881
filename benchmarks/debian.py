"""Scenario "debian": clones of the Debian test guest against cold boots of
the same image, to all N answering HTTP on their own DHCP addresses, and
each clone's clock right after it answers, with and without the agent.

On the engine and local libvirt (the test network of
nova_clonedriver.demo.debianguest); the same through nova and neutron is
the scenario "cloud" (benchmarks/cloud.py).
"""

from __future__ import annotations

import os
import time
from typing import Any

import libvirt

from benchmarks import common
from nova_clonedriver.demo import debianguest
from nova_clonedriver.engine import api

# How old the first generation is when its clones start (the second one is
# older by the first measurement): a clone's clock starts that far behind
# unless the agent sets it.
GENERATION_AGE_S = 30
HTTP_TIMEOUT_S = 900


def run(memory_mib: int, count: int) -> dict[str, Any]:
    bench = common.Bench()
    try:
        debianguest.ensure_network(bench.conn)
        generations = {}
        for agent in (True, False):
            name = f"{bench.prefix}-{'agent' if agent else 'plain'}"
            workdir = os.path.join(bench.state_dir, name)
            debianguest.boot(bench.conn, name, memory_mib, workdir, guest_agent=agent)
            generations[agent] = bench.engine.bless(name)
        time.sleep(GENERATION_AGE_S)
        with_agent = _clones_to_http(bench, generations[True], count)
        without_agent = _clones_to_http(bench, generations[False], count)
        cold = _cold_boots_to_http(bench, memory_mib, count)
    finally:
        bench.close()
    rows = [
        {"method": "clones, guest agent", **with_agent},
        {"method": "clones, no guest agent", **without_agent},
        {"method": "cold boots", **cold},
    ]
    return {"count": count, "rows": rows}


def _clones_to_http(bench: common.Bench, generation: api.Generation, count: int) -> dict[str, Any]:
    age_s = api.age_s(generation.created_at)
    started = time.monotonic()
    clones = bench.engine.launch(generation.id, count)
    launched_s = time.monotonic() - started
    skews_s, addresses = [], set()
    for clone in clones:
        domain = bench.conn.lookupByUUIDString(clone.uuid)
        address = debianguest.wait_for_address(
            bench.conn, domain, HTTP_TIMEOUT_S, mac=clone.mac_addresses[0]
        )
        debianguest.wait_for_identity(address, HTTP_TIMEOUT_S)
        skews_s.append(debianguest.clock_skew_s(address))
        addresses.add(address)
    all_http_s = time.monotonic() - started
    for clone in clones:  # the next measurement gets the host to itself
        bench.engine.destroy_clone(clone.uuid)
    if len(addresses) != count:
        raise RuntimeError(f"{count} clones answered on only {len(addresses)} addresses")
    return {
        "generation_age_s": round(age_s, 1),
        "launch_s": round(launched_s, 1),
        "to_all_http_s": round(all_http_s, 1),
        "clock_skew_s": common.summary(skews_s),
    }


def _cold_boots_to_http(bench: common.Bench, memory_mib: int, count: int) -> dict[str, Any]:
    """N guests of the same image booted at once, each on its own overlay
    of one copy of the disk."""
    workdirs = [os.path.join(bench.state_dir, f"cold-{i}") for i in range(count)]
    debianguest.prepare(workdirs[0], "generic")
    for workdir in workdirs[1:]:
        debianguest.prepare(workdir, "generic", base=os.path.join(workdirs[0], "base.qcow2"))
    started = time.monotonic()
    domains = [
        bench.conn.createXML(
            debianguest.domain_xml(f"{bench.prefix}-cold-{i}", memory_mib, workdir), 0
        )
        for i, workdir in enumerate(workdirs)
    ]
    skews_s = [_cold_skew_s(bench.conn, domain) for domain in domains]
    return {
        "generation_age_s": None,
        "launch_s": None,
        "to_all_http_s": round(time.monotonic() - started, 1),
        "clock_skew_s": common.summary(skews_s),
    }


def _cold_skew_s(conn: libvirt.virConnect, domain: libvirt.virDomain) -> float:
    address = debianguest.wait_for_address(conn, domain, HTTP_TIMEOUT_S)
    debianguest.wait_for_identity(address, HTTP_TIMEOUT_S)
    return debianguest.clock_skew_s(address)
