"""The memory image must equal the master's RAM at the instant of the bless.

Under TCG, QEMU 7.2 loses guest writes made after its second dirty-bitmap
sync (see nova_clonedriver.engine.bless); clones of such a snapshot crashed
on a kernel stack one write behind. It showed when the host was busy, so
this test keeps both host cores busy while it blesses a guest that has just
written memory, and compares the image with the master's RAM dumped while
the master is still stopped.
"""

import contextlib
import multiprocessing
import os

import fixtures

from nova_clonedriver.demo import testguest
from nova_clonedriver.engine import api
from nova_clonedriver.engine import bless as bless_mod
from nova_clonedriver.engine import qmp
from tests.functional import base

PAGE_SIZE_BYTES = 4096


def _spin() -> None:
    while True:
        pass


@contextlib.contextmanager
def busy_host_cpus():
    workers = [
        multiprocessing.Process(target=_spin, daemon=True) for _ in range(os.cpu_count() or 2)
    ]
    for worker in workers:
        worker.start()
    try:
        yield
    finally:
        for worker in workers:
            worker.kill()
            worker.join()


def differing_pages(path_a: str, path_b: str) -> list[int]:
    differing = []
    with open(path_a, "rb") as a, open(path_b, "rb") as b:
        page = 0
        while True:
            block_a, block_b = a.read(1 << 20), b.read(1 << 20)
            if not block_a and not block_b:
                return differing
            if block_a != block_b:
                differing.extend(
                    page + i // PAGE_SIZE_BYTES
                    for i in range(0, len(block_a), PAGE_SIZE_BYTES)
                    if block_a[i : i + PAGE_SIZE_BYTES] != block_b[i : i + PAGE_SIZE_BYTES]
                )
            page += len(block_a) // PAGE_SIZE_BYTES


class TestSnapshotConsistency(base.LibvirtTestCase):
    def test_memory_image_equals_the_stopped_masters_ram(self):
        engine = api.CloneEngine(self.conn, self.state_dir)
        master, agent, workdir = self.boot_master("consistent")
        dump_path = os.path.join(workdir, "ram-at-bless.raw")
        os.chmod(workdir, 0o777)  # QEMU's user writes the dump there
        finalized = bless_mod._wait_until_finalized

        def dump_before_resume(domain, deadline):
            finalized(domain, deadline)
            qmp.command(
                domain, "pmemsave", val=0, size=base.MASTER_MEMORY_MIB << 20, filename=dump_path
            )

        self.useFixture(
            fixtures.MonkeyPatch(
                "nova_clonedriver.engine.bless._wait_until_finalized", dump_before_resume
            )
        )
        agent.close()
        for attempt in range(3):
            # Write memory, hang up (the guest's agent then wakes up and
            # works in its kernel), and bless at once while the host is busy.
            agent = testguest.agent_in(workdir)
            agent.request("fill", 32, base.PATTERN_SEED + attempt)
            agent.close()
            with busy_host_cpus():
                generation = engine.bless(master.name())
            self.assertEqual(
                [],
                differing_pages(generation.memory_image, dump_path),
                f"bless {attempt + 1}: pages of the image differ from "
                "the master's RAM at the snapshot instant",
            )
