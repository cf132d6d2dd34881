"""nova-clone-pageserver: one per compute node.

Runs the TLS server that serves this node's generations to peers
(origin.py, a thread per connection) and, in one asyncio loop: the FUSE
file system that presents other nodes' generations here (fusefs.py,
remote.py, presented.py; its connections to origins have threads of their
own, peer.py), the local control socket (control.py), and the periodic
reconcile that keeps origins' reference counts right and frees what no
clone uses. The FUSE mount itself is held by the FUSE front
(fusefront.py), which outlives the service.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import signal
import threading
from typing import Any

import libvirt
import pyfuse3
import pyfuse3.asyncio

from nova_clonedriver.engine import hostinfo
from nova_clonedriver.engine import native
from nova_clonedriver.engine import store as store_mod
from nova_clonedriver.pageserver import control
from nova_clonedriver.pageserver import fusefront
from nova_clonedriver.pageserver import fusefs
from nova_clonedriver.pageserver import metrics
from nova_clonedriver.pageserver import objectstore
from nova_clonedriver.pageserver import origin as origin_mod
from nova_clonedriver.pageserver import publish
from nova_clonedriver.pageserver import remote as remote_mod
from nova_clonedriver.pageserver import stats as stats_mod
from nova_clonedriver.pageserver import tls

LOG = logging.getLogger(__name__)


@dataclasses.dataclass
class ServiceConfig:
    state_dir: str
    listen_host: str
    listen_port: int
    tls_cert_file: str
    tls_key_file: str
    tls_ca_file: str
    node_name: str | None = None
    control_socket: str | None = None
    control_socket_group: str | None = None
    mount_dir: str | None = None
    libvirt_uri: str = "qemu:///system"
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 0  # 0: no Prometheus endpoint
    reconcile_interval_s: float = 10
    remote: dict[str, Any] = dataclasses.field(default_factory=dict)  # remote.Settings
    # Publish here, and read other nodes' generations from, this store.
    object_store: objectstore.ObjectStore | None = None

    def socket_path(self) -> str:
        return control.socket_path(self.state_dir, self.control_socket)


class PageService:
    def __init__(self, config: ServiceConfig) -> None:
        self.config = config
        self.node = tls.own_name(config.tls_cert_file)
        if config.node_name and config.node_name != self.node:
            raise tls.CertificateError(
                f"[pageserver] node_name is {config.node_name} but the certificate "
                f"{config.tls_cert_file} is for {self.node}"
            )
        self.store = store_mod.SnapshotStore(config.state_dir)
        self.stats = stats_mod.Stats()
        self.mount_dir = config.mount_dir or os.path.join(config.state_dir, "remote")
        self._stop = asyncio.Event()
        self._stopping = threading.Event()  # for the service's threads
        self._fuse_error: str | None = None
        self.remote: remote_mod.RemoteGenerations | None = None

    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        config = self.config
        self._stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._stop.set)
        certs = (config.tls_cert_file, config.tls_key_file, config.tls_ca_file)
        publisher = (
            publish.Publisher(self.store, config.object_store, self.stats.published)
            if config.object_store is not None
            else None
        )
        origin = origin_mod.OriginServer(
            self.store,
            self.stats,
            tls.server_context(*certs),
            publisher.offer if publisher is not None else None,
        )
        origin.start(config.listen_host, config.listen_port)
        self.remote = remote_mod.RemoteGenerations(
            self.store,
            self.stats,
            self.node,
            tls.client_context(*certs),
            remote_mod.Settings(
                mount_dir=self.mount_dir,
                cache_dir=os.path.join(config.state_dir, "page-cache"),
                **config.remote,
            ),
            config.object_store,
        )
        self.remote.load_existing()
        front_socket = fusefront.socket_path(config.state_dir)
        fuse_task = self._serve_fuse(front_socket)
        controls = await control.serve(
            config.socket_path(), self._control, config.control_socket_group
        )
        servers: list[asyncio.AbstractServer | metrics.Endpoint | origin_mod.OriginServer] = [
            origin,
            controls,
        ]
        if config.metrics_port:
            servers.append(
                await metrics.serve(
                    config.metrics_host, config.metrics_port, self.remote.stats_json
                )
            )
        reconcile = loop.create_task(self._reconcile_forever())
        if publisher is not None:
            native.thread_class()(
                target=self._publish_forever, args=(publisher,), name="publish", daemon=True
            ).start()
        LOG.info(
            "Page service of node %s: peers on %s:%d, control on %s, remote generations under %s",
            self.node,
            config.listen_host,
            config.listen_port,
            config.socket_path(),
            self.mount_dir,
        )
        try:
            await self._stop.wait()
        finally:
            LOG.info("Page service of node %s stopping", self.node)
            self._stopping.set()
            for task in (reconcile, fuse_task):
                task.cancel()
            for server in servers:
                server.close()
            pyfuse3.close(unmount=False)
            if self._fuse_error is None:
                self._stop_front(front_socket)
            self.remote.close()
        if self._fuse_error is not None:
            raise fusefront.FrontError(self._fuse_error)

    def _serve_fuse(self, front_socket: str) -> asyncio.Task[None]:
        """Answer the FUSE requests the front relays (starting the front and
        its mount if none runs); the service stops if the front goes."""
        assert self.remote is not None
        sock, open_files = fusefront.connect_or_start(self.mount_dir, front_socket)
        file_system = fusefs.PagesFS(self.remote, self._qemu_user())
        file_system.restore_open_files(open_files)
        pyfuse3.asyncio.enable()
        # libfuse takes a /dev/fd/N "mount point" as a /dev/fuse that is
        # mounted already, and closes it at the end.
        pyfuse3.init(file_system, f"/dev/fd/{sock.detach()}", set())
        if open_files:
            LOG.info("Clones hold %d file(s) open", sum(open_files.values()))
        task = asyncio.get_running_loop().create_task(pyfuse3.main())
        task.add_done_callback(self._fuse_ended)
        return task

    def _fuse_ended(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        self._fuse_error = (
            f"serving FUSE requests ended: {task.exception() or 'the front is gone'}"
        )
        self._stop.set()

    def _stop_front(self, front_socket: str) -> None:
        try:
            answer = fusefront.stop(front_socket)
        except (OSError, fusefront.FrontError) as exc:
            LOG.warning("Could not tell the FUSE front to stop: %s", exc)
            return
        if not answer.get("stopping"):
            LOG.info(
                "The FUSE front keeps %s mounted for the next run: clones hold %s file(s) open",
                self.mount_dir,
                answer.get("open_files"),
            )

    def _qemu_user(self) -> tuple[int, int]:
        """The user QEMU runs as, from libvirt (as the engine finds it)."""
        conn = libvirt.openReadOnly(self.config.libvirt_uri)
        try:
            return hostinfo.qemu_user_ids(conn)
        finally:
            conn.close()

    async def _control(self, request: dict[str, Any]) -> dict[str, Any]:
        operation = request.get("op")
        assert self.remote is not None
        if operation == "attach":
            return await self.remote.attach(
                str(request.get("generation")),
                str(request.get("origin")),
                str(request.get("key", "")),
                str(request.get("prefetch", "none")),
            )
        if operation == "release":
            await self.remote.release(str(request.get("generation")))
            return {}
        if operation == "stats":
            return {"node": self.node, **self.remote.stats_json()}
        raise ValueError(f"unknown operation {operation!r}")

    def _publish_forever(self, publisher: publish.Publisher) -> None:
        """Publish new generations, unpublish gone ones (in a thread: a
        publication takes a while)."""
        while not self._stopping.wait(self.config.reconcile_interval_s):
            try:
                publisher.reconcile()
            except Exception:
                LOG.exception("Publishing to the object store failed; trying again")

    async def _reconcile_forever(self) -> None:
        assert self.remote is not None
        while True:
            await asyncio.sleep(self.config.reconcile_interval_s)
            try:
                await self.remote.reconcile()
            except Exception:
                LOG.exception(
                    "Reconcile failed; trying again in %s s", self.config.reconcile_interval_s
                )
