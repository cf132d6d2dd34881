"""Native OS threads, even in a process eventlet has monkey-patched.

The bless stream reader must keep reading while the calling thread is
blocked in a libvirt call (libvirt's C calls do not yield to eventlet's
hub). A green reader would never run: QEMU would block on the full pipe
while holding its big lock, the monitor command would never answer, and
bless would hang. nova's services and tests may run under eventlet.
"""

from __future__ import annotations

import threading
import warnings


def thread_class() -> type[threading.Thread]:
    """Asked at import time, maybe before eventlet patches anything: so the
    answer must not depend on whether it did yet."""
    with warnings.catch_warnings():
        # eventlet warns that it is deprecated on import: not our users' news.
        warnings.simplefilter("ignore")
        try:
            from eventlet import patcher
        except ImportError:
            return threading.Thread
    original: type[threading.Thread] = patcher.original("threading").Thread
    return original
