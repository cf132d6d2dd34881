"""A deleted live image's generation is freed; doubt keeps it.

The periodic image-cache pass runs without a user token, so the driver asks
Glance as nova's service user. These tests cover the decisions; the
discard itself runs on real libvirt in tests/functional/test_nova_driver.py
and against a real Glance in cloudtests/.
"""

import datetime
from unittest import mock

import fixtures
from keystoneauth1 import exceptions as ks_exceptions
from nova import context as nova_context
from nova import exception
from oslo_config import fixture as config_fixture
import testtools

from nova_clonedriver.conf import CONF
from nova_clonedriver.engine import api
from nova_clonedriver.virt import driver as driver_mod

LIVE, GONE = "image-live", "image-gone"


class FakeGlance:
    """Image records; remembers with which context it was asked."""

    def __init__(self, error: Exception | None = None) -> None:
        self.images = {LIVE: {"id": LIVE, "status": "active"}}
        self.asked_with: list = []
        self.error = error

    def get(self, context, image_id):
        self.asked_with.append(context)
        if self.error is not None:
            raise self.error
        if image_id not in self.images:
            raise exception.ImageNotFound(image_id=image_id)
        return self.images[image_id]


def generation(generation_id, bound_to, origin="", created_at="2026-11-27T00:00:00+00:00"):
    return mock.Mock(
        spec=api.Generation,
        id=generation_id,
        bound_to=bound_to,
        origin=origin,
        created_at=created_at,
    )


class TestFreeGenerationsOfDeletedImages(testtools.TestCase):
    def setUp(self):
        super().setUp()
        state_dir = self.useFixture(fixtures.TempDir()).path
        self.useFixture(config_fixture.Config(CONF)).config(group="clone", state_dir=state_dir)
        self.log = self.useFixture(fixtures.FakeLogger(name="nova_clonedriver.virt.driver"))
        self.driver = driver_mod.CloneDriver(mock.Mock())
        self.engine = self.driver._engine = mock.Mock(spec=api.CloneEngine)
        # Blessed here for two live images; one presented from another host
        # (its origin asks Glance) and a fork (freed by age) are not asked about.
        self.engine.generations.return_value = [
            generation("gen-gone", {"image": GONE}),
            generation("gen-live", {"image": LIVE}),
            generation("gen-remote", {"image": GONE}, origin="node-a:8797"),
            generation(
                "gen-fork",
                {"fork_of": "server"},
                created_at=datetime.datetime.now(datetime.timezone.utc).isoformat(),
            ),
        ]
        self.glance = self.driver._image_api = FakeGlance()
        self.service_context = nova_context.RequestContext(
            user_id="nova", project_id="service", is_admin=False
        )

    def _run_pass(self, service_context=None, side_effect=None):
        with (
            mock.patch.object(
                nova_context,
                "get_nova_service_user_context",
                return_value=service_context or self.service_context,
                side_effect=side_effect,
            ),
            mock.patch.object(driver_mod.libvirt_driver.LibvirtDriver, "manage_image_cache"),
        ):
            self.driver.manage_image_cache(nova_context.get_admin_context(), [])

    def test_glance_is_asked_as_the_service_user_and_a_gone_image_frees(self):
        self._run_pass()
        self.assertEqual([self.service_context] * 2, self.glance.asked_with)
        self.engine.discard.assert_called_once_with("gen-gone")
        self.assertIn("Freed generation gen-gone", self.log.output)

    def test_an_image_glance_reports_deleted_frees_too(self):
        self.glance.images[GONE] = {"id": GONE, "status": "deleted"}
        self._run_pass()
        self.engine.discard.assert_called_once_with("gen-gone")

    def test_a_generation_still_in_use_stays(self):
        self.engine.discard.side_effect = api.GenerationInUse("1 clone")
        self._run_pass()
        self.engine.discard.assert_called_once_with("gen-gone")
        self.assertNotIn("Freed generation", self.log.output)

    def test_without_service_user_credentials_everything_is_kept(self):
        # nova's own function, on a configuration without [service_user].
        with mock.patch.object(driver_mod.libvirt_driver.LibvirtDriver, "manage_image_cache"):
            self.driver.manage_image_cache(nova_context.get_admin_context(), [])
        self.assertEqual([], self.glance.asked_with)
        self.engine.discard.assert_not_called()
        self.assertIn(
            "Cannot ask Glance whether the live images of generations "
            "gen-gone, gen-live still exist",
            self.log.output,
        )
        self.assertIn("[service_user]", self.log.output)

    def test_keystone_unreachable_keeps_everything(self):
        self._run_pass(side_effect=ks_exceptions.ConnectFailure("keystone down"))
        self.engine.discard.assert_not_called()
        self.assertIn("ConnectFailure: keystone down", self.log.output)

    def test_a_glance_error_keeps_the_generation(self):
        self.glance.error = ks_exceptions.EmptyCatalog("no catalog")
        self._run_pass()
        self.engine.discard.assert_not_called()
        self.assertIn(
            "Cannot ask Glance whether live image image-gone still exists, "
            "keeping its generation: EmptyCatalog",
            self.log.output,
        )

    def test_no_live_images_asks_nobody(self):
        self.engine.generations.return_value = []
        self._run_pass(side_effect=AssertionError("keystone asked"))
        self.assertEqual([], self.glance.asked_with)
