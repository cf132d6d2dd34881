"""CloneDriver's methods on real libvirt and real QEMU guests.

nova's objects stand in for its database and Glance is an in-memory fake
(neither is ours); the driver, the engine, libvirt and the guests are real.
"""

from __future__ import annotations

import concurrent.futures
import os
import time
from unittest import mock
import uuid

import fixtures
from nova import context as nova_context
from nova import exception
from nova import objects
from nova.compute import task_states
from nova.privsep import path as nova_privsep_path
from nova.tests import fixtures as nova_fixtures
from nova.tests.unit import fake_instance
from oslo_config import fixture as config_fixture

from nova_clonedriver.conf import CONF
from nova_clonedriver.demo import localnode
from nova_clonedriver.demo import pki as pki_mod
from nova_clonedriver.demo import testguest
from nova_clonedriver.engine import api
from nova_clonedriver.virt import driver as driver_mod
from tests.functional import base


class FakeImageAPI:
    """Glance's image records and data, in memory."""

    def __init__(self) -> None:
        self.images: dict[str, dict] = {}
        self.data: dict[str, bytes] = {}

    def create(self, **record) -> str:
        image_id = str(uuid.uuid4())
        self.images[image_id] = {"id": image_id, "status": "queued", "properties": {}, **record}
        return image_id

    def get(self, context, image_id):
        if image_id not in self.images:
            raise exception.ImageNotFound(image_id=image_id)
        return self.images[image_id]

    def update(self, context, image_id, metadata, data=None, purge_props=True):
        record = self.images[image_id]
        properties = metadata.pop("properties", {})
        record.update(metadata)
        record["properties"] = (
            properties if purge_props else {**record["properties"], **properties}
        )
        if data is not None:
            self.data[image_id] = data.read()
        return record


class TestCloneDriver(base.LibvirtTestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        objects.register_all()
        cls.instances_path = os.path.join(cls.state_dir, "instances")
        os.makedirs(cls.instances_path, mode=0o711)

    def setUp(self):
        super().setUp()
        config = self.useFixture(config_fixture.Config(CONF))
        config.config(
            instances_path=self.instances_path,
            host="node-a",
            instance_name_template=f"{self.prefix}-%08x",
        )
        config.config(group="libvirt", virt_type="qemu", connection_uri=base.LIBVIRT_URI)
        config.config(
            group="clone",
            state_dir=os.path.join(self.state_dir, uuid.uuid4().hex[:6]),
            min_free_memory_mib=0,
        )
        # Privileged calls (chown of the memory image) run in-process, as
        # nova's own tests run them.
        self.useFixture(nova_fixtures.PrivsepFixture())
        self.context = nova_context.get_admin_context()
        self.driver = driver_mod.CloneDriver(mock.Mock(), read_only=False)
        self.images = self.driver._image_api = FakeImageAPI()
        self.master = self._instance(1, base.MASTER_MEMORY_MIB, {})
        _, agent = testguest.boot(
            self.conn,
            self.master.name,
            base.MASTER_MEMORY_MIB,
            os.path.join(self.state_dir, "master"),
        )
        self.addCleanup(testguest.destroy_all, self.conn, self.prefix)
        self.pattern = agent.request("fill", 32, base.PATTERN_SEED)["checksum"]
        agent.close()

    def _instance(self, instance_id, memory_mb, extra_specs, image_ref=None):
        flavor = objects.Flavor(
            name=f"f{memory_mb}",
            memory_mb=memory_mb,
            vcpus=1,
            root_gb=0,
            ephemeral_gb=0,
            swap=0,
            extra_specs=extra_specs,
        )
        instance = fake_instance.fake_instance_obj(
            self.context,
            id=instance_id,
            uuid=str(uuid.uuid4()),
            flavor=flavor,
            image_ref=image_ref or "",
            memory_mb=memory_mb,
            vcpus=1,
        )
        # Fields nova would otherwise lazy-load from its database.
        instance.numa_topology = None
        instance.system_metadata = {}
        instance.metadata = {}
        instance.resources = None
        instance.migration_context = None
        instance.pci_devices = objects.PciDeviceList()
        instance.save = mock.Mock()
        return instance

    def _live_image(self):
        image_id = self.images.create(name="web-live", properties={"clone_live": "true"})
        update_task_state = mock.Mock()
        self.driver.snapshot(self.context, self.master, image_id, update_task_state)
        update_task_state.assert_has_calls(
            [
                mock.call(task_state=task_states.IMAGE_PENDING_UPLOAD),
                mock.call(
                    task_state=task_states.IMAGE_UPLOADING,
                    expected_state=task_states.IMAGE_PENDING_UPLOAD,
                ),
            ]
        )
        return image_id

    def _spawn(self, instance, driver=None):
        (driver or self.driver).spawn(
            self.context,
            instance,
            objects.ImageMeta.from_dict({}),
            injected_files=[],
            admin_password=None,
            allocations={},
            network_info=[],
        )

    def test_live_image_then_clones_then_delete(self):
        chown = self.useFixture(
            fixtures.MockPatch("nova.privsep.path.chown", wraps=nova_privsep_path.chown)
        ).mock
        image_id = self._live_image()
        image = self.images.get(self.context, image_id)
        properties = image["properties"]
        generation = self.driver.clone_engine.store.load(properties["clone_generation"])
        self.assertEqual(
            ("active", "node-a", self.master.uuid, "256", "1"),
            (
                image["status"],
                properties["clone_origin_host"],
                properties["clone_master"],
                properties["clone_memory_mb"],
                properties["clone_vcpus"],
            ),
        )
        self.assertIn(generation.id.encode(), self.images.data[image_id])
        # nova-compute is not root in a real cloud: the image is given to
        # QEMU through nova's privsep.
        [(path, uid, _gid)] = [c.args for c in chown.call_args_list]
        self.assertEqual("memory.img", os.path.basename(path))
        self.assertEqual(uid, os.stat(generation.memory_image).st_uid)
        self.assertEqual(1, self.conn.lookupByName(self.master.name).state()[0])

        clones = [
            self._instance(2 + i, base.MASTER_MEMORY_MIB, {"clone:enabled": "true"}, image_id)
            for i in range(2)
        ]
        for clone in clones:
            self._spawn(clone)
            domain = self.conn.lookupByUUIDString(clone.uuid)
            self.assertEqual(clone.name, domain.name())
            folder = os.path.join(self.instances_path, clone.uuid)
            agent = testguest.agent_in(folder)
            self.addCleanup(agent.close)
            self.assertEqual(32, agent.wait_ready(timeout_s=60)["pattern_mib"])
            self.assertEqual(self.pattern, agent.request("checksum")["checksum"])
            self.assertTrue(os.path.exists(testguest.console_log_in(folder)))
        self.assertEqual(
            {c.uuid for c in clones}, {r.uuid for r in self.driver.clone_engine.clones(generation)}
        )

        for clone in clones:
            self.driver.destroy(self.context, clone, network_info=[])
            self.assertNotIn(clone.name, self.domain_names())
            self.assertFalse(os.path.exists(os.path.join(self.instances_path, clone.uuid)))
        self.assertEqual([], self.driver.clone_engine.clones(generation))
        self.assertEqual(1, self.conn.lookupByName(self.master.name).state()[0])

    def test_stop_start_and_reboot_restart_a_clone_from_the_snapshot(self):
        image_id = self._live_image()
        clone = self._instance(2, 256, {"clone:enabled": "true"}, image_id)
        self._spawn(clone)
        self.addCleanup(self.driver.destroy, self.context, clone, [])
        folder = os.path.join(self.instances_path, clone.uuid)

        def agent():
            client = testguest.agent_in(folder)
            self.addCleanup(client.close)
            client.wait_ready(timeout_s=60)
            return client

        agent().request("dirty", 100, 7)  # the clone diverges from its master
        self.driver.power_off(clone)
        self.assertNotIn(clone.name, self.domain_names())
        self.assertEqual(
            [clone.uuid],
            [
                r.uuid
                for r in self.driver.clone_engine.clones(
                    self.driver.clone_engine.store.load(
                        self.images.get(self.context, image_id)["properties"]["clone_generation"]
                    )
                )
            ],
        )
        self.driver.power_on(self.context, clone, network_info=[])
        client = agent()
        self.assertEqual(self.pattern, client.request("checksum")["checksum"])
        client.request("dirty", 100, 8)
        self.driver.reboot(self.context, clone, [], "HARD")
        client = agent()
        self.assertEqual(self.pattern, client.request("checksum")["checksum"])
        client.request("dirty", 100, 9)
        checksum = client.request("checksum")["checksum"]
        self.driver.resume_state_on_host_boot(self.context, clone, [], share_info=None)
        self.assertEqual(checksum, client.request("checksum")["checksum"])  # untouched
        self.conn.lookupByUUIDString(clone.uuid).destroy()  # as if the host rebooted
        self.driver.resume_state_on_host_boot(self.context, clone, [], share_info=None)
        self.assertEqual(self.pattern, agent().request("checksum")["checksum"])
        self.assertEqual(clone.name, self.conn.lookupByUUIDString(clone.uuid).name())

    def _nova_records(self, *instances):
        """nova's database, for Instance.get_by_uuid."""
        by_uuid = {i.uuid: i for i in instances}

        def get_by_uuid(context, instance_uuid):
            if instance_uuid not in by_uuid:
                raise exception.InstanceNotFound(instance_id=instance_uuid)
            return by_uuid[instance_uuid]

        self.useFixture(
            fixtures.MockPatchObject(objects.Instance, "get_by_uuid", side_effect=get_by_uuid)
        )

    def test_fork_on_demand_shares_one_bless_per_burst(self):
        self.master.host = "node-a"
        self._nova_records(self.master)
        master_uuid = self.master.uuid
        forks = [self._instance(2 + i, 256, {"clone:enabled": "true"}) for i in range(3)]
        for fork in forks:
            fork.metadata = {"clone_of": master_uuid}
        self._spawn(forks[0])
        self._spawn(forks[1])
        store = self.driver.clone_engine.store
        self.assertEqual(1, len(store.generation_ids()))  # the second reused it
        self.useFixture(config_fixture.Config(CONF)).config(group="clone", fork_reuse_s=0)
        self._spawn(forks[2])
        self.assertEqual(2, len(store.generation_ids()))
        for fork in forks:
            self.addCleanup(self.driver.destroy, self.context, fork, [])
            agent = testguest.agent_in(os.path.join(self.instances_path, fork.uuid))
            self.addCleanup(agent.close)
            agent.wait_ready(timeout_s=60)
            self.assertEqual(self.pattern, agent.request("checksum")["checksum"])

        stranger = self._instance(9, 256, {"clone:enabled": "true"})
        stranger.metadata = {"clone_of": str(uuid.uuid4())}
        self.assertRefused(
            stranger,
            exception.InvalidInput,
            f"clone_of={stranger.metadata['clone_of']}: cannot fork",
        )
        # Another project's fork of this master; the master on another host.
        other = self._instance(10, 256, {"clone:enabled": "true"})
        other.project_id = "another-project"
        other.metadata = {"clone_of": master_uuid}
        self.assertRefused(
            other, exception.InvalidInput, "project another-project has no such server"
        )
        probe = self._instance(11, 256, {"clone:enabled": "true"})
        probe.metadata = {"clone_of": master_uuid}
        self.master.host = "node-b"
        self.assertRefused(probe, exception.InvalidInput, "it runs on another host")
        self.master.host = "node-a"
        for policy, message in (
            ("disabled", "forking servers is disabled"),
            ("admin", "only admins may fork servers"),
        ):
            self.useFixture(config_fixture.Config(CONF)).config(group="clone", fork_policy=policy)
            self.context.is_admin = False
            self.assertRefused(probe, exception.InvalidInput, message)
        self.assertEqual(2, len(store.generation_ids()))

        # Two requests in parallel share one bless (once the generations
        # above are too old to be reused).
        reuse_s = 5
        youngest_s = min(api.age_s(store.load(g).created_at) for g in store.generation_ids())
        time.sleep(max(0.0, reuse_s + 0.5 - youngest_s))
        self.useFixture(config_fixture.Config(CONF)).config(
            group="clone", fork_policy="project", fork_reuse_s=reuse_s
        )
        self.context.is_admin = True
        parallel = [self._instance(20 + i, 256, {"clone:enabled": "true"}) for i in range(2)]
        for fork in parallel:
            fork.metadata = {"clone_of": master_uuid}
            self.addCleanup(self.driver.destroy, self.context, fork, [])
        before = set(store.generation_ids())
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            for future in [pool.submit(self._spawn, fork) for fork in parallel]:
                future.result()
        self.assertEqual(1, len(set(store.generation_ids()) - before))

        # Fork generations are freed once unused and older than fork_reuse_s.
        for fork in [*forks, *parallel]:
            self.driver.destroy(self.context, fork, [])
        self.useFixture(config_fixture.Config(CONF)).config(group="clone", fork_reuse_s=0)
        self.driver.manage_image_cache(self.context, [])
        self.assertEqual([], store.generation_ids())

    def assertRefused(self, instance, error_class, message, driver=None):
        domains_before = self.domain_names()
        error = self.assertRaises(
            error_class,
            (driver or self.driver).spawn,
            self.context,
            instance,
            objects.ImageMeta.from_dict({}),
            injected_files=[],
            admin_password=None,
            allocations={},
            network_info=[],
        )
        self.assertIn(message, str(error))
        self.assertEqual(domains_before, self.domain_names())
        self.assertFalse(os.path.exists(os.path.join(self.instances_path, instance.uuid)))

    def test_bad_requests_are_refused_and_change_nothing(self):
        image_id = self._live_image()
        plain_image = self.images.create(name="plain")
        self.assertRefused(
            self._instance(2, 512, {"clone:enabled": "true"}, image_id),
            exception.ImageUnacceptable,
            "has 512 MB and 1 vCPUs but the live image's master had 256 MB and 1 vCPUs",
        )
        self.assertRefused(
            self._instance(3, 256, {}, image_id),
            exception.ImageUnacceptable,
            "boot it with a clone flavor",
        )
        self.assertRefused(
            self._instance(4, 256, {"clone:enabled": "true"}, plain_image),
            exception.ImageUnacceptable,
            "is not a live image",
        )
        gone = self.images.create(name="gone", properties={"clone_generation": "0bad"})
        self.assertRefused(
            self._instance(5, 256, {"clone:enabled": "true"}, gone),
            exception.ImageUnacceptable,
            "snapshot generation 0bad is not on host node-a",
        )
        self.useFixture(config_fixture.Config(CONF)).config(
            group="clone", min_free_memory_mib=1 << 30
        )
        self.assertRefused(
            self._instance(6, 256, {"clone:enabled": "true"}, image_id),
            exception.ComputeResourcesUnavailable,
            "below [clone] min_free_memory_mib=1073741824",
        )

    def test_unsupported_operations_on_a_clone_are_refused(self):
        image_id = self._live_image()
        clone = self._instance(2, 256, {"clone:enabled": "true"}, image_id)
        self._spawn(clone)
        self.addCleanup(self.driver.destroy, self.context, clone, [])
        error = self.assertRaises(
            exception.MigrationPreCheckError,
            self.driver.check_can_live_migrate_source,
            self.context,
            clone,
            None,
        )
        self.assertIn("live migration is not supported for live clones", str(error))
        error = self.assertRaises(
            exception.InstanceFaultRollback,
            self.driver.migrate_disk_and_power_off,
            self.context,
            clone,
            "node-b",
            clone.flavor,
            [],
        )
        self.assertIn("resize and cold migration is not supported", str(error.inner_exception))
        self.assertRaises(
            exception.InstanceSuspendFailure, self.driver.suspend, self.context, clone
        )
        self.assertEqual(1, self.conn.lookupByUUIDString(clone.uuid).state()[0])

    def test_a_deleted_live_image_frees_its_generation_after_its_last_clone(self):
        kept_id, deleted_id = self._live_image(), self._live_image()
        store = self.driver.clone_engine.store
        kept, deleted = (
            self.images.get(self.context, i)["properties"]["clone_generation"]
            for i in (kept_id, deleted_id)
        )
        clone = self._instance(2, 256, {"clone:enabled": "true"}, deleted_id)
        self._spawn(clone)
        del self.images.images[deleted_id]  # deleted in Glance
        # (Glance is asked as nova's service user; see tests/unit/
        # test_live_image_deletion.py for how it decides.)
        self.useFixture(
            fixtures.MockPatchObject(
                nova_context, "get_nova_service_user_context", return_value=self.context
            )
        )
        self.driver.manage_image_cache(self.context, [])
        self.assertEqual({kept, deleted}, set(store.generation_ids()))
        self.driver.destroy(self.context, clone, network_info=[])
        self.driver.manage_image_cache(self.context, [])
        self.assertEqual([kept], store.generation_ids())

    def test_a_master_without_a_generation_id_is_refused_with_the_fix(self):
        old = self._instance(8, 256, {})
        _, agent = testguest.boot(
            self.conn, old.name, 256, os.path.join(self.state_dir, "old-master"), genid=False
        )
        agent.close()
        image_id = self.images.create(name="x", properties={"clone_live": "true"})
        error = self.assertRaises(
            exception.NovaException, self.driver.snapshot, self.context, old, image_id, mock.Mock()
        )
        self.assertIn(f"cannot make a live image of {old.uuid}", str(error))
        self.assertIn("has no VM generation ID", str(error))
        self.assertIn("hard reboot it", str(error))
        self.assertEqual("queued", self.images.get(self.context, image_id)["status"])
        self.assertEqual([], self.driver.clone_engine.store.generation_ids())
        self.assertEqual(1, self.conn.lookupByName(old.name).state()[0])

    def test_a_failed_live_snapshot_leaves_the_image_unchanged(self):
        image_id = self.images.create(name="x", properties={"clone_live": "true"})
        ghost = self._instance(9, 256, {})  # no such domain
        error = self.assertRaises(
            exception.NovaException,
            self.driver.snapshot,
            self.context,
            ghost,
            image_id,
            mock.Mock(),
        )
        self.assertIn(f"live image of {ghost.uuid}", str(error))
        self.assertEqual("queued", self.images.get(self.context, image_id)["status"])
        self.assertEqual([], os.listdir(self.driver.clone_engine.store.generations_dir))

    def test_a_live_image_of_another_host_launches_through_the_page_services(self):
        pki = pki_mod.ThrowawayPKI(os.path.join(self.state_dir, "pki"))
        node_a = localnode.LocalNode("node-a", self.state_dir, pki)
        node_b = localnode.LocalNode("node-b", self.state_dir, pki)
        self.useFixture(config_fixture.Config(CONF)).config(
            group="clone", state_dir=node_a.state_dir
        )
        for node in (node_a, node_b):
            node.start()
            self.addCleanup(node.close)
        self.driver = driver_mod.CloneDriver(mock.Mock(), read_only=False)
        self.driver._image_api = self.images
        image_id = self._live_image()
        properties = self.images.get(self.context, image_id)["properties"]
        self.assertEqual("node-a", properties["clone_origin_host"])
        # Host A publishes its page service in nova's record of it (the
        # resource tracker saves these stats); host B reads it there.
        with mock.patch.object(
            driver_mod.libvirt_driver.LibvirtDriver, "get_available_resource", return_value={}
        ):
            self.useFixture(config_fixture.Config(CONF)).config(
                group="pageserver", advertise_address=node_a.address
            )
            stats = self.driver.get_available_resource("node-a")["stats"]
        self.assertEqual({"clone_page_service": node_a.address}, stats)
        records = {"node-a": [objects.ComputeNode(host="node-a", stats=stats)]}

        def compute_nodes(context, host):
            if host not in records:
                raise exception.ComputeHostNotFound(host=host)
            return records[host]

        self.useFixture(
            fixtures.MockPatchObject(
                objects.ComputeNodeList, "get_all_by_host", side_effect=compute_nodes
            )
        )

        # Host B: its own store and page service, the same Glance.
        self.useFixture(config_fixture.Config(CONF)).config(host="node-b")
        self.useFixture(config_fixture.Config(CONF)).config(
            group="clone", state_dir=node_b.state_dir
        )
        driver_b = driver_mod.CloneDriver(mock.Mock(), read_only=False)
        driver_b._image_api = self.images
        clone = self._instance(
            2, 256, {"clone:enabled": "true", "clone:prefetch": "working-set"}, image_id
        )
        self._spawn(clone, driver_b)
        self.addCleanup(driver_b.destroy, self.context, clone, [])
        agent = testguest.agent_in(os.path.join(self.instances_path, clone.uuid))
        self.addCleanup(agent.close)
        agent.wait_ready(timeout_s=60)
        self.assertEqual(self.pattern, agent.request("checksum")["checksum"])
        generation = driver_b.clone_engine.store.load(properties["clone_generation"])
        self.assertEqual(node_a.address, generation.origin)
        self.assertGreater(node_b.client.stats()["remote"][generation.id]["bytes_fetched"], 0)

        # What image owners can set decides nothing: a key that is not the
        # generation's, an origin host that is not a compute host.
        driver_b.destroy(self.context, clone, [])
        node_b.client.release(generation.id)
        wrong_key = self.images.create(
            name="wrong-key", properties={**properties, "clone_access_key": "0" * 64}
        )
        self.assertRefused(
            self._instance(4, 256, {"clone:enabled": "true"}, wrong_key),
            exception.ImageUnacceptable,
            "did not present the access key",
            driver_b,
        )
        elsewhere = self.images.create(
            name="elsewhere", properties={**properties, "clone_origin_host": "evil.example.org"}
        )
        self.assertRefused(
            self._instance(5, 256, {"clone:enabled": "true"}, elsewhere),
            exception.ImageUnacceptable,
            "origin host evil.example.org is not a compute host",
            driver_b,
        )
        # The right key in another image: attached, then refused and released.
        copied = self.images.create(name="copied", properties=dict(properties))
        self.assertRefused(
            self._instance(6, 256, {"clone:enabled": "true"}, copied),
            exception.ImageUnacceptable,
            "belongs to another live image",
            driver_b,
        )
        self.assertNotIn(generation.id, driver_b.clone_engine.store.generation_ids())
        clone = self._instance(7, 256, {"clone:enabled": "true"}, image_id)
        self._spawn(clone, driver_b)

        # Host B's page service down: nova is told to try another host.
        driver_b.destroy(self.context, clone, [])
        node_b.stop()
        driver_b.clone_engine.store.remove_generation(generation)  # as if released
        self.driver = driver_b
        self.assertRefused(
            self._instance(3, 256, {"clone:enabled": "true"}, image_id),
            exception.ComputeResourcesUnavailable,
            "the page service does not answer",
        )
