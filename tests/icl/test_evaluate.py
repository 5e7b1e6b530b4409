"""Normalised squared error and bootstrap intervals."""

import numpy as np
import pytest

from robust_jax.icl import evaluate


def test_normalized_squared_error_of_the_zero_estimator_is_one_on_average():
    rng = np.random.default_rng(0)
    dim, batch = 20, 5000
    w, x_query = rng.normal(size=(batch, dim)), rng.normal(size=(batch, dim))
    errors = np.asarray(evaluate.normalized_squared_error(np.zeros(batch), w, x_query), np.float64)
    np.testing.assert_allclose(errors, np.sum(w * x_query, 1) ** 2 / dim, rtol=1e-4, atol=1e-6)
    # <w, x_q> is a sum of d unit-variance products, so its square over d has mean 1 and variance ≈ 2 + 6/d.
    assert abs(errors.mean() - 1.0) < 5 * np.sqrt((2 + 6 / dim) / batch)


def test_bootstrap_interval_covers_the_mean_with_the_normal_width_and_is_reproducible():
    values = np.random.default_rng(1).normal(loc=3.0, scale=2.0, size=4000)
    low, high = evaluate.bootstrap_interval(values, confidence=0.9, n_resamples=2000, seed=7)
    assert low < values.mean() < high
    normal_half_width = 1.6449 * values.std() / np.sqrt(values.size)
    assert (high - low) / 2 == pytest.approx(normal_half_width, rel=0.1)
    assert (low, high) == evaluate.bootstrap_interval(values, confidence=0.9, n_resamples=2000, seed=7)
    summary = evaluate.summarize_errors(values, n_resamples=200)
    assert summary["low"] < summary["mean"] < summary["high"]


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"values": np.ones((2, 2))}, "values"),
        ({"values": np.array([1.0, np.nan])}, "values"),
        ({"values": np.ones(3), "confidence": 1.0}, "confidence"),
        ({"values": np.ones(3), "n_resamples": 0}, "n_resamples"),
    ],
)
def test_bootstrap_rejects_bad_input(kwargs, field):
    with pytest.raises(ValueError, match=field):
        evaluate.bootstrap_interval(**kwargs)
