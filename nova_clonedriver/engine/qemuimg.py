"""The qemu-img calls of the engine."""

from __future__ import annotations

import json
import subprocess
from typing import Any


def create_overlay(base: str, base_format: str, overlay: str) -> None:
    """A qcow2 overlay on ``base``: the master's new top at bless, each
    clone's disk at launch."""
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-b", base, "-F", base_format, overlay],
        check=True,
        capture_output=True,
    )


def _info(image: str, *options: str) -> Any:
    out = subprocess.run(
        ["qemu-img", "info", "-U", "--output=json", *options, image],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return json.loads(out)


def backing_file(image: str) -> str | None:
    """The backing file name recorded in ``image`` (None: it has none)."""
    backing: str | None = _info(image).get("backing-filename")
    return backing


def chain_length(image: str) -> int:
    """How many images a read of ``image`` may walk: itself and its backing
    files."""
    return len(_info(image, "--backing-chain"))
