"""Config checks that run before any work starts.

Every check raises `ConfigError` with one line that names the field, the value and what is allowed, so the CLI can
print it and exit with status 2 before anything is written to the workdir.
"""

from __future__ import annotations

import numbers
from collections.abc import Iterable


class ConfigError(ValueError):
    """A config field has a value that is not allowed."""


def _fail(field: str, value, allowed: str):
    raise ConfigError(f"config.{field}={value!r} is not allowed: {allowed}")


def check_int(field: str, value, *, minimum: int | None = None, maximum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        _fail(field, value, "expected an integer")
    if minimum is not None and value < minimum:
        _fail(field, value, f"must be >= {minimum}")
    if maximum is not None and value > maximum:
        _fail(field, value, f"must be <= {maximum}")
    return int(value)


def check_float(
    field: str,
    value,
    *,
    positive: bool = False,
    non_negative: bool = False,
    below: float | None = None,
) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        _fail(field, value, "expected a number")
    value = float(value)
    if value != value or value in (float("inf"), float("-inf")):
        _fail(field, value, "must be finite")
    if positive and value <= 0:
        _fail(field, value, "must be > 0")
    if non_negative and value < 0:
        _fail(field, value, "must be >= 0")
    if below is not None and value >= below:
        _fail(field, value, f"must be < {below}")
    return value


def check_choice(field: str, value, allowed: Iterable):
    allowed = list(allowed)
    if value not in allowed:
        _fail(field, value, f"must be one of {allowed}")
    return value


def check_divisible(field: str, value: int, divisor: int, what: str):
    if value % divisor:
        _fail(field, value, f"must be divisible by {what} ({divisor})")
    return value


def check_preset(preset: str | None, presets, default: str = "cpu") -> str:
    """The preset a config file's get_config was asked for (default when empty), or ConfigError listing them."""
    preset = preset or default
    if preset not in presets:
        raise ConfigError(f"preset={preset!r} is not allowed: must be one of {list(presets)}")
    return preset
