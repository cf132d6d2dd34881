"""Live clones through nova's REST API, on real libvirt.

nova's own in-process services run here as in any nova functional test (API,
conductor, scheduler, the placement fixture, the Glance and Neutron fixtures),
and the compute service runs ``compute_driver = clonedriver.CloneDriver`` on
the real libvirt-python and libvirtd (qemu:///system, TCG), with no
fakelibvirt. Flavors, the master, its live image and the clones are made
through the REST API only; libvirt, the guests' consoles, the engine's store
and placement are then checked from the outside.

Importing this module eventlet-monkey-patches the test process (nova's
functional package does so on import), as nova's functional tests require.
"""

# nova's functional package monkey-patches on import: import it first.
import nova.tests.functional

# isort: split

import builtins
import contextlib
import glob
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
import warnings

import fixtures

# Import the real libvirt module before nova.test.TestCase installs
# ImportModulePoisonFixture({'libvirt', 'guestfs'}): that fixture only hooks
# sys.meta_path, so a module already in sys.modules is never refused.
import libvirt
from lxml import etree
from nova.tests import fixtures as nova_fixtures
from nova.tests.functional import integrated_helpers
from nova.tests.functional.api import client
import nova.virt.libvirt.host
import psutil
from sqlalchemy import exc as sqla_exc

from nova_clonedriver import conf  # noqa: F401 (registers [clone] for self.flags)
from nova_clonedriver.demo import testguest
from nova_clonedriver.engine import api as engine_api
from tests import guestconsole
from tests import waiting
from tests.functional import base

PATTERN_MIB = 32
CLONES = 4
HEARTBEAT = re.compile(r"clone-agent hb=(\d+)")
FILLED = re.compile(r"clone-agent filled mib=(\d+) seed=(\d+) checksum=([0-9a-f]{16})")

# The originals of what nova.test.TestCase poisons, captured before setUp.
_REAL = {
    "os.uname": os.uname,
    "psutil.net_if_addrs": psutil.net_if_addrs,
    "os.path.isdir": os.path.isdir,
    "builtins.open": builtins.open,
    "glob.iglob": glob.iglob,
    "glob.glob": glob.glob,
    "os.listdir": os.listdir,
}


class NovaAPITestCase(integrated_helpers.ProviderUsageBaseTestCase):
    """nova's in-process cloud with CloneDriver on real libvirt, and the
    helpers of the tests that drive it through the REST API."""

    compute_driver = "clonedriver.CloneDriver"
    microversion = "latest"

    def setUp(self):
        os.makedirs(base.TEST_ROOT, mode=0o711, exist_ok=True)
        os.chmod(base.TEST_ROOT, 0o711)
        self.root = tempfile.mkdtemp(prefix="api-", dir=base.TEST_ROOT)
        os.chmod(self.root, 0o711)
        self.addCleanup(shutil.rmtree, self.root, True)
        self.instances_path = os.path.join(self.root, "inst")
        self.state_dir = os.path.join(self.root, "store")
        os.makedirs(self.instances_path, mode=0o711)
        # A per-run domain name prefix, so we only ever touch our domains.
        self.prefix = f"ncdapi{uuid.uuid4().hex[:6]}-"
        self.conn = libvirt.open(base.LIBVIRT_URI)
        self.addCleanup(self.conn.close)
        self.addCleanup(testguest.destroy_all, self.conn, self.prefix)

        # The pip-installed nova has api-paste.ini in <venv>/etc/nova, not
        # where nova's ConfFixture looks (site-packages/../etc/nova).
        self.flags(
            api_paste_config=os.path.join(sys.prefix, "etc", "nova", "api-paste.ini"), group="wsgi"
        )
        super().setUp()

        # --- undo what nova.test.TestCase poisons for unit-ish tests -------
        for target, real in _REAL.items():
            self.useFixture(fixtures.MonkeyPatch(target, real))
        # PoisonFunctions makes Host._init_events sys.exit(); the real one
        # starts threads that hang the test's executor shutdown. Lifecycle
        # events are not needed here.
        self.useFixture(
            fixtures.MonkeyPatch("nova.virt.libvirt.host.Host._init_events", lambda host: None)
        )
        # nova 34's WarningsFixture turns SQLAlchemy deprecation warnings
        # raised in nova into errors, and with SQLAlchemy 2.1 nova's own
        # _build_instance_get() warns about orm.noload(): the conductor then
        # fails to put an instance whose build failed on every host into
        # ERROR (it stays BUILD). Not ours to fix: ignore that one warning.
        warnings.filterwarnings(
            "ignore",
            message=r"The noload\(\) option is deprecated",
            category=sqla_exc.SADeprecationWarning,
        )
        # Run privsep'd functions in-process (we are root).
        self.useFixture(nova_fixtures.PrivsepFixture())
        # The host is shared: let this compute see only our domains.
        real_list = nova.virt.libvirt.host.Host.list_instance_domains
        prefix = self.prefix

        def list_ours(host, only_running=True):
            return [d for d in real_list(host, only_running) if d.name().startswith(prefix)]

        self.useFixture(
            fixtures.MonkeyPatch("nova.virt.libvirt.host.Host.list_instance_domains", list_ours)
        )

        self.flags(instances_path=self.instances_path, instance_name_template=self.prefix + "%08x")
        self.flags(virt_type="qemu", connection_uri=base.LIBVIRT_URI, group="libvirt")
        self.flags(state_dir=self.state_dir, min_free_memory_mib=0, group="clone")

        self._create_guest_images()
        self.compute = self.start_service("compute", host="compute1")
        # The node is named after the real host, not "compute1".
        [provider] = self._get_all_providers()
        self.rp_uuid = provider["uuid"]

    # -- helpers -------------------------------------------------------------

    def _create_guest_images(self):
        def add(name, path, disk_format, properties=None):
            image = {
                "id": str(uuid.uuid4()),
                "name": name,
                "status": "active",
                "visibility": "public",
                "disk_format": disk_format,
                "container_format": "bare" if disk_format == "raw" else disk_format,
                "size": os.path.getsize(path),
                "min_ram": 0,
                "min_disk": 0,
                "protected": False,
                "properties": properties or {},
            }
            with open(path, "rb") as f:
                return self.glance.create(None, image, data=f)["id"]

        guest_dir = testguest.guest_dir_default()
        kernel_id = add("guest-kernel", os.path.join(guest_dir, "vmlinuz"), "aki")
        ramdisk_id = add("guest-ramdisk", os.path.join(guest_dir, "initrd.img"), "ari")
        root = os.path.join(self.root, "root.raw")
        subprocess.run(["qemu-img", "create", "-q", "-f", "raw", root, "1M"], check=True)
        self.image_id = add(
            "guest-root",
            root,
            "raw",
            {
                "kernel_id": kernel_id,
                "ramdisk_id": ramdisk_id,
                "os_command_line": (
                    f"console=ttyS0 quiet clone_agent.fill={PATTERN_MIB}:{base.PATTERN_SEED}"
                ),
            },
        )

    def _flavor(self, name, memory_mb, extra_specs=None):
        flavor = self.api.post_flavor(
            {"flavor": {"name": f"{self.prefix}{name}", "ram": memory_mb, "vcpus": 1, "disk": 1}}
        )
        self.addCleanup(self._ignore_missing, self.api.delete_flavor, flavor["id"])
        if extra_specs:
            self.api.post_extra_spec(flavor["id"], {"extra_specs": extra_specs})
        return flavor["id"]

    @staticmethod
    def _ignore_missing(call, *args):
        with contextlib.suppress(client.OpenStackApiNotFoundException):
            call(*args)

    def _boot(self, name, image_id, flavor_id, count=1, api=None, metadata=None):
        body = {"name": name, "imageRef": image_id, "flavorRef": flavor_id, "networks": "none"}
        if count > 1:
            body.update(min_count=count, max_count=count, return_reservation_id=True)
        if metadata:
            body["metadata"] = metadata
        return (api or self.api).post_server({"server": body})

    def _wait_status(self, server_id, status, timeout_s=180):
        def reached():
            server = self.api.get_server(server_id)
            if server["status"] == status:
                return server
            if server["status"] == "ERROR":
                raise AssertionError(
                    f"server {server_id} went ERROR, not {status}: {server.get('fault')}"
                )
            return None

        return waiting.wait(
            reached,
            timeout_s,
            lambda: (
                f"server {server_id} is {self.api.get_server(server_id)['status']}, not {status}"
            ),
        )

    def _wait_error(self, server_id, timeout_s=120):
        def failed():
            server = self.api.get_server(server_id)
            if server["status"] == "ACTIVE":
                raise AssertionError(f"server {server_id} went ACTIVE, not ERROR")
            return server if server["status"] == "ERROR" else None

        return waiting.wait(failed, timeout_s, lambda: f"server {server_id} is not ERROR")

    def _wait_gone(self, server_ids, timeout_s=120):
        def gone():
            left = {s["id"] for s in self.api.get_servers(detail=False)}
            return not left & set(server_ids)

        waiting.wait(gone, timeout_s, lambda: f"servers {server_ids} not deleted")

    def _console(self, server_id):
        path = os.path.join(self.instances_path, server_id, "console.log")
        try:
            with open(path, errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def _heartbeats(self, server_id):
        return [int(n) for n in HEARTBEAT.findall(self._console(server_id))]

    def _wait_heartbeat(self, server_id, timeout_s=180):
        return waiting.wait(
            lambda: self._heartbeats(server_id),
            timeout_s,
            lambda: f"no heartbeat from {server_id}: {self._console(server_id)[-2000:]!r}",
            interval_s=1,
        )

    def _console_request(self, server_id, command, timeout_s=30):
        """The agent's reply to ``command``, typed on the server's console."""
        return guestconsole.request(
            self.conn.lookupByUUIDString(server_id),
            lambda: self._console(server_id),
            command,
            timeout_s,
        )

    def _our_domains(self):
        return {d.name() for d in self.conn.listAllDomains() if d.name().startswith(self.prefix)}


class TestLiveClonesThroughNovaAPI(NovaAPITestCase):
    # -- the test --------------------------------------------------------------

    def test_live_clones_through_the_api(self):
        started = time.monotonic()
        # 1. Flavors, and our extra-spec validator behind nova's API.
        normal = self._flavor("normal", base.MASTER_MEMORY_MIB)
        clone_flavor = self._flavor("clone", base.MASTER_MEMORY_MIB, {"clone:enabled": "true"})
        big_clone = self._flavor("clone512", 512, {"clone:enabled": "true"})
        self.assertEqual({"clone:enabled": "true"}, self.api.get_extra_specs(clone_flavor))
        error = self.assertRaises(
            client.OpenStackApiException,
            self.api.post_extra_spec,
            normal,
            {"extra_specs": {"clone:enabled": "maybe"}},
        )
        self.assertEqual(400, error.response.status_code)
        self.assertIn("'maybe' is not a valid boolean-like value", error.response.text)
        self.assertEqual({}, self.api.get_extra_specs(normal))

        # 2. The master: an ordinary server, booted by LibvirtDriver's path.
        master = self._boot("master", self.image_id, normal)
        master = self._wait_status(master["id"], "ACTIVE")
        # Without the virtio balloon nova gives every server (with free page
        # reporting on): in a clone it would punch holes into the memory image.
        balloons = etree.fromstring(self.conn.lookupByUUIDString(master["id"]).XMLDesc(0)).findall(
            "devices/memballoon"
        )
        self.assertEqual(["none"], [b.get("model") for b in balloons])
        # Let it run a few seconds, so that carrying on from the master's
        # count is told apart from starting again.
        waiting.wait(
            lambda: max(self._heartbeats(master["id"]) or [0]) >= 5,
            180,
            lambda: f"no heartbeat 5 from {master['id']}: {self._console(master['id'])[-2000:]!r}",
            interval_s=1,
        )
        filled = FILLED.search(self._console(master["id"]))
        self.assertIsNotNone(filled, self._console(master["id"]))
        self.assertEqual((str(PATTERN_MIB), str(base.PATTERN_SEED)), filled.groups()[:2])
        master_checksum = filled.group(3)

        # 3. A live image: createImage with clone_live=true blesses the master.
        last_hb_before_bless = self._heartbeats(master["id"])[-1]
        t_bless = time.monotonic()
        image_id = self.api.post_server_action(
            master["id"],
            {"createImage": {"name": "master-live", "metadata": {"clone_live": "true"}}},
        )["image_id"]

        def image_ready():
            image = self.glance.show(None, image_id)
            return (
                image
                if (image["status"] == "active" and "clone_generation" in image["properties"])
                else None
            )

        image = waiting.wait(image_ready, 120, lambda: self.glance.show(None, image_id))
        bless_s = time.monotonic() - t_bless
        self._wait_for_server_parameter(master, {"OS-EXT-STS:task_state": None})
        properties = image["properties"]
        self.assertEqual(
            ("true", "compute1", master["id"], "256", "1"),
            (
                properties["clone_live"],
                properties["clone_origin_host"],
                properties["clone_master"],
                properties["clone_memory_mb"],
                properties["clone_vcpus"],
            ),
        )
        engine = engine_api.CloneEngine(self.conn, self.state_dir)
        [generation] = engine.generations()
        self.assertEqual(generation.id, properties["clone_generation"])
        self.assertEqual("ACTIVE", self.api.get_server(master["id"])["status"])

        # 4. Four clones of it in one request.
        t_post = time.monotonic()
        reservation = self._boot("clone", image_id, clone_flavor, count=CLONES)
        search = {"reservation_id": reservation["reservation_id"]}

        def all_active():
            servers = self.api.get_servers(search_opts=search)
            failed = [s for s in servers if s["status"] == "ERROR"]
            if failed:
                raise AssertionError(
                    f"clone {failed[0]['id']} went ERROR: {failed[0].get('fault')}"
                )
            if len(servers) == CLONES and all(s["status"] == "ACTIVE" for s in servers):
                return servers
            return None

        clones = waiting.wait(
            all_active,
            180,
            lambda: [(s["id"], s["status"]) for s in self.api.get_servers(search_opts=search)],
        )
        post_to_active_s = time.monotonic() - t_post
        clone_ids = [c["id"] for c in clones]

        for clone in clones:
            domain = self.conn.lookupByUUIDString(clone["id"])
            self.assertEqual(clone["OS-EXT-SRV-ATTR:instance_name"], domain.name())
            self.assertTrue(domain.isActive())
        self.assertEqual(set(clone_ids), {r.uuid for r in engine.clones(generation)})
        first_hbs = []
        for clone_id in clone_ids:
            first_hb = self._wait_heartbeat(clone_id)[0]
            first_hbs.append(first_hb)
            self.assertGreater(first_hb, last_hb_before_bless, clone_id)
            reply = self._console_request(clone_id, "checksum")
            self.assertEqual(
                (True, PATTERN_MIB, master_checksum),
                (reply["ok"], reply["mib"], reply["checksum"]),
                clone_id,
            )
        self.assertEqual(
            {"VCPU": 1 + CLONES, "MEMORY_MB": 256 * (1 + CLONES), "DISK_GB": 1 + CLONES},
            {k: v for k, v in self._get_provider_usages(self.rp_uuid).items() if v},
        )

        # 5. Bad requests: a flavor that does not match the master, and the
        # live image without a clone flavor.
        domains_before = self._our_domains()
        wrong_size = self._boot("wrong-size", image_id, big_clone)
        not_clone = self._boot("not-clone", image_id, normal)
        fault = self._wait_error(wrong_size["id"])["fault"]["message"]
        self.assertIn("a clone must match its master", fault)
        self.assertIn("has 512 MB and 1 vCPUs", fault)
        fault = self._wait_error(not_clone["id"])["fault"]["message"]
        self.assertIn("boot it with a clone flavor", fault)
        self.assertEqual(domains_before, self._our_domains())

        # 6. Delete everything: no domain, clone reference or usage is left.
        for server_id in [*clone_ids, wrong_size["id"], not_clone["id"], master["id"]]:
            self.api.delete_server(server_id)
        self._wait_gone([*clone_ids, wrong_size["id"], not_clone["id"], master["id"]])
        # Images through nova's image proxy API, which ends at 2.35.
        self.api.microversion = "2.35"
        try:
            self.api.delete_image(image_id)
            self.assertRaises(client.OpenStackApiNotFoundException, self.api.get_image, image_id)
        finally:
            self.api.microversion = self.microversion
        self.assertEqual(set(), self._our_domains())
        self.assertEqual(
            [], [(g.id, engine.clones(g)) for g in engine.generations() if engine.clones(g)]
        )
        for clone_id in clone_ids:
            self.assertFalse(os.path.exists(os.path.join(self.instances_path, clone_id)))

        def no_usages():
            return not any(self._get_provider_usages(self.rp_uuid).values())

        waiting.wait(no_usages, 30, lambda: self._get_provider_usages(self.rp_uuid))
        print(
            f"bless (createImage to image active) {bless_s:.1f} s; "
            f"{CLONES} clones POST to all ACTIVE {post_to_active_s:.1f} s; "
            f"master hb {last_hb_before_bless} before the bless, clones' first hb "
            f"{first_hbs}; "
            f"test {time.monotonic() - started:.1f} s"
        )
