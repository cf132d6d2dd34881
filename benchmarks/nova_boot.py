"""Scenario "nova": POST /servers with min_count=N, clones against normal
boots of the same image, in one run.

nova's own in-process services (API, conductor, scheduler, placement,
Glance and Neutron fixtures) drive ``CloneDriver`` on real libvirt, set up
as in ``tests/functional/test_nova_api.py``. Importing this module
eventlet-patches the process (nova's functional package requires it), so it
runs in its own ``python -m benchmarks`` process.
"""

from __future__ import annotations

import time
from typing import Any
import unittest

from tests.functional import test_nova_api


class NovaBootBenchmark(test_nova_api.TestLiveClonesThroughNovaAPI):
    count = 8
    result: dict[str, Any] = {}

    def setUp(self) -> None:
        # A master and N servers of one vCPU each on a 2-core host.
        self.flags(cpu_allocation_ratio=16.0, ram_allocation_ratio=4.0)
        super().setUp()

    def _all_active_s(self, image_id: str, flavor_id: str, name: str) -> tuple[float, list]:
        started = time.monotonic()
        reservation = self._boot(name, image_id, flavor_id, count=self.count)
        search = {"reservation_id": reservation["reservation_id"]}

        def all_active():
            servers = self.api.get_servers(search_opts=search)
            failed = [s for s in servers if s["status"] == "ERROR"]
            if failed:
                raise RuntimeError(f"{failed[0]['id']} went ERROR: {failed[0].get('fault')}")
            done = len(servers) == self.count and all(s["status"] == "ACTIVE" for s in servers)
            return servers if done else None

        servers = test_nova_api._wait(all_active, 600, lambda: f"{name} not all ACTIVE")
        return time.monotonic() - started, [s["id"] for s in servers]

    def _all_heartbeating_s(self, server_ids: list[str], started: float) -> float:
        for server_id in server_ids:
            self._wait_heartbeat(server_id, timeout_s=600)
        return time.monotonic() - started

    def run_benchmark(self) -> None:
        normal = self._flavor("normal", 256)
        clone_flavor = self._flavor("clone", 256, {"clone:enabled": "true"})
        master = self._boot("master", self.image_id, normal)
        self._wait_status(master["id"], "ACTIVE")
        self._wait_heartbeat(master["id"])
        image_id = self.api.post_server_action(
            master["id"],
            {"createImage": {"name": "master-live", "metadata": {"clone_live": "true"}}},
        )["image_id"]
        test_nova_api._wait(
            lambda: self.glance.show(None, image_id)["status"] == "active",
            120,
            lambda: "live image not active",
        )
        self._wait_for_server_parameter(master, {"OS-EXT-STS:task_state": None})

        rows = []
        for label, image, flavor in (
            ("clones", image_id, clone_flavor),
            ("normal boots", self.image_id, normal),
        ):
            started = time.monotonic()
            active_s, ids = self._all_active_s(image, flavor, label.split()[0])
            running_s = self._all_heartbeating_s(ids, started)
            rows.append(
                {
                    "method": label,
                    "count": self.count,
                    "post_to_all_active_s": round(active_s, 1),
                    "post_to_all_guests_running_s": round(running_s, 1),
                }
            )
            for server_id in ids:
                self.api.delete_server(server_id)
            self._wait_gone(ids, timeout_s=300)
        type(self).result = {"rows": rows}


def run(count: int) -> dict[str, Any]:
    NovaBootBenchmark.count = count
    outcome = unittest.TextTestRunner(verbosity=0).run(NovaBootBenchmark("run_benchmark"))
    if not outcome.wasSuccessful():
        problems = outcome.errors + outcome.failures
        raise RuntimeError(f"nova benchmark failed: {problems[0][1][-3000:]}")
    return NovaBootBenchmark.result
