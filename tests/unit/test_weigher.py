"""LiveCloneWeigher prefers the host that holds the live image's generation."""

from unittest import mock

from nova import exception
from nova import objects
from nova.scheduler import weights
import testtools

from nova_clonedriver.scheduler import weights as clone_weights

IMAGE_ID = "9d2b1d2e-3c4a-4e5f-8a6b-7c8d9e0f1a2b"


def _hosts(*names):
    return [mock.Mock(host=name, spec=["host"]) for name in names]


class TestLiveCloneWeigher(testtools.TestCase):
    def setUp(self):
        super().setUp()
        objects.register_all()
        self.weigher = clone_weights.LiveCloneWeigher()
        self.weigher._image_api = mock.Mock()
        self.spec = objects.RequestSpec(image=objects.ImageMeta(id=IMAGE_ID))

    def _weights(self, hosts):
        return self.weigher.weigh_objects([weights.WeighedHost(h, 0.0) for h in hosts], self.spec)

    def test_nova_loads_it_from_weight_classes(self):
        path = "nova_clonedriver.scheduler.weights.LiveCloneWeigher"
        self.assertEqual(
            [clone_weights.LiveCloneWeigher],
            weights.HostWeightHandler().get_matching_classes([path]),
        )

    def test_origin_host_wins(self):
        self.weigher._image_api.get.return_value = {"properties": {"clone_origin_host": "node-b"}}
        raw = self._weights(_hosts("node-a", "node-b", "node-c"))
        self.assertEqual([0.0, 1.0, 0.0], raw)
        self.weigher._image_api.get.assert_called_once_with(mock.ANY, IMAGE_ID)
        self.assertEqual(10.0, self.weigher.weight_multiplier(None))

    def test_other_images_and_missing_images_weigh_nothing(self):
        for answer in (
            {"properties": {}},
            exception.ImageNotFound(image_id=IMAGE_ID),
            RuntimeError("glance is down"),
        ):
            if isinstance(answer, Exception):
                self.weigher._image_api.get = mock.Mock(side_effect=answer)
            else:
                self.weigher._image_api.get = mock.Mock(return_value=answer)
            raw = self._weights(_hosts("node-a", "node-b"))
            self.assertEqual([0.0, 0.0], raw)

    def test_no_image_weighs_nothing(self):
        self.spec = objects.RequestSpec(image=None)
        raw = self._weights(_hosts("node-a"))
        self.assertEqual([0.0], raw)
        self.weigher._image_api.get.assert_not_called()
