"""A real OpenStack Swift for the tests: Debian's proxy, account, container
and object servers, one of each, on one device in a folder, with one
replica; tempauth for accounts (tokens in a memcached of its own).

The tests give page services a tempauth token and the account's storage
URL (keystoneauth's ``admin_token`` plugin); the one-machine cloud
(tools/minicloud) runs Swift with keystone instead.
"""

from __future__ import annotations

import os
import subprocess

import requests

from nova_clonedriver.demo import localnode
from tests import waiting

ACCOUNTS = {"test": ("tester", "testing"), "other": ("stranger", "secret")}
SERVERS = ("account", "container", "object")


class SwiftServer:
    """``bind_ip``: where the proxy listens (a network's gateway, so that
    page services in network namespaces reach it)."""

    def __init__(self, root: str, bind_ip: str = "127.0.0.1") -> None:
        self.root = root
        self.bind_ip = bind_ip
        self.ports = {name: localnode.free_port() for name in (*SERVERS, "proxy", "memcached")}
        self.processes: list[subprocess.Popen[bytes]] = []
        os.makedirs(os.path.join(root, "devices", "d1"), exist_ok=True)
        for name in SERVERS:
            self._write(f"{name}-server.conf", self._server_conf(name))
            builder = os.path.join(root, f"{name}.builder")
            for args in (
                ["create", "6", "1", "1"],
                ["add", f"r1z1-127.0.0.1:{self.ports[name]}/d1", "100"],
                ["rebalance"],
            ):
                subprocess.run(
                    ["swift-ring-builder", builder, *args], check=True, capture_output=True
                )
        self._write("proxy-server.conf", self._proxy_conf())

    @property
    def url(self) -> str:
        return f"http://{self.bind_ip}:{self.ports['proxy']}"

    def start(self) -> None:
        log = open(os.path.join(self.root, "swift.log"), "ab")  # noqa: SIM115 - the servers write it
        self.processes.append(
            subprocess.Popen(
                [
                    "memcached",
                    "-u",
                    "nobody",
                    "-l",
                    "127.0.0.1",
                    "-p",
                    str(self.ports["memcached"]),
                ],
                stdout=log,
                stderr=log,
            )
        )
        for name in (*SERVERS, "proxy"):
            self.processes.append(
                subprocess.Popen(
                    [f"swift-{name}-server", os.path.join(self.root, f"{name}-server.conf")],
                    stdout=log,
                    stderr=log,
                )
            )
        log.close()
        waiting.wait(self._healthy, 60, lambda: f"Swift did not start: {self.log()[-2000:]}")

    def stop(self) -> None:
        for process in self.processes:
            process.terminate()
        for process in self.processes:
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
        self.processes = []

    def log(self) -> str:
        with open(os.path.join(self.root, "swift.log"), errors="replace") as f:
            return f.read()

    def token(self, account: str = "test") -> tuple[str, str]:
        """A tempauth token of ``account`` and its storage URL."""
        user, key = ACCOUNTS[account]
        reply = requests.get(
            f"{self.url}/auth/v1.0",
            headers={"X-Auth-User": f"{account}:{user}", "X-Auth-Key": key},
            timeout=30,
        )
        reply.raise_for_status()
        return reply.headers["X-Auth-Token"], reply.headers["X-Storage-Url"]

    def options(self, account: str = "test") -> dict[str, str]:
        """[pageserver_swift] options of a page service with ``account``'s
        token."""
        token, storage_url = self.token(account)
        return {"auth_type": "admin_token", "token": token, "endpoint": storage_url}

    def _healthy(self) -> bool:
        try:
            return requests.get(f"{self.url}/healthcheck", timeout=5).status_code == 200
        except requests.RequestException:
            return False

    def _write(self, name: str, text: str) -> None:
        with open(os.path.join(self.root, name), "w") as f:
            f.write(text)

    def _server_conf(self, name: str) -> str:
        return f"""[DEFAULT]
bind_ip = 127.0.0.1
bind_port = {self.ports[name]}
devices = {self.root}/devices
mount_check = false
swift_dir = {self.root}
workers = 0
user = root

[pipeline:main]
pipeline = {name}-server

[app:{name}-server]
use = egg:swift#{name}
"""

    def _proxy_conf(self) -> str:
        users = "\n".join(
            f"user_{account}_{user} = {key} .admin" for account, (user, key) in ACCOUNTS.items()
        )
        return f"""[DEFAULT]
bind_ip = {self.bind_ip}
bind_port = {self.ports["proxy"]}
swift_dir = {self.root}
workers = 0
user = root

[pipeline:main]
pipeline = catch_errors gatekeeper healthcheck proxy-logging cache tempauth
    proxy-logging proxy-server

[app:proxy-server]
use = egg:swift#proxy
account_autocreate = true

[filter:tempauth]
use = egg:swift#tempauth
{users}

[filter:cache]
use = egg:swift#memcache
memcache_servers = 127.0.0.1:{self.ports["memcached"]}

[filter:catch_errors]
use = egg:swift#catch_errors

[filter:gatekeeper]
use = egg:swift#gatekeeper

[filter:healthcheck]
use = egg:swift#healthcheck

[filter:proxy-logging]
use = egg:swift#proxy_logging
"""
