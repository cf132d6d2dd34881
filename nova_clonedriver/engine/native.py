"""Native OS threads, even in a process eventlet has monkey-patched.

The bless stream reader must keep reading while the calling thread is
blocked in a libvirt call (libvirt's C calls do not yield to eventlet's
hub). A green reader would never run: QEMU would block on the full pipe
while holding its big lock, the monitor command would never answer, and
bless would hang. nova's services and tests may run under eventlet.
"""

from __future__ import annotations

import sys
import threading


def thread_class() -> type[threading.Thread]:
    eventlet = sys.modules.get("eventlet")
    if eventlet is None:  # not imported: nothing can have been patched
        return threading.Thread
    from eventlet import patcher
    return patcher.original("threading").Thread
