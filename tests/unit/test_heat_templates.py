"""The Heat templates in etc/heat are parsed and validated by Heat's own code.

Heat and nova cannot share one Python process: both register an oslo.config
option ``host`` on the global CONF (``DuplicateOptError``), and importing
nova selects oslo.service's eventlet backend where heat needs threading.
stestr imports every test module in every worker, so this module imports
no heat: it runs this file as a child process (``python -m``) that, for
each case, parses the template with ``heat.common.template_format.parse``,
builds a ``heat.engine.template.Template`` and ``tmpl.validate()``s it,
then builds a ``heat.engine.stack.Stack`` with heat's test context
(``heat.tests.utils.dummy_context``) and runs ``stack.validate()``, as
heat's own unit tests do. Groups validate their member ``OS::Nova::Server``
in a nested stack, but without value constraints; so the child also
validates, strictly, the stack of members each group would create (what
heat checks when it creates them). The child prints what heat made of each
case as JSON; the tests assert on that.

Only the calls that would reach a cloud are faked in the child: glance's
``get_image`` and nova's ``get_flavor`` (the server's image/flavor check),
the image, flavor and network custom constraints (stubbed as heat's
``HeatTestCase.stub_*Constraint_validate`` do), nova's maximum API
microversion (``allocate_network: none`` needs 2.37) and nova's absolute
limits (checked when a server has metadata).
"""

from collections.abc import Callable
import functools
import json
import os
import subprocess
import sys
from typing import Any

import testtools

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HEAT_DIR = os.path.join(REPO, "etc", "heat")
CLUSTER = "clone-cluster.yaml"
AUTOSCALING = "clone-autoscaling.yaml"
FORK = "clone-fork.yaml"
MASTER = "0b9a6a8e-7e3f-4a51-9f0c-2d6e1c3b4a5f"

# The parameters each template needs; every template under etc/heat has an
# entry (test_every_template_is_covered).
REQUIRED = {
    CLUSTER: {"live_image": "web-live", "clone_flavor": "web-clone"},
    AUTOSCALING: {"live_image": "web-live", "clone_flavor": "web-clone"},
    FORK: {"master": MASTER, "image": "web", "clone_flavor": "web-clone"},
}
BASE_CASE = {CLUSTER: "cluster", AUTOSCALING: "autoscaling", FORK: "fork"}


def _case(
    template: str, drop: str | None = None, mutate: dict[str, Any] | None = None, **params: str
) -> dict[str, Any]:
    """A validation case: the template's required parameters, overridden by
    ``params`` (strings, as ``--parameter`` passes them), without ``drop``;
    ``mutate`` adds properties to the template's OS::Nova::Server."""
    values = {**REQUIRED[template], **params}
    if drop:
        del values[drop]
    return {"template": template, "params": values, "mutate": mutate or {}}


CASES = {
    "cluster": _case(CLUSTER),
    "cluster-network": _case(
        CLUSTER, count="12", network="private", name_prefix="web", security_groups="web,ssh"
    ),
    "cluster-empty": _case(CLUSTER, count="0"),
    "cluster-negative-count": _case(CLUSTER, count="-1"),
    "cluster-no-image": _case(CLUSTER, drop="live_image"),
    "cluster-bad-prefix": _case(CLUSTER, name_prefix="web clones"),
    "autoscaling": _case(AUTOSCALING),
    "autoscaling-step": _case(
        AUTOSCALING,
        step="3",
        network="private",
        min_size="0",
        max_size="30",
        desired_capacity="6",
        security_groups="web,ssh",
    ),
    "autoscaling-min-above-max": _case(
        AUTOSCALING, min_size="5", max_size="2", desired_capacity="3"
    ),
    "autoscaling-desired-above-max": _case(AUTOSCALING, desired_capacity="9"),
    "autoscaling-zero-step": _case(AUTOSCALING, step="0"),
    "fork": _case(FORK),
    "fork-zone-network": _case(
        FORK, availability_zone="nova:node-1", network="private", security_groups="web,ssh"
    ),
    "fork-master-by-name": _case(FORK, master="web"),
    "fork-no-master": _case(FORK, drop="master"),
    "fork-negative-count": _case(FORK, count="-1"),
}
for _name in REQUIRED:
    CASES[f"{_name}-unknown-property"] = _case(_name, mutate={"flavour": "web-clone"})
    CASES[f"{_name}-bad-allocate-network"] = _case(
        _name, mutate={"networks": [{"allocate_network": "nothing"}]}
    )


def _run_child(cases: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Validate ``cases`` in a child process (heat cannot be imported next
    to nova, see the module docstring) and return its JSON answer."""
    proc = subprocess.run(
        [sys.executable, "-m", "tests.unit.test_heat_templates"],
        input=json.dumps(cases),
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=600,
        check=False,
    )
    if proc.returncode != 0:
        raise AssertionError(
            f"heat child process failed ({proc.returncode}):\n{proc.stderr[-6000:]}"
        )
    return json.loads(proc.stdout)


@functools.cache
def _results() -> dict[str, dict[str, Any]]:
    """All cases in one child process per test worker: importing heat takes
    seconds, validating a case milliseconds."""
    return _run_child(CASES)


class HeatTemplateTestCase(testtools.TestCase):
    def result(self, case: str) -> dict[str, Any]:
        """Heat's answer for ``case``; the case must be defined in CASES."""
        return _results()[case]

    def valid(self, case: str) -> dict[str, Any]:
        """Heat's answer for a case that must validate, failing with heat's
        own message if it did not."""
        result = self.result(case)
        self.assertIsNone(result["error"], f"{case}: {result['error']}")
        return result

    def invalid(self, case: str, error_type: str, *fragments: str) -> str:
        """Heat's error message for a case that must fail validation."""
        error = self.result(case)["error"]
        self.assertIsNotNone(error, f"{case} passed heat's validation")
        self.assertEqual(error_type, error["type"], error["message"])
        for fragment in fragments:
            self.assertIn(fragment, error["message"])
        return error["message"]

    def member(self, result: dict[str, Any]) -> dict[str, Any]:
        """The member server of the template's group: all members must be
        the same server but for their names."""
        kinds = {
            json.dumps(
                {**m, "properties": {k: v for k, v in m["properties"].items() if k != "name"}},
                sort_keys=True,
            )
            for m in result["members"].values()
        }
        self.assertEqual(1, len(kinds), result["members"])
        member = json.loads(kinds.pop())
        self.assertEqual("OS::Nova::Server", member["type"])
        return member


class TestEveryTemplate(HeatTemplateTestCase):
    def test_every_template_is_covered(self):
        on_disk = {f for f in os.listdir(HEAT_DIR) if f.endswith((".yaml", ".yml"))}
        self.assertEqual(set(REQUIRED), on_disk)

    def test_named_release_with_descriptions(self):
        for template in REQUIRED:
            result = self.valid(BASE_CASE[template])
            self.assertEqual(["heat_template_version", "wallaby"], result["version"])
            self.assertGreater(len(result["description"]), 40, template)
            for name, param in result["parameters"].items():
                self.assertTrue(param["description"], f"{template}: {name}")
            for name, output in result["outputs"].items():
                self.assertTrue(output, f"{template}: output {name}")

    def test_nested_server_is_validated_with_the_given_image_and_flavor(self):
        for case, image in (("cluster", "web-live"), ("autoscaling", "web-live"), ("fork", "web")):
            result = self.valid(case)
            self.assertEqual([image], result["looked_up"]["images"], case)
            self.assertEqual(["web-clone"], result["looked_up"]["flavors"], case)

    def test_no_network_is_allocate_network_none(self):
        for case in ("cluster", "autoscaling", "fork"):
            member = self.member(self.valid(case))
            self.assertEqual(
                [{"allocate_network": "none"}], member["properties"]["networks"], case
            )

    def test_a_network_gives_one_port_on_it(self):
        for case in ("cluster-network", "autoscaling-step", "fork-zone-network"):
            result = self.valid(case)
            self.assertEqual(
                [{"network": "private"}], self.member(result)["properties"]["networks"], case
            )
            self.assertEqual(["private"], result["looked_up"]["networks"], case)

    def test_security_groups_are_the_ports_and_only_with_a_network(self):
        for case in ("cluster-network", "autoscaling-step", "fork-zone-network"):
            member = self.member(self.valid(case))
            self.assertEqual(["web", "ssh"], member["properties"]["security_groups"], case)
        for case in ("cluster", "autoscaling", "fork"):
            member = self.member(self.valid(case))
            self.assertEqual([], member["properties"]["security_groups"], case)

    def test_unknown_server_property_is_rejected(self):
        for template in REQUIRED:
            self.invalid(
                f"{template}-unknown-property", "StackValidationFailed", "Unknown Property flavour"
            )

    def test_bad_allocate_network_value_is_rejected(self):
        for template in REQUIRED:
            self.invalid(
                f"{template}-bad-allocate-network",
                "StackValidationFailed",
                '"nothing" is not an allowed value',
            )


class TestCloneCluster(HeatTemplateTestCase):
    def test_default_cluster_is_four_clones_of_the_live_image(self):
        result = self.valid("cluster")
        self.assertEqual(
            {"clones": "OS::Heat::ResourceGroup"},
            {n: r["type"] for n, r in result["resources"].items()},
        )
        self.assertEqual(4, result["resources"]["clones"]["properties"]["count"])
        self.assertEqual(["0", "1", "2", "3"], sorted(result["members"]))
        for index, member in result["members"].items():
            self.assertEqual(
                {
                    "name": f"clone-{index}",
                    "image": "web-live",
                    "flavor": "web-clone",
                    "networks": [{"allocate_network": "none"}],
                    "security_groups": [],
                },
                member["properties"],
            )
        self.assertEqual({"server_ids", "server_names"}, set(result["outputs"]))

    def test_count_and_name_prefix(self):
        result = self.valid("cluster-network")
        self.assertEqual(12, len(result["members"]))
        self.assertEqual("web-11", result["members"]["11"]["properties"]["name"])

    def test_count_zero_is_an_empty_cluster(self):
        self.assertEqual({}, self.valid("cluster-empty")["members"])

    def test_negative_count_violates_the_constraint(self):
        self.invalid(
            "cluster-negative-count",
            "StackValidationFailed",
            "count",
            "A cluster cannot have a negative number of clones",
        )

    def test_live_image_is_required(self):
        self.invalid("cluster-no-image", "UserParameterMissing", "live_image")

    def test_name_prefix_must_be_a_host_name(self):
        self.invalid(
            "cluster-bad-prefix",
            "StackValidationFailed",
            "name_prefix",
            "Letters, digits, dots and dashes",
        )


class TestCloneAutoscaling(HeatTemplateTestCase):
    def test_group_and_two_policies(self):
        result = self.valid("autoscaling")
        self.assertEqual(
            {
                "group": "OS::Heat::AutoScalingGroup",
                "scale_up": "OS::Heat::ScalingPolicy",
                "scale_down": "OS::Heat::ScalingPolicy",
            },
            {n: r["type"] for n, r in result["resources"].items()},
        )
        group = result["resources"]["group"]["properties"]
        self.assertEqual(
            (1, 8, 2, 60),
            (group["min_size"], group["max_size"], group["desired_capacity"], group["cooldown"]),
        )
        self.assertEqual(2, len(result["members"]))
        self.assertEqual(
            {
                "image": "web-live",
                "flavor": "web-clone",
                "networks": [{"allocate_network": "none"}],
                "security_groups": [],
            },
            self.member(result)["properties"],
        )

    def test_policies_scale_the_group_by_one_step_each_way(self):
        for case, step in (("autoscaling", 1), ("autoscaling-step", 3)):
            resources = self.valid(case)["resources"]
            for policy, adjustment in (("scale_up", step), ("scale_down", -step)):
                properties = resources[policy]["properties"]
                self.assertEqual("group", properties["auto_scaling_group_id"])
                self.assertEqual("change_in_capacity", properties["adjustment_type"])
                self.assertEqual(adjustment, properties["scaling_adjustment"], case)
        self.assertEqual(6, len(self.valid("autoscaling-step")["members"]))

    def test_outputs_signal_urls(self):
        outputs = self.valid("autoscaling")["outputs"]
        for name in (
            "scale_up_url",
            "scale_down_url",
            "scale_up_signal_url",
            "scale_down_signal_url",
            "current_size",
            "server_ids",
            "server_names",
        ):
            self.assertIn(name, outputs)

    def test_min_size_above_max_size_is_caught_by_the_group(self):
        self.invalid(
            "autoscaling-min-above-max",
            "StackValidationFailed",
            "MinSize can not be greater than MaxSize",
        )

    def test_desired_capacity_outside_min_max_is_caught_by_the_group(self):
        self.invalid(
            "autoscaling-desired-above-max",
            "StackValidationFailed",
            "DesiredCapacity must be between MinSize and MaxSize",
        )

    def test_zero_step_violates_the_constraint(self):
        self.invalid(
            "autoscaling-zero-step",
            "StackValidationFailed",
            "step",
            "A scaling step is at least one clone",
        )


class TestCloneFork(HeatTemplateTestCase):
    def test_forks_carry_clone_of_the_master(self):
        result = self.valid("fork")
        self.assertEqual(["0", "1", "2", "3"], sorted(result["members"]))
        for index, member in result["members"].items():
            self.assertEqual(
                {
                    "name": f"fork-{index}",
                    "image": "web",
                    "flavor": "web-clone",
                    "metadata": {"clone_of": MASTER},
                    "networks": [{"allocate_network": "none"}],
                    "security_groups": [],
                },
                member["properties"],
            )
        self.assertIn("master", result["outputs"])

    def test_availability_zone_only_when_given(self):
        member = self.member(self.valid("fork-zone-network"))
        self.assertEqual("nova:node-1", member["properties"]["availability_zone"])

    def test_master_must_be_a_uuid(self):
        self.invalid(
            "fork-master-by-name",
            "StackValidationFailed",
            "master",
            "The master must be given by its server UUID",
        )

    def test_master_is_required(self):
        self.invalid("fork-no-master", "UserParameterMissing", "master")

    def test_negative_count_violates_the_constraint(self):
        self.invalid(
            "fork-negative-count",
            "StackValidationFailed",
            "A group cannot have a negative number of forks",
        )


# -- the child process: heat only ---------------------------------------------


def _add_server_properties(node: Any, extra: dict[str, Any]) -> int:
    """Add ``extra`` to every OS::Nova::Server definition in a parsed
    template (group members are nested in the group's properties); returns
    how many it changed, so a mutation that misses fails the case."""
    changed = 0
    if isinstance(node, dict):
        if node.get("type") == "OS::Nova::Server":
            node.setdefault("properties", {}).update(extra)
            changed += 1
        for value in node.values():
            changed += _add_server_properties(value, extra)
    elif isinstance(node, list):
        for value in node:
            changed += _add_server_properties(value, extra)
    return changed


def _validate_case(case: dict[str, Any], looked_up: dict[str, list[str]]) -> dict[str, Any]:
    """Parse, build and validate one case with heat; describe the result."""
    from heat.common import template_format
    from heat.engine import environment
    from heat.engine import stack
    from heat.engine import template
    from heat.tests import utils

    with open(os.path.join(HEAT_DIR, case["template"])) as f:
        parsed = template_format.parse(f.read())
    if case["mutate"] and not _add_server_properties(parsed, case["mutate"]):
        raise AssertionError(f"no OS::Nova::Server in {case['template']}")
    result: dict[str, Any] = {"error": None, "members": {}}
    try:
        tmpl = template.Template(
            parsed, env=environment.Environment({"parameters": case["params"]})
        )
        tmpl.validate()
        result["version"] = list(tmpl.version)
        result["description"] = parsed.get("description", "")
        result["parameters"] = {
            name: {"description": schema.description, "default": schema.default}
            for name, schema in tmpl.param_schemata().items()
        }
        result["outputs"] = {
            name: out.get("description", "") for name, out in parsed.get("outputs", {}).items()
        }
        stk = stack.Stack(utils.dummy_context(), "clones", tmpl)
        stk.validate()
        result["resources"] = {
            name: {"type": res.type(), "properties": dict(res.properties)}
            for name, res in stk.resources.items()
        }
        for res in stk.resources.values():
            if res.type() in ("OS::Heat::ResourceGroup", "OS::Heat::AutoScalingGroup"):
                # stack.validate() checks a group's member without value
                # constraints (heat validates nested stacks non-strictly);
                # heat checks them when it creates the member stack, so do
                # that here: the stack of members the group would create.
                child = res.child_template()
                stack.Stack(utils.dummy_context(), f"clones-{res.name}", child).validate()
                result["members"] = {
                    name: {"type": d["type"], "properties": d.get("properties", {})}
                    for name, d in child.t.get("resources", {}).items()
                }
    except Exception as exc:
        result["error"] = {"type": type(exc).__name__, "message": str(exc)}
    result["looked_up"] = {k: sorted(set(v)) for k, v in looked_up.items()}
    return result


def _fake_cloud() -> tuple[list[Any], dict[str, list[str]]]:
    """Patches for the client calls that would reach a cloud, and the image
    and flavor names the servers' validation looked up."""
    from unittest import mock

    from heat.engine.clients.os import glance
    from heat.engine.clients.os import nova
    from heat.engine.clients.os.neutron import neutron_constraints

    looked_up: dict[str, list[str]] = {"images": [], "flavors": [], "networks": []}

    def lookup(kind: str, **attrs: Any) -> Callable[[Any, str], Any]:
        def get(_plugin: Any, name: str) -> Any:
            looked_up[kind].append(name)
            return mock.Mock(**attrs)

        return get

    def check(kind: str) -> Callable[..., bool]:
        def validate(_constraint: Any, value: str, *args: Any, **kwargs: Any) -> bool:
            looked_up[kind].append(value)
            return True

        return validate

    # Custom constraints on the server's properties, stubbed as heat's
    # HeatTestCase.stub_*Constraint_validate do.
    constraints = (
        (glance.ImageConstraint, "images"),
        (nova.FlavorConstraint, "flavors"),
        (neutron_constraints.NetworkConstraint, "networks"),
    )
    patches = [
        mock.patch.object(cls, "validate", autospec=True, side_effect=check(kind))
        for cls, kind in constraints
    ]
    patches += [
        mock.patch.object(
            glance.GlanceClientPlugin,
            "get_image",
            autospec=True,
            side_effect=lookup("images", status="active", min_ram=0, min_disk=0),
        ),
        mock.patch.object(
            nova.NovaClientPlugin,
            "get_flavor",
            autospec=True,
            side_effect=lookup("flavors", ram=1024, disk=1),
        ),
        mock.patch.object(nova.NovaClientPlugin, "get_max_microversion", return_value="2.96"),
        mock.patch.object(
            nova.NovaClientPlugin,
            "absolute_limits",
            return_value={"maxServerMeta": 128, "maxPersonality": 5, "maxPersonalitySize": 10240},
        ),
    ]
    return patches, looked_up


def _child_main() -> None:
    """Validate the cases read from stdin; print the results as JSON. Heat
    logs to stderr; stdout carries only the JSON."""
    from oslo_service import backend

    backend.init_backend(backend.BackendType.THREADING)  # as heat.tests.common does
    from heat.common import messaging

    messaging.setup("fake://", optional=True)  # resources build RPC clients

    cases = json.load(sys.stdin)
    out, sys.stdout = sys.stdout, sys.stderr
    results = {}
    for name, case in cases.items():
        patches, looked_up = _fake_cloud()
        for patch in patches:
            patch.start()
        try:
            results[name] = _validate_case(case, looked_up)
        finally:
            for patch in patches:
                patch.stop()
    out.write(json.dumps(results, default=str))


if __name__ == "__main__":
    _child_main()
