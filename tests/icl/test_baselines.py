"""Baseline estimators against numpy references and exact properties."""

import jax
import numpy as np
import pytest

from robust_jax.icl import baselines


def noiseless_prompts(rng, batch, n_context, dim):
    xs = rng.normal(size=(batch, n_context, dim))
    w = rng.normal(size=(batch, dim))
    x_query = rng.normal(size=(batch, dim))
    return xs, np.einsum("bmd,bd->bm", xs, w), x_query, np.einsum("bd,bd->b", x_query, w)


@pytest.mark.parametrize("n_context", [5, 12])
def test_least_squares_is_exact_on_noiseless_prompts_with_at_least_d_examples(n_context):
    xs, ys, x_query, targets = noiseless_prompts(np.random.default_rng(n_context), 32, n_context, 5)
    with jax.enable_x64(True):
        np.testing.assert_allclose(jax.jit(baselines.least_squares)(xs, ys, x_query), targets, rtol=1e-8, atol=1e-8)


def test_least_squares_with_fewer_examples_than_dimensions_is_the_minimum_norm_interpolant():
    rng = np.random.default_rng(1)
    xs, ys, x_query, _ = noiseless_prompts(rng, 8, 3, 6)
    with jax.enable_x64(True):
        got = np.asarray(baselines.least_squares(xs, ys, x_query))
    want = [np.linalg.lstsq(xs[b], ys[b], rcond=None)[0] @ x_query[b] for b in range(8)]
    np.testing.assert_allclose(got, want, rtol=1e-8, atol=1e-10)


def test_least_squares_is_invariant_to_covariate_scale():
    xs, ys, x_query, _ = noiseless_prompts(np.random.default_rng(2), 8, 10, 4)
    ys = ys + 0.1 * np.random.default_rng(3).normal(size=ys.shape)
    with jax.enable_x64(True):
        plain = np.asarray(baselines.least_squares(xs, ys, x_query))
        scaled = np.asarray(baselines.least_squares(3.0 * xs, ys, 3.0 * x_query))
    np.testing.assert_allclose(scaled, plain, rtol=1e-8)


@pytest.mark.parametrize("n_context", [3, 10])
def test_ridge_matches_closed_form(n_context):
    rng = np.random.default_rng(n_context)
    xs, ys, x_query, _ = noiseless_prompts(rng, 6, n_context, 4)
    ys = ys + 0.5 * rng.normal(size=ys.shape)
    regularization = 0.7
    with jax.enable_x64(True):
        got = np.asarray(jax.jit(baselines.ridge)(xs, ys, x_query, regularization))
    want = []
    for b in range(6):
        # Dual form (K + λI)⁻¹ y, an independent route to the same estimator.
        dual = np.linalg.solve(xs[b] @ xs[b].T + regularization * np.eye(n_context), ys[b])
        want.append(x_query[b] @ xs[b].T @ dual)
    np.testing.assert_allclose(got, want, rtol=1e-8)


def test_averaging_and_one_step_gradient_descent_match_numpy():
    xs, ys, x_query, _ = noiseless_prompts(np.random.default_rng(4), 5, 7, 3)
    with jax.enable_x64(True):
        averaged = np.asarray(baselines.averaging(xs, ys, x_query))
        stepped = np.asarray(jax.jit(baselines.one_step_gradient_descent)(xs, ys, x_query, 0.3))
    want = [np.mean(ys[b][:, None] * xs[b], axis=0) @ x_query[b] for b in range(5)]
    np.testing.assert_allclose(averaged, want, rtol=1e-10)
    np.testing.assert_allclose(stepped, 0.3 * np.asarray(want), rtol=1e-10)


@pytest.mark.parametrize("n_context", [2, 3, 9])
def test_nearest_neighbours_match_brute_force(n_context):
    xs, ys, x_query, _ = noiseless_prompts(np.random.default_rng(n_context), 10, n_context, 3)
    got = np.asarray(jax.jit(baselines.nearest_neighbours)(xs, ys, x_query))
    want = []
    for b in range(10):
        order = np.argsort(np.linalg.norm(xs[b] - x_query[b], axis=1))
        want.append(ys[b][order[:3]].mean())
    np.testing.assert_allclose(got, want, rtol=1e-5)


def test_zero_estimator():
    xs, ys, x_query, _ = noiseless_prompts(np.random.default_rng(5), 4, 3, 2)
    np.testing.assert_array_equal(baselines.zero_estimator(xs, ys, x_query), np.zeros(4))


def test_tuned_step_size_beats_every_grid_point_and_matches_the_isotropic_theory():
    """Line search result is the grid minimum; for Λ = I its population value is N/(N + 1 + d), the scale of Γ⁻¹."""
    rng = np.random.default_rng(6)
    dim, n_context = 4, 10
    xs, ys, x_query, targets = noiseless_prompts(rng, 20_000, n_context, dim)
    with jax.enable_x64(True):
        best = float(baselines.tune_gradient_descent_step_size(xs, ys, x_query, targets))
        unit_step = np.asarray(baselines.averaging(xs, ys, x_query))
    grid = np.linspace(0.0, 2.0, 2001)
    grid_errors = [np.mean((step * unit_step - targets) ** 2) for step in grid]
    assert abs(best - grid[int(np.argmin(grid_errors))]) <= 1e-3
    assert np.mean((best * unit_step - targets) ** 2) <= min(grid_errors)
    assert best == pytest.approx(n_context / (n_context + 1 + dim), rel=0.05)


def test_ridge_rejects_non_positive_regularization():
    xs, ys, x_query, _ = noiseless_prompts(np.random.default_rng(7), 2, 3, 2)
    with pytest.raises(ValueError, match="regularization"):
        baselines.ridge(xs, ys, x_query, 0.0)
    with pytest.raises(ValueError, match="n_neighbours"):
        baselines.nearest_neighbours(xs, ys, x_query, n_neighbours=0)
