"""The FUSE front's relay, with a socket standing in for /dev/fuse (both
keep message boundaries): requests outlive the page service that read them,
a read by the page service returns one request (libfuse takes a read for
a request), the kernel's INIT is replayed and its second answer dropped, open files are
counted, and only the front's own user may connect.

The front runs in a process of its own, as it does beside a page service,
and each test in a fresh process (tests/fresh.py), as the page service's
side of the socket does not run under eventlet either."""

from __future__ import annotations

import array
import fcntl
import os
import socket
import subprocess
import sys
import termios
import time

import fixtures
import testtools

from nova_clonedriver.pageserver import fusefront
from tests.fresh import in_a_fresh_process

# The front on an inherited descriptor (argv[1]) and socket path (argv[2]),
# without a mount, logging what waits every argv[3] seconds.
RUN_FRONT = """
import os, socket, sys
from nova_clonedriver.pageserver import fusefront
from tests.fresh import in_a_fresh_process
listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
os.umask(0o177)
listener.bind(sys.argv[2])
listener.listen(4)
print("listening", flush=True)
fusefront.Front(int(sys.argv[1]), listener, None, float(sys.argv[3])).run()
"""

GETATTR = 3
READ = 15
TIMEOUT_S = 10
LOG_INTERVAL_S = 0.5


def request(opcode: int, unique: int, nodeid: int = 1, body: bytes = b"") -> bytes:
    size = fusefront.IN_HEADER.size + len(body)
    return fusefront.IN_HEADER.pack(size, opcode, unique, nodeid, 0, 0, 1, 0, 0) + body


def reply(unique: int, body: bytes = b"", error: int = 0) -> bytes:
    return fusefront.OUT_HEADER.pack(fusefront.OUT_HEADER.size + len(body), error, unique) + body


def unique_of(message: bytes) -> int:
    return int(fusefront.IN_HEADER.unpack_from(message)[2])


class TestFront(testtools.TestCase):
    def setUp(self):
        super().setUp()
        self.useFixture(fixtures.FakeLogger())
        self.root = self.useFixture(fixtures.TempDir()).path
        self.path = os.path.join(self.root, "front.sock")
        self.kernel, device = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.kernel.settimeout(TIMEOUT_S)
        self.front = subprocess.Popen(
            [
                sys.executable,
                "-c",
                RUN_FRONT,
                str(device.fileno()),
                self.path,
                str(LOG_INTERVAL_S),
            ],
            pass_fds=[device.fileno()],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
        )
        device.close()  # the front's now
        self.addCleanup(self.front.wait, TIMEOUT_S)
        self.addCleanup(self.front.kill)
        self.addCleanup(self.kernel.close)
        self.assertEqual(b"listening\n", self.front.stdout.readline())

    def sent_to_front(self, *messages: bytes) -> None:
        """Send as the kernel, and return once the front has read it all."""
        for message in messages:
            self.kernel.send(message)
        unread = array.array("i", [1])
        deadline = time.monotonic() + TIMEOUT_S
        while unread[0] and time.monotonic() < deadline:
            fcntl.ioctl(self.kernel.fileno(), termios.TIOCOUTQ, unread)
            time.sleep(0.01)
        self.assertEqual(0, unread[0], "the front read nothing")
        time.sleep(0.05)  # and handled it

    def daemon(self) -> tuple[socket.socket, dict[int, int]]:
        sock, open_files = fusefront.connect(self.path)
        sock.settimeout(TIMEOUT_S)
        self.addCleanup(sock.close)
        return sock, open_files

    def initialized_daemon(self) -> socket.socket:
        """A page service connected after the kernel's INIT, answered."""
        self.kernel.send(request(fusefront.OPCODE_INIT, 1))
        daemon, _ = self.daemon()
        daemon.recv(4096)
        daemon.send(reply(1))
        self.kernel.recv(4096)
        return daemon

    @in_a_fresh_process
    def test_a_new_page_service_gets_what_the_last_one_left_unanswered(self):
        init = request(fusefront.OPCODE_INIT, 1, body=b"kernel-init")
        self.kernel.send(init)
        first, open_files = self.daemon()
        self.assertEqual({}, open_files)
        self.assertEqual(init, first.recv(4096))
        first.send(reply(1, b"init-reply"))
        self.assertEqual(reply(1, b"init-reply"), self.kernel.recv(4096))
        self.kernel.send(request(fusefront.OPCODE_OPEN, 2, nodeid=77))
        self.assertEqual(2, unique_of(first.recv(4096)))
        first.send(reply(2, b"fh"))
        self.assertEqual(reply(2, b"fh"), self.kernel.recv(4096))
        read = request(READ, 3, nodeid=77, body=b"offset")
        self.kernel.send(read)
        self.assertEqual(read, first.recv(4096))
        first.close()  # died before answering the read

        # While no page service runs: a FORGET gets no reply (not kept);
        # a GETATTR waits.
        getattr_request = request(GETATTR, 5, nodeid=77)
        self.sent_to_front(request(fusefront.OPCODE_FORGET, 4, nodeid=77), getattr_request)

        second, open_files = self.daemon()
        self.assertEqual({77: 1}, open_files)
        self.assertEqual(init, second.recv(4096))  # libfuse answers nothing before it
        self.assertEqual(read, second.recv(4096))
        self.assertEqual(getattr_request, second.recv(4096))
        second.send(reply(1, b"init-again"))  # dropped: the kernel had its answer
        second.send(reply(5, b"attributes"))
        second.send(reply(3, b"data"))
        self.assertEqual(reply(5, b"attributes"), self.kernel.recv(4096))
        self.assertEqual(reply(3, b"data"), self.kernel.recv(4096))
        # Notifications (unique 0) pass.
        second.send(reply(0, b"notify", error=1))
        self.assertEqual(reply(0, b"notify", error=1), self.kernel.recv(4096))

    @in_a_fresh_process
    def test_each_request_is_read_alone_and_replies_are_told_apart(self):
        self.kernel.send(request(fusefront.OPCODE_INIT, 1))
        daemon, _ = self.daemon()
        self.assertEqual(1, unique_of(daemon.recv(4096)))
        first, second = request(GETATTR, 2, body=b"a" * 100), request(GETATTR, 3)
        self.sent_to_front(first, second)
        # Both wait in the stream; libfuse takes one read for one request.
        waiting = array.array("i", [0])
        deadline = time.monotonic() + TIMEOUT_S
        while waiting[0] < len(first + second) and time.monotonic() < deadline:
            fcntl.ioctl(daemon.fileno(), termios.FIONREAD, waiting)
            time.sleep(0.01)
        self.assertEqual(len(first + second), waiting[0])
        descriptors = len(os.listdir("/proc/self/fd"))
        self.assertEqual(first, os.read(daemon.fileno(), 4096))
        self.assertEqual(second, os.read(daemon.fileno(), 4096))
        # The descriptors that end each request are closed by the reads.
        self.assertEqual(descriptors, len(os.listdir("/proc/self/fd")))
        # Replies written back to back (a stream joins them) reach the
        # kernel one by one; a larger one whole (as large as the stand-in
        # for /dev/fuse takes).
        large = reply(3, bytes(range(256)) * 200)
        daemon.sendall(reply(1) + reply(2, b"attr") + large)
        self.assertEqual(reply(1), self.kernel.recv(1 << 21))
        self.assertEqual(reply(2, b"attr"), self.kernel.recv(1 << 21))
        self.assertEqual(large, self.kernel.recv(1 << 21))

    @in_a_fresh_process
    def test_requests_long_unanswered_are_logged(self):
        daemon = self.initialized_daemon()
        self.kernel.send(request(READ, 7, nodeid=42))
        daemon.recv(4096)  # and no answer
        time.sleep(3 * LOG_INTERVAL_S)
        self.front.kill()
        log = self.front.stderr.read().decode()
        self.assertIn(
            "1 FUSE request(s) unanswered for over 0.5 s; the oldest: opcode 15, "
            "unique 7, inode 42",
            log,
        )
        self.assertNotIn("unique 1,", log)

    @in_a_fresh_process
    def test_one_page_service_at_a_time(self):
        self.daemon()
        error = self.assertRaises(fusefront.FrontError, fusefront.connect, self.path)
        self.assertIn("connected to the front already", str(error))

    @in_a_fresh_process
    def test_stops_only_when_no_file_is_open(self):
        daemon = self.initialized_daemon()
        self.kernel.send(request(fusefront.OPCODE_OPEN, 2, nodeid=9))
        daemon.recv(4096)
        daemon.send(reply(2))
        self.kernel.recv(4096)
        self.kernel.send(request(fusefront.OPCODE_OPEN, 3, nodeid=9))
        daemon.recv(4096)
        daemon.send(reply(3, error=-13))  # refused: not open
        self.kernel.recv(4096)
        daemon.close()
        _, open_files = self.daemon()  # what a new page service is told
        self.assertEqual({9: 1}, open_files)

        self.assertEqual({"stopping": False, "open_files": 1}, fusefront.stop(self.path))
        self.assertIsNone(self.front.poll())
        self.sent_to_front(request(fusefront.OPCODE_RELEASE, 4, nodeid=9))
        self.assertEqual({"stopping": True, "open_files": 0}, fusefront.stop(self.path))
        self.assertEqual(0, self.front.wait(TIMEOUT_S))

    @in_a_fresh_process
    def test_stops_when_the_kernel_side_closes(self):
        self.kernel.close()  # /dev/fuse of an unmounted file system
        self.assertEqual(0, self.front.wait(TIMEOUT_S))

    @in_a_fresh_process
    def test_unknown_operations_are_refused(self):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.addCleanup(sock.close)
        sock.connect(self.path)
        sock.sendall(b'{"op": "dump-memory"}\n')
        self.assertIn(b"knows the operations serve and stop", sock.recv(4096))

    @in_a_fresh_process
    def test_other_users_cannot_connect(self):
        if os.getuid() != 0:
            self.skipTest("needs root to become another user")
        self.assertEqual(0o600, os.stat(self.path).st_mode & 0o777)
        read_end, write_end = os.pipe()
        child = os.fork()
        if child == 0:  # pragma: no cover - the child reports through the pipe
            os.setgid(65534)
            os.setuid(65534)
            try:
                fusefront.connect(self.path)
                result = b"connected"
            except PermissionError:
                result = b"refused"
            except Exception as exc:
                result = repr(exc).encode()
            os.write(write_end, result)
            os._exit(0)
        os.close(write_end)
        os.waitpid(child, 0)
        self.assertEqual(b"refused", os.read(read_end, 4096))
        os.close(read_end)


class TestHeaders(testtools.TestCase):
    def test_header_sizes_are_the_kernels(self):
        # include/uapi/linux/fuse.h: fuse_in_header 40 bytes, fuse_out_header 16
        self.assertEqual(40, fusefront.IN_HEADER.size)
        self.assertEqual(16, fusefront.OUT_HEADER.size)
