"""The clone: extra specs are checked by nova's own validation, loaded
through our nova.api.extra_spec_validators entry point."""

from nova import exception
from nova.api.validation.extra_specs import validators
import testtools


class TestCloneExtraSpecs(testtools.TestCase):
    def setUp(self):
        super().setUp()
        validators.load_validators()

    def test_valid_values_pass(self):
        for name, value in (("clone:enabled", "true"), ("clone:enabled", "False"),
                            ("clone:prefetch", "none"), ("clone:prefetch", "working-set"),
                            ("clone:prefetch", "full")):
            validators.validate(name, value)

    def test_typos_and_bad_values_are_rejected(self):
        for name, value, message in (
                ("clone:enabled", "maybe", "not a valid boolean-like value"),
                ("clone:prefetch", "some", "not one of: none, working-set, full"),
                ("clone:enabeld", "true", "does not appear to be a valid extra spec")):
            error = self.assertRaises(exception.ValidationError,
                                      validators.validate, name, value)
            self.assertIn(message, str(error))
