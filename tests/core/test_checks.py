"""core.checks: every config and argument check names the field (or argument), the value and the rule."""

import numpy as np
import pytest

from robust_jax.core import checks


@pytest.mark.parametrize(
    "call,pattern",
    [
        (lambda: checks.check_int("config.batch_size", 0, minimum=1), r"config\.batch_size=0 is not allowed: must be >= 1"),
        (lambda: checks.check_int("config.steps", 2.5), r"config\.steps=2\.5 .*integer"),
        (lambda: checks.check_int("config.steps", True), r"config\.steps=True .*integer"),
        (lambda: checks.check_float("config.lr", -1.0, positive=True), r"config\.lr=-1\.0 .*> 0"),
        (lambda: checks.check_float("config.lr", float("nan"), positive=True), r"config\.lr=nan .*finite"),
        (lambda: checks.check_float("config.p", 1.0, below=1.0), r"config\.p=1\.0 .*< 1\.0"),
        (lambda: checks.check_choice("config.model", "x", ["a", "b"]), r"config\.model='x' .*\['a', 'b'\]"),
        (lambda: checks.check_divisible("config.batch_size", 12, 8, "the device count"), r"divisible by the device count \(8\)"),
    ],
)
def test_checks_name_field_value_and_rule(call, pattern):
    with pytest.raises(checks.ConfigError, match=pattern):
        call()


def test_argument_checks_raise_value_errors_naming_the_argument():
    """The same helpers check function arguments: a plain ValueError (not a config error) naming the argument."""
    with pytest.raises(ValueError, match=r"^sigma=-0\.5 is not allowed: must be > 0$") as raised:
        checks.check_float("sigma", -0.5, positive=True)
    assert not isinstance(raised.value, checks.ConfigError)
    with pytest.raises(ValueError, match=r"alpha=1\.0 is not allowed: must be in the open interval"):
        checks.check_probability("alpha", 1.0)
    with pytest.raises(ValueError, match=r"x=<array with range \[-0\.5, 1\.0\]> .*normalise inside the model"):
        checks.check_unit_interval_array("x", np.array([-0.5, 1.0]))


def test_checks_accept_good_values():
    assert checks.check_int("config.n", 3, minimum=1, maximum=3) == 3
    assert checks.check_float("config.lr", 1, positive=True) == 1.0
    assert checks.check_choice("config.m", "a", ["a"]) == "a"
