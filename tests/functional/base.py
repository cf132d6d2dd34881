"""Shared set-up of the functional tests: real libvirt, real QEMU guests."""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
import xml.etree.ElementTree as ET

import libvirt
import testtools

from nova_clonedriver.demo import agent as agent_mod
from nova_clonedriver.demo import testguest
from nova_clonedriver.engine import api
from tests import waiting

# QEMU's user must reach the store, so not a mktemp folder under /tmp's 0700.
TEST_ROOT = "/var/tmp/ncd-tests"
# Run from a checkout: its test guests, unless told otherwise.
CHECKOUT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
for _variable, _guest in (
    ("NOVA_CLONE_GUEST_DIR", "guest"),
    ("NOVA_CLONE_DEBIAN_GUEST_DIR", "debian-guest"),
):
    os.environ.setdefault(_variable, os.path.join(CHECKOUT, "build", _guest))
LIBVIRT_URI = "qemu:///system"
MASTER_MEMORY_MIB = 256
PATTERN_SEED = 4242


class LibvirtTestCase(testtools.TestCase):
    """One state dir and domain-name prefix per test class; every domain with
    that prefix is destroyed and the state dir removed afterwards."""

    conn: libvirt.virConnect
    state_dir: str
    prefix: str

    @classmethod
    def setUpClass(cls) -> None:
        super().setUpClass()
        os.makedirs(TEST_ROOT, mode=0o711, exist_ok=True)
        os.chmod(TEST_ROOT, 0o711)
        cls.conn = libvirt.open(LIBVIRT_URI)
        cls.state_dir = tempfile.mkdtemp(prefix=cls.__name__[:12] + "-", dir=TEST_ROOT)
        os.chmod(cls.state_dir, 0o711)
        cls.prefix = f"t{uuid.uuid4().hex[:6]}"
        # Class clean-ups run even when a subclass's setUpClass fails half-way
        # (tearDownClass does not), so no domain outlives its test class.
        cls.addClassCleanup(cls.conn.close)
        cls.addClassCleanup(shutil.rmtree, cls.state_dir, ignore_errors=True)
        cls.addClassCleanup(testguest.destroy_all, cls.conn, cls.prefix)

    @classmethod
    def boot_master(
        cls, name: str, memory_mib: int = MASTER_MEMORY_MIB, disk_format: str = "qcow2"
    ) -> tuple[libvirt.virDomain, agent_mod.AgentClient, str]:
        workdir = os.path.join(cls.state_dir, name)
        domain, client = testguest.boot(
            cls.conn, f"{cls.prefix}-{name}", memory_mib, workdir, disk_format=disk_format
        )
        return domain, client, workdir

    def domain_names(self) -> set[str]:
        return {d.name() for d in self.conn.listAllDomains() if d.name().startswith(self.prefix)}


def clone_agent(engine: api.CloneEngine, clone_uuid: str) -> agent_mod.AgentClient:
    return testguest.agent_in(engine.store.clone_dir(clone_uuid))


def clone_console(engine: api.CloneEngine, clone_uuid: str) -> str:
    return testguest.console_log_in(engine.store.clone_dir(clone_uuid))


def disk_path(domain: libvirt.virDomain) -> str:
    """The file the domain's first disk writes to now."""
    root = ET.fromstring(domain.XMLDesc(0))
    return root.find("devices/disk/source").get("file")


def wait_for_ipv4(client: agent_mod.AgentClient, timeout_s: float = 30) -> None:
    """Until the guest's NIC has its DHCP lease (the guest is settled)."""
    waiting.wait(
        lambda: any(nic["ipv4"] for nic in client.request("identity")["nics"]),
        timeout_s,
        "the guest got no IPv4 address",
    )
