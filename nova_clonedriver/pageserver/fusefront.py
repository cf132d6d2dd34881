"""The FUSE front: a small process that holds the page service's FUSE mount,
so that clones outlive a restart (or a crash) of the page service.

The mount and its ``/dev/fuse`` connection belong to this process. It
relays the kernel's FUSE requests to the page service over a Unix stream
socket, which the page service's libfuse reads as if it were ``/dev/fuse``,
and the replies back, and it keeps every request until its reply has gone
to the kernel. libfuse takes what one read returns for one request, and a
read of a stream socket runs on into the next message, except that Linux
ends it after a message that carries a file descriptor: so each request
carries one (of ``/dev/null``; a ``read`` closes it). The replies are told
apart by the lengths in their headers. (A socket that keeps message
boundaries would do without either, but the kernel allocates a large
message of one in a single contiguous piece, which fails once memory is
fragmented: a lost reply, and a reader waiting for good.) When the
page service goes away, the mount stays: a clone that touches a page not
cached yet waits. The next page service that connects gets the kernel's INIT
request again (the kernel sends it once per mount, and libfuse answers
nothing before it; the reply to the replayed one is dropped), then every
request the last one left unanswered, then the rest as they come.

It reads nothing of FUSE but the headers: which requests get no reply
(FORGET, BATCH_FORGET, INTERRUPT) and the OPEN and RELEASE of files, to tell
a new page service which files clones hold open.

The page service starts it (``connect_or_start``) in a session of its own;
under systemd, the page service's unit needs ``KillMode=process`` so that a
restart of the unit does not kill it too. It stops (unmounting) when the page
service stops while no file is open, or when the mount is unmounted.

Only processes of its own user (root) may connect to its socket.
"""

from __future__ import annotations

import argparse
import array
import contextlib
import ctypes
import errno
import json
import logging
import os
import select
import socket
import struct
import subprocess
import sys
import threading
import time
from typing import Any

LOG = logging.getLogger(__name__)

# include/uapi/linux/fuse.h
IN_HEADER = struct.Struct("=IIQQIIIHH")  # len, opcode, unique, nodeid, uid, gid, pid, extlen, pad
OUT_HEADER = struct.Struct("=IiQ")  # len, error, unique
OPCODE_FORGET = 2
OPCODE_OPEN = 14
OPCODE_RELEASE = 18
OPCODE_INIT = 26
OPCODE_INTERRUPT = 36
OPCODE_BATCH_FORGET = 42
NO_REPLY_OPCODES = frozenset({OPCODE_FORGET, OPCODE_INTERRUPT, OPCODE_BATCH_FORGET})

# A request or reply: up to libfuse's largest buffer (256 pages of data
# and a header page).
MAX_MESSAGE_BYTES = (256 + 2) * 4096
SOCKET_BUFFER_BYTES = 8 * MAX_MESSAGE_BYTES
CONTROL_MESSAGE_BYTES = 64 * 1024
START_TIMEOUT_S = 10.0
# A new page service waits this long for the last one's connection to end.
HANDOVER_WAIT_S = 2.0
WAITING_LOG_INTERVAL_S = 60.0

# asm-generic/socket.h (Python's socket module does not name them)
SO_SNDBUFFORCE = 32
SO_RCVBUFFORCE = 33
# The kernel's read-ahead on the mount (128 KiB by default): a chunk, so
# that sequential readers and mmap faults ask for a chunk per FUSE request
# rather than an eighth of one (each request costs a round trip through
# the front and the page service).
READ_AHEAD_KIB = 1024
MS_NOSUID = 2
MS_NODEV = 4
MNT_DETACH = 2
FS_NAME = "nova-clone-pages"


class FrontError(RuntimeError):
    """The FUSE front could not be reached or started, or refused."""


def socket_path(state_dir: str) -> str:
    return os.path.join(state_dir, "pagefront.sock")


def is_mounted(mount_dir: str) -> bool:
    """From the kernel's table: ``os.path.ismount`` is False for a mount
    whose process is gone (stat fails)."""
    target = os.path.abspath(mount_dir)
    with open("/proc/self/mounts") as f:
        return any(line.split()[1] == target for line in f)


def raise_buffers(sock: socket.socket) -> None:
    """Room for a few whole messages each way; a message larger than the
    send buffer would fail. Above the sysctl limits, so root's FORCE."""
    for option in (SO_SNDBUFFORCE, SO_RCVBUFFORCE):
        sock.setsockopt(socket.SOL_SOCKET, option, SOCKET_BUFFER_BYTES)


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def mount(mount_dir: str) -> int:
    """Mount a FUSE file system on ``mount_dir`` (as libfuse would, for
    root) and return its ``/dev/fuse`` descriptor."""
    os.makedirs(mount_dir, exist_ok=True)
    fd = os.open("/dev/fuse", os.O_RDWR | os.O_CLOEXEC)
    options = (
        f"fd={fd},rootmode=40000,user_id={os.getuid()},group_id={os.getgid()},"
        "allow_other,default_permissions"
    )
    if (
        _libc().mount(
            FS_NAME.encode(),
            os.fsencode(mount_dir),
            b"fuse",
            MS_NOSUID | MS_NODEV,
            options.encode(),
        )
        != 0
    ):
        error = ctypes.get_errno()
        os.close(fd)
        raise OSError(error, f"cannot mount FUSE on {mount_dir}: {os.strerror(error)}")
    return fd


def raise_read_ahead(mount_dir: str) -> None:
    """Set the mount's read-ahead to READ_AHEAD_KIB. Only once its INIT is
    answered: the kernel sets it then to the smaller of its own and the
    answer's (and asks with its own, 128 KiB)."""
    try:
        with open(f"/sys/class/bdi/{_device_of(mount_dir)}/read_ahead_kb", "w") as f:
            f.write(str(READ_AHEAD_KIB))
    except OSError as exc:
        LOG.warning("Read-ahead of %s stays the kernel's: %s", mount_dir, exc)


def _device_of(mount_dir: str) -> str:
    """major:minor of the mount, from the kernel's table: a stat of it
    would wait for a page service to answer."""
    target = os.path.abspath(mount_dir)
    with open("/proc/self/mountinfo") as f:
        devices = [fields[2] for fields in map(str.split, f) if fields[4] == target]
    if not devices:
        raise OSError(errno.ENOENT, f"{mount_dir} is not mounted")
    return devices[-1]  # the newest, should older ones be stacked below


def unmount(mount_dir: str) -> None:
    """Detach the mount (lazily: it goes once nothing uses it)."""
    if _libc().umount2(os.fsencode(mount_dir), MNT_DETACH) != 0:
        error = ctypes.get_errno()
        if error not in (errno.EINVAL, errno.ENOENT):  # not mounted
            raise OSError(error, f"cannot unmount {mount_dir}: {os.strerror(error)}")


class _Daemon:
    """The page service's connection; sends are serialized so that the
    replay goes first."""

    def __init__(self, sock: socket.socket, barrier_fd: int) -> None:
        self.sock = sock
        self.send_lock = threading.Lock()
        self._rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [barrier_fd]))]

    def deliver(self, request: bytes) -> None:
        """Send ``request`` so that a read by the page service returns it
        alone (OSError if it cannot be sent). A request is a few hundred
        bytes (the mount is read-only: no WRITE), far below the socket's
        buffer: one send, one message."""
        self.sock.sendmsg([request], self._rights)


class Front:
    """Relays between ``device_fd`` (``/dev/fuse``, or in tests another
    socket that keeps message boundaries) and the page service connected
    to ``listener``."""

    def __init__(
        self,
        device_fd: int,
        listener: socket.socket,
        mount_dir: str | None,
        waiting_log_interval_s: float = WAITING_LOG_INTERVAL_S,
    ) -> None:
        self.device_fd = device_fd
        self.listener = listener
        self.mount_dir = mount_dir
        self.waiting_log_interval_s = waiting_log_interval_s
        self._barrier_fd = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        self._lock = threading.Lock()
        self._daemon: _Daemon | None = None
        # unique -> (request, when it was read), until answered
        self._pending: dict[int, tuple[bytes, float]] = {}
        self._opening: dict[int, int] = {}  # unique of an OPEN -> its nodeid
        self._open_files: dict[int, int] = {}  # nodeid -> opens not released
        self._init: bytes | None = None
        self._init_answered = False
        self._drop_reply_to: int | None = None  # the replayed INIT's
        self._waiting_since: float | None = None
        self.stopped = threading.Event()

    def run(self) -> None:
        """Serve until stopped or unmounted."""
        threads = [
            threading.Thread(target=self._relay_requests, name="requests", daemon=True),
            threading.Thread(target=self._accept, name="accept", daemon=True),
        ]
        for thread in threads:
            thread.start()
        while not self.stopped.wait(self.waiting_log_interval_s):
            self._log_waiting()

    def _log_waiting(self) -> None:
        """What waits: for a page service, or for long for its answer."""
        now = time.monotonic()
        with self._lock:
            connected = self._daemon is not None
            waiting = len(self._pending)
            old = [
                (unique, IN_HEADER.unpack_from(request), now - since)
                for unique, (request, since) in self._pending.items()
                if now - since > self.waiting_log_interval_s
            ]
        if waiting and not connected:
            LOG.warning(
                "%d FUSE request(s) wait for a page service (none connected for %.0f s)",
                waiting,
                now - (self._waiting_since or now),
            )
        elif old:
            unique, header, age_s = max(old, key=lambda entry: entry[2])
            LOG.warning(
                "%d FUSE request(s) unanswered for over %g s; the oldest: opcode %d, "
                "unique %d, inode %d, for %.0f s",
                len(old),
                self.waiting_log_interval_s,
                header[1],
                unique,
                header[3],
                age_s,
            )

    # The kernel's side.

    def _relay_requests(self) -> None:
        # One buffer for every read: a fresh megabyte per request would cost
        # more than the request (requests are small but for writes).
        buffer = bytearray(MAX_MESSAGE_BYTES)
        while True:
            try:
                size = os.readv(self.device_fd, [buffer])
            except OSError as exc:
                if exc.errno in (errno.EINTR, errno.EAGAIN, errno.ENOENT):
                    continue  # ENOENT: a request interrupted before it was read
                if exc.errno != errno.ENODEV:
                    LOG.error("Reading FUSE requests failed: %s", exc)
                break  # ENODEV: unmounted
            if not size:
                break
            self._forward(bytes(buffer[:size]))
        LOG.info("The FUSE mount is gone; the front stops")
        self.stopped.set()

    def _forward(self, request: bytes) -> None:
        _, opcode, unique, nodeid, *_ = IN_HEADER.unpack_from(request)
        with self._lock:
            if opcode == OPCODE_INIT:
                self._init = request
            if opcode == OPCODE_OPEN:
                self._opening[unique] = nodeid
            elif opcode == OPCODE_RELEASE:
                self._release(nodeid)
            if opcode not in NO_REPLY_OPCODES:
                self._pending[unique] = (request, time.monotonic())
            daemon = self._daemon
        if daemon is not None:
            self._send(daemon, [request])

    def _release(self, nodeid: int) -> None:
        count = self._open_files.get(nodeid, 0) - 1
        if count > 0:
            self._open_files[nodeid] = count
        else:
            self._open_files.pop(nodeid, None)

    # The page service's side.

    def _accept(self) -> None:
        while not self.stopped.is_set():
            try:
                sock, _ = self.listener.accept()
            except OSError as exc:
                if self.stopped.is_set():
                    return
                LOG.error("Accepting on the front socket failed: %s", exc)
                time.sleep(1)
                continue
            try:
                self._connection(sock)
            except Exception:
                LOG.exception("A connection to the front failed")
                sock.close()

    def _connection(self, sock: socket.socket) -> None:
        uid = struct.unpack(
            "3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        )[1]
        if uid != os.getuid():
            LOG.warning("Refusing a connection of uid %d to the front", uid)
            sock.close()
            return
        try:
            request = json.loads(_read_line(sock))
            operation = request.get("op") if isinstance(request, dict) else None
        except (ValueError, OSError):
            operation = None
        if operation == "serve":
            self._serve(sock)
        elif operation == "stop":
            self._stop(sock)
        else:
            _reply(sock, {"error": "the front knows the operations serve and stop"})
            sock.close()

    def _serve(self, sock: socket.socket) -> None:
        with self._lock:
            old = self._daemon
        if old is not None and _hung_up(old.sock, HANDOVER_WAIT_S):
            # A page service that died a moment ago: its reply thread has
            # not noticed yet.
            with self._lock:
                if self._daemon is old:
                    self._daemon = None
        with self._lock:
            if self._daemon is not None:
                busy = True
            else:
                busy = False
                daemon = _Daemon(sock, self._barrier_fd)
                daemon.send_lock.acquire()  # the replay goes first
                self._daemon = daemon
                replay = [request for request, _ in self._pending.values()]
                unanswered = len(replay)
                if self._init_answered and self._init is not None:
                    replay.insert(0, self._init)
                    self._drop_reply_to = IN_HEADER.unpack_from(self._init)[2]
                open_files = {str(k): v for k, v in self._open_files.items()}
        if busy:
            _reply(sock, {"error": "a page service is connected to the front already"})
            sock.close()
            return
        raise_buffers(sock)
        _reply(sock, {"open_files": open_files, "replayed": unanswered})
        LOG.info(
            "A page service connected; %d unanswered request(s) go to it%s",
            unanswered,
            " after the kernel's INIT" if len(replay) > unanswered else "",
        )
        try:
            self._send_locked(daemon, replay)
        finally:
            daemon.send_lock.release()
        threading.Thread(
            target=self._relay_replies, args=(daemon,), name="replies", daemon=True
        ).start()

    def _stop(self, sock: socket.socket) -> None:
        """The page service stops: so does the front, unless files are open."""
        with self._lock:
            open_count = sum(self._open_files.values())
        stopping = open_count == 0
        _reply(sock, {"stopping": stopping, "open_files": open_count})
        sock.close()
        if not stopping:
            LOG.info("%d file(s) open: the mount stays for the next page service", open_count)
            return
        LOG.info("No file open: unmounting %s", self.mount_dir)
        if self.mount_dir is not None:
            unmount(self.mount_dir)
        self.stopped.set()

    def _relay_replies(self, daemon: _Daemon) -> None:
        buffer = bytearray(2 * MAX_MESSAGE_BYTES)
        view = memoryview(buffer)
        filled = 0
        while True:
            try:
                size = daemon.sock.recv_into(view[filled:])
            except OSError as exc:
                LOG.warning("The page service's connection failed: %s", exc)
                size = 0
            if not size:
                break
            filled += size
            start = 0
            while filled - start >= OUT_HEADER.size:
                length = OUT_HEADER.unpack_from(buffer, start)[0]
                if not OUT_HEADER.size <= length <= MAX_MESSAGE_BYTES:
                    LOG.error("The page service sent a reply of %d bytes; closing", length)
                    filled = start = 0
                    daemon.sock.shutdown(socket.SHUT_RDWR)
                    break
                if filled - start < length:
                    break
                self._answer(view[start : start + length])
                start += length
            if start:
                buffer[: filled - start] = buffer[start:filled]
                filled -= start
        with self._lock:
            if self._daemon is daemon:
                self._daemon = None
            waiting = len(self._pending)
            self._waiting_since = time.monotonic()
        daemon.sock.close()
        LOG.warning(
            "The page service went away; %d FUSE request(s) wait for the next one", waiting
        )

    def _answer(self, reply: memoryview) -> None:
        if len(reply) < OUT_HEADER.size:
            LOG.error("Dropping a reply of %d bytes from the page service", len(reply))
            return
        _, error, unique = OUT_HEADER.unpack_from(reply)
        with self._lock:
            if unique != 0 and unique == self._drop_reply_to:
                self._drop_reply_to = None  # the replayed INIT's: the kernel had one
                return
            self._pending.pop(unique, None)
            initialized = (
                not self._init_answered
                and self._init is not None
                and unique == IN_HEADER.unpack_from(self._init)[2]
            )
            self._init_answered = self._init_answered or initialized
            nodeid = self._opening.pop(unique, None)
            if nodeid is not None and error == 0:
                self._open_files[nodeid] = self._open_files.get(nodeid, 0) + 1
        try:
            os.write(self.device_fd, reply)
        except OSError as exc:
            # ENOENT: the request was interrupted and is gone.
            if exc.errno != errno.ENOENT:
                LOG.error("Writing a FUSE reply failed: %s", exc)
        if initialized and self.mount_dir is not None:
            raise_read_ahead(self.mount_dir)

    def _send(self, daemon: _Daemon, messages: list[bytes]) -> None:
        with daemon.send_lock:
            self._send_locked(daemon, messages)

    def _send_locked(self, daemon: _Daemon, messages: list[bytes]) -> None:
        """A failure leaves the messages pending: the reply reader notices
        the closed connection."""
        for message in messages:
            try:
                daemon.deliver(message)
            except OSError:
                return


def _hung_up(sock: socket.socket, wait_s: float) -> bool:
    """Whether the other end of ``sock`` has closed it (within ``wait_s``)."""
    poller = select.poll()
    poller.register(sock, select.POLLRDHUP | select.POLLHUP)
    return bool(poller.poll(wait_s * 1000))


def _reply(sock: socket.socket, data: dict[str, Any]) -> None:
    with contextlib.suppress(OSError):
        sock.sendall(json.dumps(data).encode() + b"\n")


def _read_line(sock: socket.socket) -> bytes:
    """One line of JSON, and not a byte of what follows it (FUSE messages
    follow the answer to "serve")."""
    line = b""
    while not line.endswith(b"\n"):
        if len(line) >= CONTROL_MESSAGE_BYTES:
            raise ValueError("control message too long")
        byte = sock.recv(1)
        if not byte:
            break
        line += byte
    return line


def _request(path: str, data: dict[str, Any]) -> tuple[socket.socket, dict[str, Any]]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        sock.connect(path)
        sock.sendall(json.dumps(data).encode() + b"\n")
        reply = json.loads(_read_line(sock) or b"null")
        if not isinstance(reply, dict):
            raise FrontError("the FUSE front closed the connection")
        if "error" in reply:
            raise FrontError(f"the FUSE front refused: {reply['error']}")
    except BaseException:
        sock.close()
        raise
    return sock, reply


def connect(path: str) -> tuple[socket.socket, dict[int, int]]:
    """The FUSE connection to a running front, and the files clones hold
    open there (nodeid -> count). Raises OSError if no front listens."""
    sock, reply = _request(path, {"op": "serve"})
    raise_buffers(sock)
    return sock, {int(k): int(v) for k, v in reply.get("open_files", {}).items()}


def connect_or_start(mount_dir: str, path: str) -> tuple[socket.socket, dict[int, int]]:
    """Connect to the front of ``mount_dir``, starting one first if none
    runs (a mount left by a dead front is replaced)."""
    try:
        return connect(path)
    except (FileNotFoundError, ConnectionRefusedError):
        pass
    if is_mounted(mount_dir):
        LOG.warning("Unmounting %s, left by a FUSE front that is gone", mount_dir)
        unmount(mount_dir)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    process = subprocess.Popen(
        [sys.executable, "-m", __name__, "--mount-dir", mount_dir, "--socket", path],
        stdin=subprocess.DEVNULL,
        start_new_session=True,  # outlives the page service
    )
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        try:
            return connect(path)
        except (FileNotFoundError, ConnectionRefusedError):
            status = process.poll()
            if status is not None:
                raise FrontError(f"the FUSE front exited with status {status}") from None
            if time.monotonic() > deadline:
                process.kill()
                raise FrontError(
                    f"the FUSE front did not start within {START_TIMEOUT_S} s"
                ) from None
            time.sleep(0.05)


def stop(path: str) -> dict[str, Any]:
    """Tell the front the page service stops; it unmounts and exits if no
    file is open. Returns its answer (``stopping``, ``open_files``)."""
    sock, reply = _request(path, {"op": "stop"})
    sock.close()
    return reply


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nova_clonedriver.pageserver.fusefront")
    parser.add_argument("--mount-dir", required=True)
    parser.add_argument("--socket", required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(process)d %(levelname)s nova-clone-pagefront [-] %(message)s",
    )
    try:
        device_fd = mount(args.mount_dir)
    except OSError as exc:
        LOG.error("%s", exc)
        return 1
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    old_umask = os.umask(0o177)  # the socket is mode 0600
    try:
        listener.bind(args.socket)
    finally:
        os.umask(old_umask)
    listener.listen(4)
    LOG.info("Holding the FUSE mount %s for the page service (%s)", args.mount_dir, args.socket)
    Front(device_fd, listener, args.mount_dir).run()
    with contextlib.suppress(FileNotFoundError):
        os.unlink(args.socket)
    return 0


if __name__ == "__main__":
    sys.exit(main())
