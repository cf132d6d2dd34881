"""Validators for the ``clone:`` flavor extra specs.

Registered through nova's ``nova.api.extra_spec_validators`` entry point, so
``openstack flavor set --property clone:...`` rejects typos and bad values
when the flavor is changed, not when a server is booted with it.
"""

from nova.api.validation.extra_specs import base

ENABLED = "clone:enabled"
PREFETCH = "clone:prefetch"
PREFETCH_CHOICES = ("none", "working-set", "full")

EXTRA_SPEC_VALIDATORS = [
    base.ExtraSpecValidator(
        name=ENABLED,
        description=(
            "Boot servers of this flavor as live clones of the image's "
            "snapshot generation (the image must be a live image made with "
            "clone_live=true). Their RAM and vCPUs must match the master's."
        ),
        value={"type": bool},
    ),
    base.ExtraSpecValidator(
        name=PREFETCH,
        description=(
            "What a host that does not hold the generation fetches up front: "
            "none (pages on first touch), working-set (what the first clone "
            "touched) or full (the whole memory image)."
        ),
        value={"type": str, "enum": list(PREFETCH_CHOICES)},
    ),
]


def register() -> list[base.ExtraSpecValidator]:
    return EXTRA_SPEC_VALIDATORS
