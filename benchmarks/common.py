"""What the scenarios share: a host to run on, masters, measurements."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import os
import platform
import shutil
import statistics
import subprocess
import time
from typing import Any
import uuid

import libvirt

from nova_clonedriver.demo import agent as agent_mod
from nova_clonedriver.demo import testguest
from nova_clonedriver.demo.run import pattern_size_mib
from nova_clonedriver.engine import api
from nova_clonedriver.engine import domainxml
from nova_clonedriver.engine import savefile

STATE_DIR = "/var/lib/nova-clonedriver-bench"
# Run from a checkout: its test guests, unless told otherwise.
CHECKOUT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
for _variable, _guest in (
    ("NOVA_CLONE_GUEST_DIR", "guest"),
    ("NOVA_CLONE_DEBIAN_GUEST_DIR", "debian-guest"),
):
    os.environ.setdefault(_variable, os.path.join(CHECKOUT, "build", _guest))
PATTERN_SEED = 777
LAUNCH_PARALLELISM = 64


def summary(values: list[float]) -> dict[str, float]:
    """Median and spread of repeated measurements."""
    return {
        "median": round(statistics.median(values), 1),
        "min": round(min(values), 1),
        "max": round(max(values), 1),
        "stdev": round(statistics.stdev(values), 1) if len(values) > 1 else 0.0,
        "n": len(values),
    }


def machine() -> dict[str, Any]:
    with open("/proc/meminfo") as f:
        mem_kib = int(f.readline().split()[1])
    with open("/proc/cpuinfo") as f:
        cpu = next(
            (line.split(":", 1)[1].strip() for line in f if line.startswith("model name")),
            "unknown",
        )
    qemu = subprocess.run(
        ["qemu-system-x86_64", "--version"], capture_output=True, text=True
    ).stdout.splitlines()[0]
    return {
        "cores": os.cpu_count(),
        "memory_gib": round(mem_kib / 2**20, 1),
        "cpu": cpu,
        "accelerator": "TCG (domain type qemu)",
        "qemu": qemu,
        "libvirt": ".".join(str(libvirt.getVersion() // 10**k % 1000) for k in (6, 3, 0)),
        "kernel": platform.release(),
    }


def domain_pid(name: str) -> int:
    """The QEMU process of a running libvirt domain."""
    with open(f"/run/libvirt/qemu/{name}.pid") as f:
        return int(f.read())


def libvirtd_pid() -> int:
    return int(
        subprocess.run(
            ["pgrep", "-o", "-x", "libvirtd"], check=True, capture_output=True, text=True
        ).stdout
    )


def cpu_ms(pid: int) -> float:
    """User and system CPU time a process (all its threads) has used."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) * 1000 / os.sysconf("SC_CLK_TCK")


@dataclasses.dataclass
class Master:
    domain: libvirt.virDomain
    agent: agent_mod.AgentClient
    workdir: str
    memory_mib: int
    pattern_mib: int
    checksum: str


class Bench:
    """A libvirt connection, an engine on a scratch store, and clean-up of
    every domain it started."""

    def __init__(self) -> None:
        self.conn = libvirt.open("qemu:///system")
        self.prefix = f"bench-{uuid.uuid4().hex[:6]}"
        self.state_dir = os.path.join(STATE_DIR, self.prefix)
        os.makedirs(self.state_dir)
        for path in (STATE_DIR, self.state_dir):
            os.chmod(path, 0o711)
        self.engine = api.CloneEngine(
            self.conn, self.state_dir, launch_options=api.LaunchOptions(LAUNCH_PARALLELISM)
        )

    def close(self) -> None:
        testguest.destroy_all(self.conn, self.prefix)
        shutil.rmtree(self.state_dir, ignore_errors=True)

    def master(self, memory_mib: int, name: str = "master") -> Master:
        workdir = os.path.join(self.state_dir, name)
        domain, client = testguest.boot(self.conn, f"{self.prefix}-{name}", memory_mib, workdir)
        pattern = pattern_size_mib(client)
        checksum = client.request("fill", pattern, PATTERN_SEED)["checksum"]
        return Master(domain, client, workdir, memory_mib, pattern, checksum)

    def cold_boot_ms(self, memory_mib: int, name: str) -> float:
        """Boot the same guest from scratch until its agent answers."""
        started = time.monotonic()
        domain, client = testguest.boot(
            self.conn, f"{self.prefix}-{name}", memory_mib, os.path.join(self.state_dir, name)
        )
        elapsed = (time.monotonic() - started) * 1000
        client.close()
        domain.destroy()
        return elapsed

    def clone_agent(self, clone: api.Clone) -> agent_mod.AgentClient:
        return testguest.agent_in(self.engine.store.clone_dir(clone.uuid))

    def wait_agents(self, clients: list[agent_mod.AgentClient]) -> None:
        with concurrent.futures.ThreadPoolExecutor(len(clients)) as pool:
            list(pool.map(lambda c: c.wait_ready(timeout_s=600), clients))


class EagerCopies:
    """Full copies of a master restored from a save image: all RAM is read
    into each copy's anonymous memory (what restoring without this project
    costs). Each copy gets its own identity in its own save file."""

    def __init__(self, bench: Bench, master: Master) -> None:
        self.bench = bench
        self.master_save = os.path.join(master.workdir, "full.save")
        master.agent.close()
        master.domain.save(self.master_save)
        with open(self.master_save, "rb") as f:
            self.xml, self.cookie = savefile.read_header(f)
            self.stream_offset = f.tell()
        self.names: list[str] = []

    def prepare(self, count: int) -> list[tuple[str, str]]:
        """Write ``count`` save files; returns (name, path) pairs."""
        prepared = []
        for _ in range(count):
            clone_uuid = str(uuid.uuid4())
            directory = os.path.join(self.bench.state_dir, "eager", clone_uuid[:8])
            os.makedirs(directory)
            os.chmod(directory, 0o711)
            name = f"{self.bench.prefix}-eager-{clone_uuid[:8]}"
            xml = domainxml.clone_xml(
                self.xml,
                domainxml.CloneIdentity(
                    name=name,
                    uuid=clone_uuid,
                    genid=str(uuid.uuid4()),
                    directory=directory,
                    overlays={},
                ),
                None,
                0,
            )
            xml = _shared_readonly_disks(xml)
            path = os.path.join(directory, "eager.save")
            with open(path, "wb") as out, open(self.master_save, "rb") as full:
                out.write(savefile.build_header(xml, self.cookie))
                full.seek(self.stream_offset)
                shutil.copyfileobj(full, out, 1 << 20)
            prepared.append((name, path))
        return prepared

    def restore(self, path: str) -> float:
        started = time.monotonic()
        self.bench.conn.restoreFlags(path, None, libvirt.VIR_DOMAIN_SAVE_RUNNING)
        return (time.monotonic() - started) * 1000

    @staticmethod
    def agent(path: str) -> agent_mod.AgentClient:
        return agent_mod.AgentClient(os.path.join(os.path.dirname(path), testguest.AGENT_SOCKET))


def _shared_readonly_disks(xml: str) -> str:
    """Eager copies share the master's frozen disk read-only: they are
    measured for memory and start time, not disk writes."""
    root = domainxml.parse(xml)
    for disk in root.findall("devices/disk"):
        if disk.find("readonly") is None:
            disk.append(domainxml.ET.Element("readonly"))
    return domainxml.to_string(root)
