"""Garg et al.'s metric, normalised squared error, and percentile-bootstrap intervals for its mean."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from robust_jax.core import checks


def normalized_squared_error(predictions_B, w_BxD, x_query_BxD) -> jax.Array:
    """(ŷ − <w, x_q>)² / d per prompt: the zero estimator scores 1 in expectation when E<w, x_q>² = d."""
    targets_B = jnp.einsum("bd,bd->b", w_BxD, x_query_BxD)
    return (predictions_B - targets_B) ** 2 / w_BxD.shape[-1]


def bootstrap_interval(values, confidence: float = 0.9, n_resamples: int = 1000, seed: int = 0) -> tuple[float, float]:
    """Percentile-bootstrap interval for the mean of `values` (1-D), reproducible through `seed`."""
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 1 or values.size < 1:
        raise ValueError(f"values must be a non-empty 1-D array, got shape {values.shape}")
    if not np.all(np.isfinite(values)):
        raise ValueError("values must be finite")
    if not (0.0 < confidence < 1.0):
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    checks.check_int("n_resamples", n_resamples, minimum=1)
    rng = np.random.default_rng(seed)
    resampled_means = np.empty(n_resamples)
    # Chunks keep the index array small for large value counts.
    chunk = max(1, min(n_resamples, 2**22 // values.size))
    for start in range(0, n_resamples, chunk):
        stop = min(start + chunk, n_resamples)
        indices = rng.integers(0, values.size, size=(stop - start, values.size))
        resampled_means[start:stop] = values[indices].mean(axis=1)
    tail = 0.5 * (1.0 - confidence)
    low, high = np.quantile(resampled_means, [tail, 1.0 - tail])
    return float(low), float(high)


def summarize_errors(values, confidence: float = 0.9, n_resamples: int = 1000, seed: int = 0) -> dict:
    """{'mean', 'low', 'high'} of per-prompt errors, the interval from `bootstrap_interval`."""
    low, high = bootstrap_interval(values, confidence, n_resamples, seed)
    mean = float(np.mean(np.asarray(values, dtype=np.float64)))
    return {"mean": mean, "low": low, "high": high}
