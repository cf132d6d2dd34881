"""A stand-in for nova's metadata service on the Debian test network.

It answers ``/latest/meta-data/hostname`` (the EC2-style path nova serves)
with the name of the domain whose NIC holds the asking address, found
through the network's DHCP leases, as nova's finds the instance of a
port's fixed IP. The guest hook of tools/guest-hook/ asks it.

It runs in a process of its own (``python -m tests.functional.metadata
ANSWERS_FILE``): the test process may be monkey-patched by eventlet, whose
green sockets a server thread would block on.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time

import libvirt

from nova_clonedriver.demo import debianguest
from tests.functional import base

ADDRESS = "169.254.169.254"
HOSTNAME_PATH = "/latest/meta-data/hostname"
DHCP_DOMAIN = "novalocal"
START_TIMEOUT_S = 30


class MetadataService:
    """The service's process; ``answers()`` says whom it told what."""

    def __init__(self, answers_file: str) -> None:
        self._answers_file = answers_file
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """On the test network's bridge (the guests' default gateway)."""
        subprocess.run(
            ["ip", "addr", "replace", f"{ADDRESS}/32", "dev", debianguest.NETWORK_BRIDGE],
            check=True,
        )
        self._process = subprocess.Popen(
            [sys.executable, "-m", "tests.functional.metadata", self._answers_file],
            cwd=base.CHECKOUT,
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                socket.create_connection((ADDRESS, 80), timeout=1).close()
                return
            except OSError:
                if self._process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the stand-in metadata service did not start") from None
                time.sleep(0.1)

    def stop(self) -> None:
        if self._process is not None:
            self._process.terminate()
            self._process.wait()
        subprocess.run(
            ["ip", "addr", "del", f"{ADDRESS}/32", "dev", debianguest.NETWORK_BRIDGE], check=False
        )

    def answers(self) -> list[tuple[str, str]]:
        """(asking address, hostname) of every answer so far."""
        try:
            with open(self._answers_file) as f:
                return [tuple(json.loads(line)) for line in f]  # type: ignore[misc]
        except FileNotFoundError:
            return []


def hostname_for(conn: libvirt.virConnect, address: str) -> str | None:
    network = conn.networkLookupByName(debianguest.NETWORK_NAME)
    macs = {lease["mac"] for lease in network.DHCPLeases() if lease["ipaddr"] == address}
    for domain in conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE):
        try:
            if macs & set(debianguest.macs(domain)):
                return str(domain.name())
        except libvirt.libvirtError as exc:
            # Tests running beside this one destroy their domains at any time.
            if exc.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:
                raise
    return None


def serve(answers_file: str) -> None:
    # Imported here, in the service's own process: the test process must
    # not import socketserver before eventlet patches it (nova's tests do),
    # or prometheus_client's server thread there polls without yielding.
    import http.server

    conn = libvirt.open("qemu:///system")

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            asking = self.client_address[0]
            name = hostname_for(conn, asking) if self.path == HOSTNAME_PATH else None
            if name is None:
                self.send_error(404)
                return
            with open(answers_file, "a") as f:
                f.write(json.dumps([asking, name]) + "\n")
            body = f"{name}.{DHCP_DOMAIN}".encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    http.server.HTTPServer((ADDRESS, 80), Handler).serve_forever()


if __name__ == "__main__":
    serve(sys.argv[1])
