import base64
import json
import logging
from unittest import mock

import fixtures
import libvirt
import testtools

from nova_clonedriver.engine import guestagent
from nova_clonedriver.engine import launch


class TestHostnames(testtools.TestCase):
    def test_valid(self):
        for name in ("web-1", "a", "web-1.example.org", "x" * 63, "1st"):
            self.assertTrue(guestagent.is_valid_hostname(name), name)

    def test_invalid(self):
        for name in ("", "-web", "web-", "we_b", "a..b", "x" * 64, "w b", "a;reboot", "é"):
            self.assertFalse(guestagent.is_valid_hostname(name), name)
        self.assertFalse(guestagent.is_valid_hostname(".".join(["x" * 60] * 5)))


class FakeAgent:
    """qemu-guest-agent as libvirt_qemu.qemuAgentCommand reaches it."""

    def __init__(self, exitcode=0, out=b"", err=b"", running_polls=0):
        self.requests = []
        self.exitcode, self.out, self.err = exitcode, out, err
        self.running_polls = running_polls

    def __call__(self, domain, payload, timeout, flags):
        request = json.loads(payload)
        self.requests.append(request)
        if request["execute"] == "guest-exec":
            return json.dumps({"return": {"pid": 42}})
        if request["execute"] == "guest-exec-status":
            if self.running_polls:
                self.running_polls -= 1
                return json.dumps({"return": {"exited": False}})
            return json.dumps(
                {
                    "return": {
                        "exited": True,
                        "exitcode": self.exitcode,
                        "out-data": base64.b64encode(self.out).decode(),
                        "err-data": base64.b64encode(self.err).decode(),
                    }
                }
            )
        return json.dumps({"return": {}})


class TestGuestAgent(testtools.TestCase):
    def agent(self, fake):
        patcher = mock.patch("libvirt_qemu.qemuAgentCommand", fake)
        patcher.start()
        self.addCleanup(patcher.stop)
        domain = mock.Mock()
        domain.name.return_value = "web"
        return guestagent.GuestAgent(domain)

    def test_run_returns_output_after_the_program_exits(self):
        fake = FakeAgent(out=b"hello\n", running_polls=2)
        agent = self.agent(fake)
        self.assertEqual(b"hello\n", agent.run("/bin/echo", ["hello"], b"in"))
        exec_request = fake.requests[0]
        self.assertEqual("guest-exec", exec_request["execute"])
        self.assertEqual("/bin/echo", exec_request["arguments"]["path"])
        self.assertEqual(b"in", base64.b64decode(exec_request["arguments"]["input-data"]))
        self.assertEqual(3, sum(r["execute"] == "guest-exec-status" for r in fake.requests))

    def test_a_failing_program_raises_with_its_errors(self):
        agent = self.agent(FakeAgent(exitcode=2, err=b"RNDRESEEDCRNG: Operation not permitted\n"))
        error = self.assertRaises(guestagent.AgentError, agent.reseed_rng)
        self.assertIn("exit code 2", str(error))
        self.assertIn("RNDRESEEDCRNG: Operation not permitted", str(error))

    def test_a_hostile_or_broken_agent_gets_an_agent_error(self):
        """Whatever the guest answers, launch sees an AgentError (and logs
        at most one short printable line of it)."""
        replies = {
            "not json": "}{",
            "not an object": "[1, 2]",
            "no pid": json.dumps({"return": {"pid": "1; reboot"}}),
            "bad base64": json.dumps(
                {"return": {"exited": True, "exitcode": 0, "out-data": "@@@"}}
            ),
        }
        for reply in replies.values():

            def answer(domain, payload, timeout, flags, reply=reply):
                if json.loads(payload)["execute"] == "guest-exec" and "exited" in reply:
                    return json.dumps({"return": {"pid": 7}})
                return reply

            agent = self.agent(answer)
            self.assertRaises(guestagent.AgentError, agent.run, "/bin/true", [])
        forged = FakeAgent(exitcode=1, err=b"oops\n2026-12-03 INFO forged\x1b[2J" + b"x" * 999)
        error = self.assertRaises(guestagent.AgentError, self.agent(forged).run, "/bin/x", [])
        self.assertNotIn("\n", str(error))
        self.assertNotIn("\x1b", str(error))
        self.assertLess(len(str(error)), 400)

    def test_reseed_sends_fresh_host_bytes_each_time(self):
        fake = FakeAgent()
        agent = self.agent(fake)
        agent.reseed_rng()
        agent.reseed_rng()
        seeds = [
            base64.b64decode(r["arguments"]["input-data"])
            for r in fake.requests
            if r["execute"] == "guest-exec"
        ]
        self.assertEqual([guestagent.RESEED_BYTES] * 2, [len(seed) for seed in seeds])
        self.assertNotEqual(seeds[0], seeds[1])

    def test_hostname_is_validated_before_it_reaches_the_guest(self):
        fake = FakeAgent()
        agent = self.agent(fake)
        self.assertRaises(guestagent.AgentError, agent.set_hostname, "x; reboot")
        self.assertEqual([], fake.requests)
        agent.set_hostname("web-2")
        # Passed as an argument of the script, never inside it.
        self.assertEqual("web-2", fake.requests[0]["arguments"]["arg"][-1])

    def test_wait_connected_gives_up_with_the_last_error(self):
        def refusing(domain, payload, timeout, flags):
            raise libvirt.libvirtError("Guest agent is not responding")

        agent = self.agent(refusing)
        error = self.assertRaises(guestagent.AgentError, agent.wait_connected, 0.1)
        self.assertIn("did not answer", str(error))
        self.assertIn("not responding", str(error))

    def test_set_time_passes_the_hosts_clock(self):
        agent = self.agent(FakeAgent())
        with mock.patch("time.time", return_value=1700000000.25):
            agent.set_time()
        agent._domain.setTime.assert_called_once_with(
            {"seconds": 1700000000, "nseconds": 250000000}, 0
        )


class TestCloneIdentity(testtools.TestCase):
    """What launch does with a clone's agent, and when it gives up."""

    def set_identity(self, agent, reseeds, hostname="web-2"):
        generation = mock.Mock(agent_reseeds_rng=reseeds)
        spec = launch.CloneSpec("web-2", "u", "/d", hostname=hostname)
        with mock.patch.object(guestagent, "GuestAgent", return_value=agent):
            launch._set_identity(mock.Mock(), generation, spec, 5)

    def test_reseed_then_clock_then_hostname(self):
        agent = mock.Mock()
        agent.wait_connected.return_value = 0.3
        self.set_identity(agent, reseeds=True)
        self.assertEqual(
            ["wait_connected", "reseed_rng", "set_time", "set_hostname"],
            [name for name, _, _ in agent.method_calls],
        )
        agent.set_hostname.assert_called_once_with("web-2")

    def test_no_reseed_for_a_kernel_that_uses_the_genid_and_no_hostname_unasked(self):
        agent = mock.Mock()
        agent.wait_connected.return_value = 0.3
        self.set_identity(agent, reseeds=False, hostname=None)
        self.assertEqual(["wait_connected", "set_time"], [n for n, _, _ in agent.method_calls])

    def test_a_clone_that_needs_a_reseed_does_not_run_without_one(self):
        agent = mock.Mock()
        agent.reseed_rng.side_effect = guestagent.AgentError("perl: not found")
        error = self.assertRaises(launch.LaunchError, self.set_identity, agent, reseeds=True)
        self.assertIn("RNG could not be reseeded", str(error))
        self.assertIn("perl: not found", str(error))
        agent.set_time.assert_not_called()

    def test_a_silent_agent_fails_only_a_clone_that_needs_a_reseed(self):
        agent = mock.Mock()
        agent.wait_connected.side_effect = guestagent.AgentError("did not answer in 5 s")
        self.assertRaises(launch.LaunchError, self.set_identity, agent, reseeds=True)
        logs = self.useFixture(fixtures.FakeLogger(level=logging.ERROR))
        self.set_identity(agent, reseeds=False)
        self.assertIn("keeps its master's clock and hostname: did not answer", logs.output)

    def test_clock_and_hostname_failures_are_logged_and_the_clone_runs_on(self):
        agent = mock.Mock()
        agent.wait_connected.return_value = 0.3
        agent.set_time.side_effect = guestagent.AgentError("hwclock path is not present")
        logs = self.useFixture(fixtures.FakeLogger(level=logging.ERROR))
        self.set_identity(agent, reseeds=False)
        agent.set_hostname.assert_called_once_with("web-2")
        self.assertIn("Clone web-2 keeps its master's clock: hwclock", logs.output)
