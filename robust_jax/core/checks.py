"""Input checks, one set for configs and public functions alike.

Each check names the input, the value and what is allowed, in one line: `name=value is not allowed: rule`.
A config field is named `config.<field>` and fails with `ConfigError` (the command line prints it and exits with
status 2 before anything is written); any other name is a function argument and fails with a plain `ValueError`.
Checks run once, where the input enters: a config when it is loaded, a public function at the top of each call,
never inside loops over examples or steps.
"""

from __future__ import annotations

import numbers
from collections.abc import Iterable

import numpy as np


class ConfigError(ValueError):
    """A config field has a value that is not allowed."""


def fail(name: str, value, allowed: str):
    error = ConfigError if name.startswith("config.") else ValueError
    raise error(f"{name}={value!r} is not allowed: {allowed}")


def check_int(name: str, value, *, minimum: int | None = None, maximum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        fail(name, value, "expected an integer")
    if minimum is not None and value < minimum:
        fail(name, value, f"must be >= {minimum}")
    if maximum is not None and value > maximum:
        fail(name, value, f"must be <= {maximum}")
    return int(value)


def check_float(name: str, value, *, positive: bool = False, non_negative: bool = False,
                below: float | None = None, at_most: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        fail(name, value, "expected a number")
    value = float(value)
    if not np.isfinite(value):
        fail(name, value, "must be finite")
    if positive and value <= 0:
        fail(name, value, "must be > 0")
    if non_negative and value < 0:
        fail(name, value, "must be >= 0")
    if below is not None and value >= below:
        fail(name, value, f"must be < {below}")
    if at_most is not None and value > at_most:
        fail(name, value, f"must be <= {at_most}")
    return value


def check_probability(name: str, value) -> float:
    """A level strictly inside (0, 1): 0 would make every bound trivial, 1 every test reject."""
    value = check_float(name, value, positive=True)
    if value >= 1:
        fail(name, value, "must be in the open interval (0, 1)")
    return value


def check_bool(name: str, value) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        fail(name, value, "expected True or False")
    return bool(value)


def check_choice(name: str, value, allowed: Iterable):
    allowed = list(allowed)
    if value not in allowed:
        fail(name, value, f"must be one of {allowed}")
    return value


def check_divisible(name: str, value: int, divisor: int, what: str) -> int:
    if value % divisor:
        fail(name, value, f"must be divisible by {what} ({divisor})")
    return value


def check_nonempty_unique(name: str, values) -> list:
    values = list(values)
    if not values:
        fail(name, tuple(values), "give at least one value")
    if len(set(values)) != len(values):
        fail(name, tuple(values), "values must not repeat")
    return values


class _Described:
    """Stands for a value too large to print (an array): its repr is a short description."""

    def __init__(self, text: str):
        self.text = text

    def __repr__(self) -> str:
        return f"<{self.text}>"


def check_unit_interval_array(name: str, x) -> np.ndarray:
    """A numeric, finite, non-empty array with values in [0, 1].

    Randomized smoothing adds noise to inputs in [0, 1]; values outside usually mean pre-normalised inputs, and then
    sigma is measured in the wrong units and the radius is wrong. Normalisation belongs inside the model.
    """
    array = np.asarray(x)
    if array.dtype == object or not (np.issubdtype(array.dtype, np.number) or array.dtype == np.bool_):
        fail(name, _Described(f"array of dtype {array.dtype}"), "expected a numeric array with values in [0, 1]")
    if array.size == 0:
        fail(name, _Described(f"empty array of shape {array.shape}"), "must not be empty")
    if not np.all(np.isfinite(array)):
        bad = array[~np.isfinite(array)].ravel()[0]
        fail(name, _Described(f"array containing {bad!r}"), "must be finite")
    low, high = float(array.min()), float(array.max())
    if low < 0 or high > 1:
        fail(name, _Described(f"array with range [{low}, {high}]"),
             "values must be in [0, 1] (normalise inside the model)")
    return array


def check_preset(preset: str | None, presets, default: str = "cpu") -> str:
    """The preset a config file's get_config was asked for (default when empty), or ConfigError listing them."""
    preset = preset or default
    if preset not in presets:
        raise ConfigError(f"preset={preset!r} is not allowed: must be one of {list(presets)}")
    return preset
