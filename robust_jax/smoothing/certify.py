"""PREDICT and CERTIFY of Cohen, Rosenfeld & Kolter (2019) for Gaussian randomized smoothing.

The smoothed classifier is g(x) = argmax_c P(f(x + delta) = c), delta ~ N(0, sigma^2 I), estimated by Monte Carlo
(see sampling.py for how noise is drawn and counted on device).

Key layout of certify: fold_in(key, 0) draws the n0 selection samples and fold_in(key, 1) the n estimation samples,
so the class choice and the probability estimate use independent noise, as the guarantee requires.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh
from scipy import stats

from robust_jax.core import checks
from robust_jax.smoothing.sampling import (
    _sample_counts_unchecked,
    as_noise_dtype,
    check_sampling_arguments,
    sample_counts,
)

__all__ = ["ABSTAIN", "certify", "lower_confidence_bound", "predict", "sample_counts"]

ABSTAIN = -1

_SELECTION_STREAM = 0
_ESTIMATION_STREAM = 1


def lower_confidence_bound(n_a: int, n: int, alpha: float) -> float:
    """One-sided (1 - alpha) Clopper-Pearson lower bound on a binomial proportion from n_a successes in n trials.

    Equals the alpha quantile of Beta(n_a, n - n_a + 1); by convention 0 when n_a = 0 (the Beta is undefined there).
    """
    n = checks.check_int("n", n, minimum=1)
    checks.check_int("n_a", n_a, minimum=0, maximum=n)
    alpha = checks.check_probability("alpha", alpha)
    if n_a == 0:
        return 0.0
    return float(stats.beta.ppf(alpha, n_a, n - n_a + 1))


def _top_two(counts: np.ndarray) -> tuple[int, int, int]:
    """(top class, its count, runner-up count); ties go to the lower class index."""
    order = np.argsort(-counts, kind="stable")
    runner_up = int(counts[order[1]]) if counts.size > 1 else 0
    return int(order[0]), int(counts[order[0]]), runner_up


def predict(
    apply_fn,
    params,
    x,
    *,
    sigma: float,
    n: int,
    alpha: float,
    batch_size: int,
    key: jax.Array,
    num_classes: int | None = None,
    mesh: Mesh | None = None,
) -> int:
    """The smoothed prediction at x, or ABSTAIN (-1).

    Returns the top class of n noisy samples when a two-sided binomial test of its count n_A against the runner-up's
    n_B (n_A out of n_A + n_B at p = 1/2) rejects at level alpha; then the returned class differs from g(x) with
    probability at most alpha.
    """
    args = check_sampling_arguments(sigma=sigma, n=n, alpha=alpha, batch_size=batch_size, num_classes=num_classes)
    sigma, n, alpha, batch_size, num_classes = (args[k] for k in ("sigma", "n", "alpha", "batch_size", "num_classes"))
    x_host = as_noise_dtype(checks.check_unit_interval_array("x", x))

    counts = _sample_counts_unchecked(apply_fn, params, x_host, sigma, n, batch_size, key, num_classes, mesh)
    top_class, count_a, count_b = _top_two(counts)
    p_value = stats.binomtest(count_a, count_a + count_b, 0.5, alternative="two-sided").pvalue
    return top_class if p_value <= alpha else ABSTAIN


def certify(
    apply_fn,
    params,
    x,
    *,
    sigma: float,
    n0: int,
    n: int,
    alpha: float,
    batch_size: int,
    key: jax.Array,
    num_classes: int | None = None,
    mesh: Mesh | None = None,
) -> tuple[int, float]:
    """(class, certified L2 radius) of the smoothed classifier at x, or (ABSTAIN, 0.0).

    With probability at least 1 - alpha over the sampling, g(x + delta) = class for every ||delta||_2 < radius.
    """
    args = check_sampling_arguments(sigma=sigma, n0=n0, n=n, alpha=alpha, batch_size=batch_size,
                                    num_classes=num_classes)
    x_host = as_noise_dtype(checks.check_unit_interval_array("x", x))
    return certify_unchecked(apply_fn, params, x_host, key=key, mesh=mesh, **args)


def certify_unchecked(apply_fn, params, x_host: np.ndarray, *, sigma: float, n0: int, n: int, alpha: float,
                      batch_size: int, key: jax.Array, num_classes: int | None, mesh: Mesh | None
                      ) -> tuple[int, float]:
    """`certify` on arguments already checked (`check_sampling_arguments`) and an input already in the noise dtype:
    what loops over many inputs call, after checking their settings once."""

    def counts_from(stream: int, num_samples: int) -> np.ndarray:
        return _sample_counts_unchecked(
            apply_fn, params, x_host, sigma, num_samples, batch_size,
            jax.random.fold_in(key, stream), num_classes, mesh,
        )

    candidate = int(np.argmax(counts_from(_SELECTION_STREAM, n0)))
    count_a = int(counts_from(_ESTIMATION_STREAM, n)[candidate])
    p_a_lower = lower_confidence_bound(count_a, n, alpha)
    if p_a_lower <= 0.5:
        return ABSTAIN, 0.0
    return candidate, sigma * float(stats.norm.ppf(p_a_lower))
