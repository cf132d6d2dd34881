"""The clone: extra specs are checked by nova's own validation, loaded
through our nova.api.extra_spec_validators entry point."""

from unittest import mock

from nova import exception
from nova.api.validation.extra_specs import validators
import testtools

from nova_clonedriver.virt import driver


class TestCloneExtraSpecs(testtools.TestCase):
    def setUp(self):
        super().setUp()
        validators.load_validators()

    def test_valid_values_pass(self):
        for name, value in (
            ("clone:enabled", "true"),
            ("clone:enabled", "False"),
            ("clone:prefetch", "none"),
            ("clone:prefetch", "working-set"),
            ("clone:prefetch", "full"),
        ):
            validators.validate(name, value)

    def test_typos_and_bad_values_are_rejected(self):
        for name, value, message in (
            ("clone:enabled", "maybe", "not a valid boolean-like value"),
            ("clone:prefetch", "some", "not one of: none, working-set, full"),
            ("clone:enabeld", "true", "does not appear to be a valid extra spec"),
        ):
            error = self.assertRaises(exception.ValidationError, validators.validate, name, value)
            self.assertIn(message, str(error))


class TestCloneFlavor(testtools.TestCase):
    def setUp(self):
        super().setUp()
        validators.load_validators()

    def test_reads_booleans_as_the_validator_accepts_them(self):
        def flavor(extra_specs):
            return mock.Mock(extra_specs=extra_specs)

        for value in ("true", "True", "on", "yes", "1"):
            validators.validate("clone:enabled", value)
            self.assertTrue(driver.is_clone_flavor(flavor({"clone:enabled": value})), value)
        for value in ("false", "off", "no", "0"):
            validators.validate("clone:enabled", value)
            self.assertFalse(driver.is_clone_flavor(flavor({"clone:enabled": value})), value)
        self.assertFalse(driver.is_clone_flavor(flavor({})))
        self.assertFalse(driver.is_clone_flavor(flavor(None)))
