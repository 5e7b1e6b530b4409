"""The Clopper-Pearson lower bound against statsmodels, an independent implementation."""

import numpy as np
import pytest
from statsmodels.stats.proportion import proportion_confint

from robust_jax.smoothing import lower_confidence_bound


@pytest.mark.parametrize("alpha", [0.001, 0.01, 0.05, 0.2])
@pytest.mark.parametrize("n", [1, 2, 10, 100, 1000, 100_000])
def test_bound_equals_statsmodels_one_sided_beta_interval(n, alpha):
    counts = sorted({0, 1, n // 3, n // 2, n - 1, n} & set(range(n + 1)))
    for n_a in counts:
        expected = proportion_confint(n_a, n, alpha=2 * alpha, method="beta")[0]
        expected = 0.0 if np.isnan(expected) else expected
        assert abs(lower_confidence_bound(n_a, n, alpha) - expected) <= 1e-12, (n_a, n, alpha)


def test_bound_at_the_extremes_has_closed_form():
    # P(all n succeed) = p^n, so the one-sided bound at n_a = n solves p^n = alpha.
    assert lower_confidence_bound(50, 50, 0.01) == pytest.approx(0.01 ** (1 / 50), rel=1e-12)
    assert lower_confidence_bound(0, 50, 0.01) == 0.0


def test_bound_lies_below_the_point_estimate_and_tightens_with_n():
    loose = lower_confidence_bound(80, 100, 0.001)
    tight = lower_confidence_bound(80_000, 100_000, 0.001)
    assert loose < tight < 0.8


@pytest.mark.parametrize(
    "arguments, name",
    [((-1, 10, 0.1), "n_a"), ((11, 10, 0.1), "n_a"), ((1.5, 10, 0.1), "n_a"), ((1, 0, 0.1), "n"),
     ((1, 10, 0.0), "alpha"), ((1, 10, 1.0), "alpha")],
)
def test_bad_bound_arguments_raise(arguments, name):
    with pytest.raises(ValueError, match=name):
        lower_confidence_bound(*arguments)
