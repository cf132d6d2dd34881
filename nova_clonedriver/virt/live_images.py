"""Which live image each generation blessed on this host belongs to.

Glance does not tell nova when an image is deleted, so the driver asks it
(as nova's service user) during its periodic image-cache pass: a
generation whose live image is gone is freed once its last clone is gone.
"""

from __future__ import annotations

import contextlib
import json
import os

from nova_clonedriver.engine import store as store_mod


class LiveImageIndex:
    """One small JSON file per generation under ``<state_dir>/live-images``."""

    def __init__(self, state_dir: str) -> None:
        self.directory = os.path.join(state_dir, "live-images")

    def record(self, generation_id: str, image_id: str) -> None:
        os.makedirs(self.directory, exist_ok=True)
        store_mod.write_json_atomic(self._path(generation_id), {"image_id": image_id})

    def items(self) -> list[tuple[str, str]]:
        """(generation id, image id) pairs."""
        if not os.path.isdir(self.directory):
            return []
        pairs = []
        for name in sorted(os.listdir(self.directory)):
            if name.endswith(".json"):
                with open(os.path.join(self.directory, name)) as f:
                    pairs.append((name[:-len(".json")], json.load(f)["image_id"]))
        return pairs

    def forget(self, generation_id: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._path(generation_id))

    def _path(self, generation_id: str) -> str:
        return os.path.join(self.directory, f"{generation_id}.json")
