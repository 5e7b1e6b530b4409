"""Argument checks shared by the smoothing entry points.

Every check runs before any sampling, so a bad call fails in milliseconds with a message that names the argument,
the value and what is allowed, instead of after minutes of Monte Carlo.
"""

from __future__ import annotations

import numbers

import numpy as np


def check_positive_real(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not np.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def check_positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return int(value)


def check_probability(name: str, value) -> float:
    """A level strictly inside (0, 1): 0 would make every bound trivial, 1 every test reject."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 < value < 1:
        raise ValueError(f"{name} must be in the open interval (0, 1), got {value!r}")
    return float(value)


def check_unit_interval_input(name: str, x) -> np.ndarray:
    """Smoothing adds noise to inputs in [0, 1]; values outside usually mean pre-normalised inputs.

    Normalisation belongs inside the model, otherwise sigma is measured in the wrong units and the radius is wrong.
    """
    array = np.asarray(x)
    if array.dtype == object or not (np.issubdtype(array.dtype, np.number) or array.dtype == np.bool_):
        raise ValueError(f"{name} must be a numeric array with values in [0, 1], got dtype {array.dtype}")
    if array.size == 0:
        raise ValueError(f"{name} must not be empty, got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        bad = array[~np.isfinite(array)].ravel()[0]
        raise ValueError(f"{name} must be finite, found {bad!r}")
    low, high = float(array.min()), float(array.max())
    if low < 0 or high > 1:
        raise ValueError(
            f"{name} must have values in [0, 1] (normalise inside the model), got range [{low}, {high}]"
        )
    return array


def check_sampling_arguments(*, sigma, batch_size, num_classes=None, alpha=None, **sample_counts) -> dict:
    """The checks every sampling entry point shares; returns the validated values by name.

    sample_counts are the named sample counts of the call (n, n0, num_samples, ...), each an integer >= 1.
    """
    checked = {"sigma": check_positive_real("sigma", sigma), "batch_size": check_positive_int("batch_size", batch_size)}
    checked.update({name: check_positive_int(name, value) for name, value in sample_counts.items()})
    if alpha is not None:
        checked["alpha"] = check_probability("alpha", alpha)
    checked["num_classes"] = None if num_classes is None else check_positive_int("num_classes", num_classes)
    return checked
