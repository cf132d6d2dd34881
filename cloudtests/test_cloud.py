"""End to end on the minicloud (tools/minicloud): only the public clients.

Everything goes through the ``openstack`` CLI (python-openstackclient and
python-heatclient) with the credentials of ``$MINICLOUD_ROOT/etc/openrc``,
as a user of the cloud would; the host is only looked at from the outside
at the end (``virsh`` for the cloud's domains, the ``[clone] state_dir``
for clones left behind).

Run with ``tools/minicloud test`` (or ``tox -e cloud``, which also starts
and stops the cloud). Not part of the project's CI, which runs stestr on
./tests only.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import subprocess
import time
import unittest

from tests import waiting

ROOT = os.environ.get("MINICLOUD_ROOT", "/var/lib/minicloud")
STATE_DIR = os.path.join(ROOT, "nova", "clones")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEMPLATE = os.path.join(REPO, "etc", "heat", "clone-cluster.yaml")
DOMAIN_PREFIX = "mc-"
HEARTBEAT = re.compile(r"clone-agent hb=(\d+)")
PREFIX = f"e2e{os.getpid()}"


def openstack(*args: str, parse: bool = True, timeout: float = 600,
              credentials: dict[str, str] | None = None):
    """Run the openstack CLI; JSON output parsed unless parse is False.
    ``credentials``: OS_* variables of another user than the admin's."""
    cmd = ["openstack", *args]
    if parse:
        cmd += ["-f", "json"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(credentials or {})})
    if proc.returncode:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}): "
                             f"{proc.stderr.strip()[-2000:]}")
    return json.loads(proc.stdout) if parse else proc.stdout


def service_containers() -> list[str]:
    """The Swift containers of the service project (nova's service user's)."""
    service = {"OS_USERNAME": "nova", "OS_PROJECT_NAME": "service"}
    return [c["Name"] for c in openstack("container", "list", credentials=service)]


def heartbeats(server: str) -> list[int]:
    return [int(n) for n in HEARTBEAT.findall(
        openstack("console", "log", "show", server, parse=False))]


def first_heartbeats_after(names: list[str], since: float, timeout_s: float = 900) -> float:
    """Seconds from ``since`` until every server of ``names`` exists and its
    console shows a heartbeat; polled with openstacksdk (a CLI call per
    server and round would take seconds)."""
    import openstack as sdk  # the cloud's venv has it; the OS_* variables are set

    conn = sdk.connect()
    pending = set(names)
    deadline = since + timeout_s
    while pending:
        for name in sorted(pending):
            server = conn.compute.find_server(name, ignore_missing=True)
            if server is None or server.status != "ACTIVE":
                continue
            output = conn.compute.get_server_console_output(server)["output"]
            if HEARTBEAT.search(output):
                pending.discard(name)
        if time.monotonic() > deadline:
            raise AssertionError(f"no heartbeat from {sorted(pending)} after {timeout_s} s")
        time.sleep(0.5)
    return time.monotonic() - since


def last_update_s(stack: str) -> float:
    """Heat's own time of the stack's last update: its UPDATE_IN_PROGRESS
    to UPDATE_COMPLETE events."""
    events = [e for e in openstack("stack", "event", "list", stack)
              if e["resource_name"] == stack]
    times = {}
    for event in events:  # oldest first: the last update's wins
        times[event["resource_status"]] = datetime.datetime.fromisoformat(
            event["event_time"].replace("Z", "+00:00"))
    return (times["UPDATE_COMPLETE"] - times["UPDATE_IN_PROGRESS"]).total_seconds()


def servers(name_regex: str) -> dict[str, dict]:
    return {s["Name"]: s for s in openstack("server", "list", "--name", name_regex)}


def cloud_domains() -> set[str]:
    out = subprocess.run(["virsh", "-c", "qemu:///system", "list", "--all", "--name"],
                         capture_output=True, text=True, check=True).stdout
    return {d for d in out.split() if d.startswith(DOMAIN_PREFIX)}


def clones_in_store() -> list[str]:
    """The clones the [clone] state_dir knows: each generation's clone
    references (generations/<id>/references/<uuid>.json) and the engine's
    own clone folders (clones/)."""
    found = set()
    generations = os.path.join(STATE_DIR, "generations")
    for generation in os.listdir(generations) if os.path.isdir(generations) else []:
        references = os.path.join(generations, generation, "references")
        if os.path.isdir(references):
            found.update(f[:-len(".json")] for f in os.listdir(references)
                         if f.endswith(".json"))
    clones = os.path.join(STATE_DIR, "clones")
    if os.path.isdir(clones):
        found.update(os.listdir(clones))
    return sorted(found)


class TestCloneCloud(unittest.TestCase):
    """Master, live image, 8 clones, a Heat cluster of 4 -> 12 -> 2, and
    a host with nothing of them left at the end."""

    def setUp(self):
        self.master = f"{PREFIX}-master"
        self.live_image = f"{PREFIX}-live"
        self.stack = f"{PREFIX}-stack"
        self.boot_stack = f"{PREFIX}-boot-stack"
        self.addCleanup(self._cleanup)

    def _cleanup(self):
        """Best effort: what a failed run left, in dependency order."""
        for args in (["stack", "delete", "--yes", "--wait", self.stack, self.boot_stack],
                     ["server", "delete", "--wait",
                      *[s["ID"] for s in servers(f"^{PREFIX}-").values()]],
                     ["image", "delete", self.live_image]):
            if args[-1] == "--wait":  # no servers
                continue
            subprocess.run(["openstack", *args], capture_output=True, timeout=600)

    def test_clones_end_to_end(self):
        started = time.monotonic()
        # 1. The master: the test guest with the normal flavor.
        master = openstack("server", "create", "--image", "guest", "--flavor", "m1.guest",
                           "--nic", "none", "--wait", self.master)
        self.assertEqual("ACTIVE", master["status"])
        self.assertTrue(master["OS-EXT-SRV-ATTR:instance_name"].startswith(DOMAIN_PREFIX))
        waiting.wait(lambda: max(heartbeats(self.master) or [0]) >= 5, 180,
                     lambda: f"no heartbeat 5 from the master: {heartbeats(self.master)}")

        # 2. The live image (bless).
        hb_before = heartbeats(self.master)[-1]
        openstack("server", "image", "create", "--property", "clone_live=true",
                  "--name", self.live_image, "--wait", self.master)
        image = openstack("image", "show", self.live_image)
        properties = image["properties"]
        self.assertEqual("active", image["status"])
        self.assertEqual("true", properties["clone_live"])
        self.assertEqual(master["id"], properties["clone_master"])
        self.assertIn("clone_generation", properties)
        hb_after = heartbeats(self.master)[-1]
        # The page service publishes it to the cloud's Swift, as nova's
        # service user (tools/minicloud.d/swift.sh).
        container = f"nova-clone-{properties['clone_generation']}"
        waiting.wait(lambda: container in service_containers(), 180,
                     f"{container} not in Swift")

        # 3. Eight clones in one request.
        t_post = time.monotonic()
        openstack("server", "create", "--image", self.live_image,
                  "--flavor", "m1.guest.clone", "--nic", "none", "--min", "8", "--max", "8",
                  "--wait", f"{PREFIX}-clones")
        post_to_active = time.monotonic() - t_post
        clones = servers(f"^{PREFIX}-clones-")
        self.assertEqual(8, len(clones), clones)
        self.assertEqual({"ACTIVE"}, {c["Status"] for c in clones.values()})
        first_hbs = {}
        for name in clones:
            hbs = waiting.wait(lambda n=name: heartbeats(n), 120,
                               lambda n=name: f"no heartbeat from {n}")
            first_hbs[name] = hbs[0]
            # It goes on from the master's count at the bless, not from 0.
            self.assertGreater(hbs[0], hb_before, name)
            self.assertLessEqual(hbs[0], hb_after + 1, name)
        self.assertEqual(len(clones) + 1, len(cloud_domains()))
        self.assertEqual(sorted(c["ID"] for c in clones.values()), clones_in_store())
        # All eight at once, as a user would. A delete that fails is noted
        # (the test fails at the end) and retried, so that the rest runs.
        problems = []
        subprocess.run(["openstack", "server", "delete", "--wait",
                        *[c["ID"] for c in clones.values()]], capture_output=True, timeout=600)
        for name, server in servers(f"^{PREFIX}-clones-").items():
            fault = openstack("server", "show", server["ID"]).get("fault")
            problems.append(f"deleting {name} failed: {server['Status']} {fault}")
            openstack("server", "delete", "--wait", server["ID"], parse=False)
        self.assertEqual({}, servers(f"^{PREFIX}-clones-"))
        waiting.wait(lambda: not clones_in_store(), 60, clones_in_store)

        # 4. A Heat cluster of the live image: 4, then 12, then 2; then
        # the same stack with the normal flavor and image, 4 then 12.
        clone_growth = self._cluster(self.stack, "clone", self.live_image,
                                     "m1.guest.clone", (4, 12, 2), hb_before)
        openstack("stack", "delete", "--yes", "--wait", self.stack, parse=False)
        boot_growth = self._cluster(self.boot_stack, "boot", "guest", "m1.guest",
                                    (4, 12), 0)
        openstack("stack", "delete", "--yes", "--wait", self.boot_stack, parse=False)

        # 5. Delete it all: nothing of the cloud's is left on the host.
        openstack("image", "delete", self.live_image, parse=False)
        t_image_deleted = time.monotonic()
        openstack("server", "delete", "--wait", self.master, parse=False)
        self.assertEqual({}, servers(f"^{PREFIX}-"))
        self.assertEqual({}, servers(r"^(clone|boot)-\d+$"))
        waiting.wait(lambda: not cloud_domains(), 60, cloud_domains)
        self.assertEqual([], clones_in_store())
        # The driver frees the deleted live image's generation in its next
        # image-cache pass ([image_cache] manager_interval = 60 here).
        generation = os.path.join(STATE_DIR, "generations", properties["clone_generation"])
        waiting.wait(lambda: not os.path.exists(generation), 180,
                     f"{generation} of the deleted live image is still there")
        waiting.wait(lambda: container not in service_containers(), 120,
                     f"{container} of the freed generation is still in Swift")
        self.assertEqual([], problems)
        print(f"\nclones: 8 POST to all ACTIVE {post_to_active:.1f} s; master hb "
              f"{hb_before}..{hb_after} around the bless, clones' first hb "
              f"{sorted(first_hbs.values())}")
        for what, growth in (("clone flavor", clone_growth), ("normal flavor", boot_growth)):
            print(f"Heat stack 4 -> 12, {what}: UPDATE_COMPLETE after "
                  f"{growth['update_s']:.0f} s (Heat's events), all 8 new guests "
                  f"heard from after {growth['heartbeats_s']:.1f} s")
        print(f"generation freed {time.monotonic() - t_image_deleted:.0f} s after its image "
              f"was deleted; test {time.monotonic() - started:.0f} s")

    def _cluster(self, stack: str, prefix: str, image: str, flavor: str,
                 counts: tuple[int, ...], min_heartbeat: int) -> dict[str, float]:
        """Create the ResourceGroup stack with counts[0] servers, update it
        to each next count and check the servers follow; returns the times
        of the update from 4 to 12: Heat's (stack events) and until every
        new guest's console shows a heartbeat."""
        def members():
            return {name: s["Status"] for name, s in servers(f"^{prefix}-\\d+$").items()}

        growth = {}
        verbs = ("create",) + ("update",) * (len(counts) - 1)
        for count, verb in zip(counts, verbs, strict=True):
            args = ["stack", verb, "--wait", "--parameter", f"count={count}"]
            if verb == "create":
                args += ["-t", TEMPLATE, "--parameter", f"live_image={image}",
                         "--parameter", f"clone_flavor={flavor}",
                         "--parameter", f"name_prefix={prefix}"]
            else:
                args += ["--existing"]
            # (--wait prints the stack's events before the result)
            update = subprocess.Popen(["openstack", *args, stack], stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True)
            t_update = time.monotonic()
            if (verb, count) == ("update", 12):
                growth["heartbeats_s"] = first_heartbeats_after(
                    [f"{prefix}-{i}" for i in range(4, 12)], t_update)
            _, err = update.communicate(timeout=900)
            self.assertEqual(0, update.returncode, err[-2000:])
            stack_shown = openstack("stack", "show", stack)
            self.assertEqual(f"{verb.upper()}_COMPLETE", stack_shown["stack_status"],
                             stack_shown.get("stack_status_reason"))
            if (verb, count) == ("update", 12):
                growth["update_s"] = last_update_s(stack)
            expected = {f"{prefix}-{i}": "ACTIVE" for i in range(count)}
            waiting.wait(lambda e=expected: members() == e, 120,
                         lambda c=count: f"stack members {members()}, not {c}")
            names = openstack("stack", "output", "show", stack, "server_names")
            self.assertEqual([f"{prefix}-{i}" for i in range(count)], names["output_value"])
            if image == self.live_image:
                self.assertEqual(count, len(clones_in_store()))
            for name in expected:
                self.assertGreater(waiting.wait(lambda n=name: heartbeats(n), 180,
                                                lambda n=name: f"no heartbeat from {n}")[0],
                                   min_heartbeat, name)
        return growth


if __name__ == "__main__":
    unittest.main()
