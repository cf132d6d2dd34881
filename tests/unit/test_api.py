import datetime
import os
from unittest import mock

import fixtures
import testtools

from nova_clonedriver.engine import api
from nova_clonedriver.engine import store as store_mod
from tests.unit import test_store


def _ref(generation, clone_uuid, started, age_s, directory):
    created = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(seconds=age_s)
    ref = test_store.make_ref(generation, clone_uuid)
    ref.started, ref.created_at, ref.directory = started, created.isoformat(), directory
    return ref


class TestStaleReferences(testtools.TestCase):
    def test_only_clones_that_are_gone_are_freed(self):
        root = self.useFixture(fixtures.TempDir()).path
        engine = api.CloneEngine(mock.Mock(), root)
        generation = test_store.make_generation(engine.store)
        cases = {  # uuid: (started, age, domain exists, kept)
            "running": (True, 5, True, True),
            "destroyed-behind-our-back": (True, 5, False, False),
            "launching-elsewhere": (False, 5, False, True),
            "launcher-died": (False, api.LAUNCH_GRACE_S + 1, False, False),
        }
        for clone_uuid, (started, age, _, _) in cases.items():
            directory = os.path.join(root, "clones", clone_uuid)
            os.makedirs(directory)
            engine.store.add_reference(
                generation, _ref(generation, clone_uuid, started, age, directory)
            )
        exists = {u for u, case in cases.items() if case[2]}
        with mock.patch.object(
            engine, "_domain", side_effect=lambda u: object() if u in exists else None
        ):
            kept = {r.uuid for r in engine.clones(generation)}
        self.assertEqual({u for u, case in cases.items() if case[3]}, kept)
        self.assertEqual(kept, {r.uuid for r in engine.store.references(generation)})
        for clone_uuid, case in cases.items():
            self.assertEqual(case[3], os.path.isdir(os.path.join(root, "clones", clone_uuid)))

    def test_reference_defaults_to_not_started(self):
        ref = store_mod.CloneReference(
            uuid="u",
            name="n",
            generation="g",
            directory="d",
            created_at="t",
            overlays={},
            mac_addresses=[],
        )
        self.assertFalse(ref.started)


class TestCallerManagedClones(testtools.TestCase):
    """nova's clones: a stopped server has no domain but must keep its files."""

    def setUp(self):
        super().setUp()
        self.root = self.useFixture(fixtures.TempDir()).path
        self.engine = api.CloneEngine(mock.Mock(), self.root)
        self.generation = test_store.make_generation(self.engine.store)
        self.folder = os.path.join(self.root, "instances", "uuid-1")
        os.makedirs(self.folder)
        self.overlay = os.path.join(self.folder, "vda.qcow2")
        for name in ("vda.qcow2", "console.log"):
            with open(os.path.join(self.folder, name), "w") as f:
                f.write("x")
        ref = _ref(self.generation, "uuid-1", True, 5, self.folder)
        ref.caller_managed, ref.overlays = True, {"vda": self.overlay}
        self.engine.store.add_reference(self.generation, ref)

    def test_not_reaped_when_its_domain_is_gone(self):
        with mock.patch.object(self.engine, "_domain", return_value=None):
            self.assertEqual(["uuid-1"], [r.uuid for r in self.engine.clones(self.generation)])
        self.assertTrue(os.path.exists(self.overlay))

    def test_freeing_it_removes_only_the_engines_files(self):
        with mock.patch.object(self.engine, "_domain", return_value=None):
            self.engine.destroy_clone("uuid-1")
        self.assertEqual(["console.log"], os.listdir(self.folder))
        self.assertEqual([], self.engine.store.references(self.generation))
