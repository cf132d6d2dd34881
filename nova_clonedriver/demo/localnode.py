"""Real nova-clone-pageserver processes standing in for compute nodes.

Each "node" is a daemon with its own state dir (snapshot store), port,
certificate and FUSE mount, all on this machine: a clone launched from
node B's store reads its memory through B's FUSE mount and B's TLS
connection to node A, exactly as it would across hosts. The demo, the
benchmarks and the tests run their page services this way.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

from nova_clonedriver.demo import pki as pki_mod
from nova_clonedriver.pageserver import control
from nova_clonedriver.pageserver import fusefront

DAEMON = (sys.executable, "-m", "nova_clonedriver.cmd.pageserver")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LocalNode:
    """One page service daemon and its files under ``root``. Its timers are
    short (reconcile every second, release after 3 s idle, give up a fetch
    after 10 s) because such nodes live for one run; ``options`` (any
    ``[pageserver]`` option) override them."""

    def __init__(
        self,
        name: str,
        root: str,
        pki: pki_mod.ThrowawayPKI,
        listen_host: str = "127.0.0.1",
        wrapper: tuple[str, ...] = (),
        state_dir: str | None = None,
        code_dir: str | None = None,
        swift: dict[str, str] | None = None,
        **options: object,
    ) -> None:
        """``wrapper``: a command prefix for the daemon (``ip netns exec NS``:
        a node behind its own network stack). ``code_dir``: run the daemon
        of the checkout there (benchmarks compare versions) rather than
        this one. ``swift``: its [pageserver_swift] options (with
        ``object_store = swift`` among ``options``)."""
        self.name = name
        self.state_dir = state_dir or os.path.join(root, name)
        os.makedirs(self.state_dir, exist_ok=True)
        os.chmod(self.state_dir, 0o711)
        self.port = free_port()
        self.address = f"{listen_host}:{self.port}"
        self.wrapper = list(wrapper)
        self.code_dir = code_dir
        self.cert_file, self.key_file = pki.node(name, ips=tuple({"127.0.0.1", listen_host}))
        self.ca_file = pki.ca_file
        self.config_file = os.path.join(root, f"{name}.conf")
        self.log_file = os.path.join(root, f"{name}.log")
        settings = {
            "listen_host": listen_host,
            "listen_port": self.port,
            "tls_cert_file": self.cert_file,
            "tls_key_file": self.key_file,
            "tls_ca_file": pki.ca_file,
            "reconcile_interval_s": 1,
            "release_idle_s": 3,
            "fetch_timeout_s": 10,
            "metrics_port": 0,  # several nodes share one loopback
            **options,
        }
        with open(self.config_file, "w") as f:
            f.write(f"[clone]\nstate_dir = {self.state_dir}\n[pageserver]\n")
            f.writelines(f"{k} = {v}\n" for k, v in settings.items())
            if swift:
                f.write("[pageserver_swift]\n")
                f.writelines(f"{k} = {v}\n" for k, v in swift.items())
        self.client = control.PageServiceClient(
            os.path.join(self.state_dir, "pageserver.sock"), timeout_s=120
        )
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        log = open(self.log_file, "a")  # noqa: SIM115 - the daemon writes it
        self.process = subprocess.Popen(
            [*self.wrapper, *DAEMON, "--config-file", self.config_file, "--debug"],
            stdout=log,
            stderr=log,
            cwd=self.code_dir,  # python -m finds the package there first
        )
        log.close()
        deadline = time.monotonic() + 30
        while True:
            try:
                self.client.stats()
                return
            except control.PageServiceError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"page service {self.name} did not start:\n" + self.log()
                    ) from None
                time.sleep(0.2)

    def stop(self, sig: int = signal.SIGTERM) -> int:
        """Stop the daemon. Its FUSE front keeps the mount while clones hold
        files open there, and after a SIGKILL (the next start hands it to
        the new daemon; that is tested)."""
        code = 0
        if self.process is not None:
            self.process.send_signal(sig)
            code = self.process.wait(30)
            self.process = None
        return code

    def close(self) -> None:
        """Stop the daemon, and end its FUSE front by unmounting (lazily:
        the front serves what is still open until it is closed)."""
        self.stop()
        if fusefront.is_mounted(self.mount_dir()):
            fusefront.unmount(self.mount_dir())

    def log(self) -> str:
        """What the daemon logged, without its debug messages."""
        with open(self.log_file) as f:
            return "".join(line for line in f if " DEBUG " not in line)[-20000:]

    def mount_dir(self) -> str:
        return os.path.join(self.state_dir, "remote")

    def mount_path(self, generation_id: str, name: str = "memory.img") -> str:
        return os.path.join(self.mount_dir(), generation_id, name)
