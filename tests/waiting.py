"""Polling for a condition, for tests of things that happen in other
processes (guests, daemons, nova's services, a cloud)."""

from __future__ import annotations

from collections.abc import Callable
import time
from typing import Any


def wait(
    condition: Callable[[], Any],
    timeout_s: float,
    what: str | Callable[[], str],
    interval_s: float = 0.5,
) -> Any:
    """Poll ``condition`` until it returns something true and return that;
    after ``timeout_s`` fail with ``what`` (or what it returns, evaluated
    then, so it can show the state that was wrong). It sleeps with
    ``time.sleep``, which yields to nova's greenthreads where eventlet has
    patched it."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(
                f"timed out after {timeout_s} s: {what() if callable(what) else what}"
            )
        time.sleep(interval_s)
