"""A scheduler weigher that prefers the host holding a live image's memory.

Clones start on the host that holds their generation without fetching any
memory. Enable it next to nova's own weighers::

    [filter_scheduler]
    weight_classes = nova.scheduler.weights.all_weighers,
        nova_clonedriver.scheduler.weights.LiveCloneWeigher
"""

from __future__ import annotations

from typing import Any

from nova import context as nova_context
from nova import exception
from nova.image import glance
from nova.scheduler import weights
from oslo_log import log as logging

from nova_clonedriver import live_image
from nova_clonedriver.conf import CONF

LOG = logging.getLogger(__name__)


class LiveCloneWeigher(weights.BaseHostWeigher):
    """1 for the host that holds the requested live image's generation (the
    host that blessed it), 0 for the others and for any other image."""

    def __init__(self) -> None:
        self._image_api = glance.API()
        self._origin_host: str | None = None

    def weight_multiplier(self, host_state: Any) -> float:
        return CONF.clone.live_clone_weight_multiplier

    def weigh_objects(self, weighed_obj_list: list, request_spec: Any) -> list:
        # One image lookup per request, not per host.
        self._origin_host = self._origin_of(request_spec)
        return super().weigh_objects(weighed_obj_list, request_spec)

    def _weigh_object(self, host_state: Any, request_spec: Any) -> float:
        return 1.0 if host_state.host == self._origin_host else 0.0

    def _origin_of(self, request_spec: Any) -> str | None:
        image = request_spec.image
        if image is None or not image.obj_attr_is_set("id"):
            return None
        context = getattr(request_spec, "_context", None) or nova_context.get_admin_context()
        try:
            record = self._image_api.get(context, image.id)
        except exception.ImageNotFound:
            return None
        except Exception as exc:  # a weigher must never fail a boot
            LOG.warning("LiveCloneWeigher cannot read image %s: %s", image.id, exc)
            return None
        return record.get("properties", {}).get(live_image.ORIGIN_HOST)
