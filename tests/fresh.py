"""Running a test in an interpreter of its own.

nova's test package monkey-patches a test process with eventlet once any
test module imports it, and stestr's workers run whatever modules come
their way. Code that runs in daemons of its own in production (the page
service's threads, blocking sockets, select) is then no longer what it is
there. A test marked ``in_a_fresh_process`` runs in a new ``python -m
testtools.run`` of just that test instead, which passes or fails it.
"""

from __future__ import annotations

from collections.abc import Callable
import functools
import os
import subprocess
import sys
from typing import Any

from testtools.content import text_content

CHECKOUT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MARK = "NOVA_CLONE_FRESH_TEST"


def in_a_fresh_process(test: Callable[[Any], None]) -> Callable[[Any], None]:
    @functools.wraps(test)
    def run(self: Any) -> None:
        if os.environ.get(MARK) == self.id():
            test(self)
            return
        child = subprocess.run(
            [sys.executable, "-m", "testtools.run", self.id()],
            env={**os.environ, MARK: self.id()},
            capture_output=True,
            text=True,
            cwd=CHECKOUT,
            timeout=300,
        )
        self.addDetail("fresh process", text_content(child.stdout + child.stderr))
        if child.returncode:
            self.fail(f"failed in its own process:\n{child.stdout[-4000:]}{child.stderr[-4000:]}")

    return run
