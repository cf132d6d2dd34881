"""Two projects, one cloud: who may clone what, and what nova may do to a
master, through nova's REST API on real libvirt (see test_nova_api.py for
the set-up).

Project A owns a master and its live image; project B is a second tenant
of the same cloud. Every refusal is checked to leave nothing behind, and
every operation on the master to keep what its guest wrote after the bless
without touching the frozen base its clones run from.
"""

# First: importing it monkey-patches the process, as nova's functional tests need.
from tests.functional import test_nova_api

# isort: split

import hashlib
import os
import uuid

from nova import context as nova_context
from nova import objects
from nova.tests.functional.api import client

from nova_clonedriver.conf import CONF
from nova_clonedriver.engine import api as engine_api
from tests import waiting
from tests.functional import base

PROJECT_B = "b0" * 16


class TestTwoProjects(test_nova_api.NovaAPITestCase):
    def setUp(self):
        super().setUp()
        self.api_b = self._member_api("tenant-b", PROJECT_B)
        # nova's Glance fixture drops the data of image updates (snapshots);
        # real Glance keeps it, and unshelve boots from it.
        fixture_update = self.glance.update

        def update_keeping_data(context, image_id, metadata, data=None, purge_props=False):
            if data is not None:
                self.glance._imagedata[image_id] = data.read()
            return fixture_update(context, image_id, metadata, purge_props=purge_props)

        self.glance.update = update_keeping_data  # nova looks it up on each call
        self.normal = self._flavor("normal", base.MASTER_MEMORY_MIB)
        self.clone_flavor = self._flavor(
            "clone", base.MASTER_MEMORY_MIB, {"clone:enabled": "true"}
        )
        self.engine = engine_api.CloneEngine(self.conn, self.state_dir)

    # -- helpers -------------------------------------------------------------

    def _member_api(self, user, project_id):
        """A user of ``project_id`` without admin rights."""
        member = client.TestOpenStackClient(
            user, self.api.base_url, project_id=project_id, roles=["reader", "member"]
        )
        member.microversion = self.microversion
        return member

    def _master(self):
        master = self._boot("master", self.image_id, self.normal)
        master = self._wait_status(master["id"], "ACTIVE")
        self._wait_heartbeat(master["id"])
        return master

    def _live_image(self, master_id):
        image_id = self.api.post_server_action(
            master_id, {"createImage": {"name": "master-live", "metadata": {"clone_live": "true"}}}
        )["image_id"]

        def ready():
            image = self.glance.show(None, image_id)
            return image if "clone_generation" in image["properties"] else None

        image = waiting.wait(ready, 120, lambda: self.glance.show(None, image_id))
        self._wait_for_server_parameter({"id": master_id}, {"OS-EXT-STS:task_state": None})
        return image

    def _refused(self, server, message):
        """The server went ERROR naming ``message``, and left no domain,
        instance folder, clone reference or placement allocation."""
        fault = self._wait_error(server["id"])["fault"]["message"]
        self.assertIn(message, fault)
        self.assertFalse(os.path.exists(os.path.join(self.instances_path, server["id"])))
        self.assertNotIn(
            server["id"],
            {r.uuid for g in self.engine.generations() for r in self.engine.store.references(g)},
        )
        self.assertEqual({}, self._get_allocations_by_server_uuid(server["id"]))
        return fault

    def _identity(self, server_id):
        reply = self._console_request(server_id, "identity")
        self.assertTrue(reply["ok"], reply)
        return reply["random"], reply["genid"]

    def _disk(self, server_id, command):
        reply = self._console_request(server_id, command, timeout_s=60)
        self.assertTrue(reply["ok"], reply)
        return reply["checksum"]

    # -- the tests -------------------------------------------------------------

    def test_another_project_can_neither_fork_nor_launch_a_generation(self):
        master = self._master()
        domain = self.conn.lookupByUUIDString(master["id"])
        self.assertIn("<genid>", domain.XMLDesc(0))  # nova's XML has none: ours
        image = self._live_image(master["id"])
        properties = image["properties"]
        generation_id = properties["clone_generation"]
        self.assertEqual(
            {"image": image["id"], "project": master["tenant_id"]},
            self.engine.store.load(generation_id).bound_to,
        )
        self.assertNotIn("clone_origin_address", properties)
        self.assertEqual(64, len(properties["clone_access_key"]))
        # Where other hosts find this host's page service: in nova's own
        # record of the compute node, written by its resource tracker.
        [node] = objects.ComputeNodeList.get_all_by_host(
            nova_context.get_admin_context(), "compute1"
        )
        self.assertEqual(
            f"{CONF.my_ip}:{CONF.pageserver.listen_port}", node.stats["clone_page_service"]
        )

        # Project A's clones: each its own RNG state and generation ID.
        reservation = self._boot("clone", image["id"], self.clone_flavor, count=2)
        search = {"reservation_id": reservation["reservation_id"]}
        waiting.wait(lambda: len(self.api.get_servers(search_opts=search)) == 2, 60, "two clones")
        clones = [
            self._wait_status(c["id"], "ACTIVE") for c in self.api.get_servers(search_opts=search)
        ]
        identities = [self._identity(c["id"]) for c in clones]
        self.assertEqual(2, len({random for random, _ in identities}), identities)
        self.assertEqual(2, len({genid for _, genid in identities}), identities)
        self.assertNotIn(self._identity(master["id"])[1], {g for _, g in identities})
        domains = self._our_domains()

        # Project B forks project A's server: refused, as if it did not exist.
        fork_b = self._boot(
            "fork-b",
            self.image_id,
            self.clone_flavor,
            api=self.api_b,
            metadata={"clone_of": master["id"]},
        )
        self._refused(fork_b, f"project {PROJECT_B} has no such server")
        # Project B's own image naming project A's generation (and host):
        # refused, with or without the access key.
        for extra in ({}, {"clone_access_key": properties["clone_access_key"]}):
            forged = self.glance.create(
                None,
                {
                    "id": str(uuid.uuid4()),
                    "name": "forged",
                    "status": "active",
                    "visibility": "private",
                    "owner": PROJECT_B,
                    "disk_format": "raw",
                    "container_format": "bare",
                    "size": 0,
                    "min_ram": 0,
                    "min_disk": 0,
                    "protected": False,
                    "properties": {
                        "clone_live": "true",
                        "clone_generation": generation_id,
                        "clone_origin_host": "compute1",
                        **extra,
                    },
                },
            )["id"]
            server = self._boot("forged", forged, self.clone_flavor, api=self.api_b)
            self._refused(server, "belongs to another live image")
        self.assertEqual(domains, self._our_domains())
        self.assertEqual(
            {c["id"] for c in clones},
            {r.uuid for r in self.engine.clones(self.engine.store.load(generation_id))},
        )

        # Project A may fork its own server; with forking limited to admins,
        # not even that.
        api_a = self._member_api("tenant-a", master["tenant_id"])
        fork_a = self._boot(
            "fork-a",
            self.image_id,
            self.clone_flavor,
            api=api_a,
            metadata={"clone_of": master["id"]},
        )
        self._wait_status(fork_a["id"], "ACTIVE")
        self._wait_heartbeat(fork_a["id"])
        self.flags(fork_policy="admin", group="clone")
        fork_a2 = self._boot(
            "fork-a2",
            self.image_id,
            self.clone_flavor,
            api=api_a,
            metadata={"clone_of": master["id"]},
        )
        self._refused(fork_a2, "only admins may fork servers")

    def test_the_master_keeps_its_writes_and_the_frozen_base_is_untouched(self):
        master = self._master()
        image = self._live_image(master["id"])
        generation = self.engine.store.load(image["properties"]["clone_generation"])
        [disk] = generation.disks
        frozen_sha = _sha256(generation.disk_base(disk))
        clone = self._boot("clone", image["id"], self.clone_flavor)
        clone = self._wait_status(clone["id"], "ACTIVE")
        clone_block = self._disk(clone["id"], "diskread 100")

        written = {}

        def write_then(operation, block, *action):
            written[block] = self._disk(master["id"], f"diskwrite {block} {block}")
            if action:
                self.api.post_server_action(master["id"], *action)
            operation()
            self._wait_heartbeat(master["id"])
            for old, checksum in written.items():  # every write so far is there
                self.assertEqual(
                    checksum,
                    self._disk(master["id"], f"diskread {old}"),
                    f"block {old} after {action}",
                )
            self.assertEqual(frozen_sha, _sha256(generation.disk_base(disk)), action)
            self.assertTrue(self.conn.lookupByUUIDString(clone["id"]).isActive())

        def back_to_active():
            waiting.wait(
                lambda: self.api.get_server(master["id"])["OS-EXT-STS:task_state"] is None,
                300,
                "the master's task to end",
            )
            self._wait_status(master["id"], "ACTIVE")

        write_then(back_to_active, 101, {"reboot": {"type": "SOFT"}})
        write_then(back_to_active, 102, {"reboot": {"type": "HARD"}})

        def stop_start():
            self._wait_status(master["id"], "SHUTOFF")
            self.api.post_server_action(master["id"], {"os-start": None})
            back_to_active()

        write_then(stop_start, 103, {"os-stop": None})

        def suspend_resume():
            # A managed save: the guest's memory survives, heartbeat and all.
            self._wait_status(master["id"], "SUSPENDED")
            beats = len(self._heartbeats(master["id"]))
            self.api.post_server_action(master["id"], {"resume": None})
            back_to_active()
            waiting.wait(
                lambda: len(self._heartbeats(master["id"])) > beats,
                60,
                "the master's heartbeat after its resume",
            )
            self.assertEqual(pattern, self._console_request(master["id"], "checksum")["checksum"])

        pattern = self._console_request(master["id"], "checksum")["checksum"]
        write_then(suspend_resume, 108, {"suspend": None})

        def host_reboot():
            # As if the host rebooted: the domain is off, and nova-compute,
            # started again, resumes its guests from nova's records.
            self.conn.lookupByUUIDString(master["id"]).destroy()
            self.flags(resume_guests_state_on_host_boot=True)
            self.compute = self.restart_compute_service(self.compute)
            back_to_active()
            waiting.wait(
                lambda: self.conn.lookupByUUIDString(master["id"]).isActive(),
                120,
                "the master running again",
            )

        write_then(host_reboot, 109)

        def snapshot():
            # An ordinary image of the master: nova's own snapshot path.
            image_id = self.api.post_server_action(
                master["id"], {"createImage": {"name": "plain"}}
            )["image_id"]
            waiting.wait(
                lambda: self.glance.show(None, image_id)["status"] == "active",
                300,
                "the plain snapshot",
            )
            back_to_active()

        write_then(snapshot, 104)

        # Moving a blessed master is refused and changes nothing.
        self.flags(allow_resize_to_same_host=True)
        bigger = self._flavor("bigger", base.MASTER_MEMORY_MIB * 2)
        self.api.post_server_action(master["id"], {"resize": {"flavorRef": bigger}})
        back_to_active()
        self.assertEqual(
            f"{self.prefix}normal", self.api.get_server(master["id"])["flavor"]["original_name"]
        )
        [resize] = [
            a for a in self.api.get_instance_actions(master["id"]) if a["action"] == "resize"
        ]

        def resize_errors():
            # (An event's "details", since microversion 2.84, is its error.)
            # nova reverts the task state before it finishes the failed
            # event: the error may come a moment after the server is ACTIVE.
            events = self.api.get_instance_action_details(master["id"], resize["request_id"])
            return " ".join(e.get("details") or "" for e in events["events"])

        waiting.wait(
            lambda: (
                "resize and cold migration is not supported for a server that has been "
                "blessed" in resize_errors()
            ),
            60,
            lambda: f"no refusal in the resize's events: {resize_errors()!r}",
        )
        write_then(lambda: None, 105)

        def rescue_unrescue():
            self._wait_status(master["id"], "RESCUE")
            self.api.post_server_action(master["id"], {"unrescue": None})
            back_to_active()

        write_then(rescue_unrescue, 106, {"rescue": {"rescue_image_ref": self.image_id}})

        def shelve_unshelve():
            # Offloaded at once: nova snapshots the disk, then removes the
            # domain and the instance folder; unshelve boots that snapshot.
            self._wait_status(master["id"], "SHELVED_OFFLOADED", timeout_s=300)
            self.api.post_server_action(master["id"], {"unshelve": None})
            back_to_active()

        write_then(shelve_unshelve, 107, {"shelve": None})

        # The master deleted: its clone runs on from the frozen base.
        self.api.delete_server(master["id"])
        self._wait_gone([master["id"]])
        self.assertEqual(frozen_sha, _sha256(generation.disk_base(disk)))
        self.assertEqual(clone_block, self._disk(clone["id"], "diskread 100"))
        beats = len(self._heartbeats(clone["id"]))
        waiting.wait(
            lambda: len(self._heartbeats(clone["id"])) > beats,
            30,
            "the clone's heartbeat after the master's deletion",
        )


def _sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
