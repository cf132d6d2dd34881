"""The local control socket between the nova driver / nova-clone and the
page service."""

from __future__ import annotations

import asyncio
import grp
import os
import stat

import fixtures
import testtools

from nova_clonedriver.engine import native
from nova_clonedriver.pageserver import control


class TestControlSocket(testtools.TestCase):
    def setUp(self):
        super().setUp()
        self.path = os.path.join(self.useFixture(fixtures.TempDir()).path, "ps.sock")
        self.requests = []

    async def handler(self, request):
        self.requests.append(request)
        if request["op"] == "release":
            raise ValueError("generation x is not presented here")
        return {"answer": 42}

    def serving(self, group=None):
        """Run the server in a thread of its own; returns a stop function."""
        loop = asyncio.new_event_loop()
        started = native.thread_class()(target=loop.run_forever, daemon=True)
        started.start()
        server = asyncio.run_coroutine_threadsafe(
            control.serve(self.path, self.handler, group), loop
        ).result(10)

        def stop():
            loop.call_soon_threadsafe(server.close)
            loop.call_soon_threadsafe(loop.stop)

        self.addCleanup(stop)

    def test_requests_replies_and_errors(self):
        self.serving()
        client = control.PageServiceClient(self.path, timeout_s=10)
        self.assertEqual({"answer": 42}, client.attach("g", "h:1", "k", "full"))
        self.assertEqual(
            {"op": "attach", "generation": "g", "origin": "h:1", "key": "k", "prefetch": "full"},
            self.requests[0],
        )
        error = self.assertRaises(control.PageServiceError, client.release, "x")
        self.assertNotIsInstance(error, control.PageServiceUnavailable)
        self.assertIn("not presented here", str(error))
        self.assertEqual(0o600, stat.S_IMODE(os.stat(self.path).st_mode))

    def test_a_group_may_use_the_socket(self):
        if os.geteuid() != 0:
            self.skipTest("changing a file's group to another needs root")
        self.serving(group="nogroup")
        self.assertEqual(grp.getgrnam("nogroup").gr_gid, os.stat(self.path).st_gid)
        self.assertEqual(0o660, stat.S_IMODE(os.stat(self.path).st_mode))

    def test_no_service(self):
        error = self.assertRaises(
            control.PageServiceUnavailable, control.PageServiceClient(self.path).stats
        )
        self.assertIn("does not answer", str(error))
