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
            engine.store.add_reference(generation, _ref(generation, clone_uuid, started,
                                                        age, directory))
        exists = {u for u, case in cases.items() if case[2]}
        with mock.patch.object(engine, "_domain",
                               side_effect=lambda u: object() if u in exists else None):
            kept = {r.uuid for r in engine.clones(generation)}
        self.assertEqual({u for u, case in cases.items() if case[3]}, kept)
        self.assertEqual(kept, {r.uuid for r in engine.store.references(generation)})
        for clone_uuid, case in cases.items():
            self.assertEqual(case[3], os.path.isdir(os.path.join(root, "clones", clone_uuid)))

    def test_reference_defaults_to_not_started(self):
        ref = store_mod.CloneReference(uuid="u", name="n", generation="g", directory="d",
                                       created_at="t", overlays={}, mac_addresses=[])
        self.assertFalse(ref.started)
