"""The qemu-img calls of the engine."""

from __future__ import annotations

import json
import subprocess


def create_overlay(base: str, base_format: str, overlay: str) -> None:
    """A qcow2 overlay on ``base``: the master's new top at bless, each
    clone's disk at launch."""
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", base,
                    "-F", base_format, overlay], check=True, capture_output=True)


def backing_file(image: str) -> str | None:
    """The backing file name recorded in ``image`` (None: it has none)."""
    out = subprocess.run(["qemu-img", "info", "-U", "--output=json", image],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out).get("backing-filename")
