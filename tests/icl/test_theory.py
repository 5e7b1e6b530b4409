"""Closed-form ZFB theory against hand formulas, Monte Carlo estimates and gradients of the sampled loss."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from robust_jax.icl import lsa, tasks, theory


def random_spd(rng: np.random.Generator, dim: int) -> np.ndarray:
    """A well-conditioned, clearly non-isotropic covariance."""
    basis, _ = np.linalg.qr(rng.normal(size=(dim, dim)))
    return basis @ np.diag(np.linspace(0.3, 2.5, dim)) @ basis.T


# The covariance is a traced argument so that one compilation serves every covariance of the same shape.
predict_batch = jax.jit(
    jax.vmap(theory.predict_at_minimum, in_axes=(None, None, 0, 0, 0)), static_argnums=1
)


def test_gamma_matches_hand_formula_for_a_diagonal_covariance():
    cov = np.diag([1.0, 2.0, 3.0])
    n_context = 5
    expected = np.diag([1.2 * 1.0 + 6 / 5, 1.2 * 2.0 + 6 / 5, 1.2 * 3.0 + 6 / 5])
    np.testing.assert_allclose(theory.gamma(cov, n_context), expected, rtol=1e-6)


def test_global_minimum_product_is_gamma_inverse_and_factors_are_balanced():
    cov = random_spd(np.random.default_rng(0), 4)
    with jax.enable_x64(True):
        w_kq, w_pv = theory.global_minimum(cov, 7)
        gamma_inv = np.linalg.inv(np.asarray(theory.gamma(cov, 7)))
        np.testing.assert_allclose(w_pv[4, 4] * w_kq[:4, :4], gamma_inv, rtol=1e-10)
        assert float(w_pv[4, 4]) ** 2 == pytest.approx(float(jnp.sum(w_kq**2)), rel=1e-10)
        np.testing.assert_array_equal(w_kq[4, :], 0.0)
        np.testing.assert_array_equal(w_kq[:, 4], 0.0)
        np.testing.assert_array_equal(w_pv.at[4, 4].set(0.0), 0.0)


def test_expected_test_error_isotropic_noiseless_hand_formula():
    # Λ = I, M = N: Γ = (N+1+d)/N I and the error collapses to d(d+1)/(N+1+d).
    dim, n_context = 5, 9
    error = theory.expected_test_error(np.eye(dim), n_context, n_context)
    assert float(error) == pytest.approx(dim * (dim + 1) / (n_context + 1 + dim), rel=1e-5)


@pytest.mark.parametrize("noise_var", [0.0, 0.5])
@pytest.mark.parametrize("n_test_context", [4, 15])
def test_expected_test_error_matches_monte_carlo(noise_var, n_test_context):
    """Prompts sampled with numpy (independent of tasks.py); ŷ from predict_at_minimum; error within 4 s.e."""
    rng = np.random.default_rng(1 + n_test_context + int(10 * noise_var))
    dim, n_context, n_prompts = 3, 8, 100_000
    cov = random_spd(rng, dim)
    cholesky = np.linalg.cholesky(cov)
    w = rng.normal(size=(n_prompts, dim))
    xs = rng.normal(size=(n_prompts, n_test_context, dim)) @ cholesky.T
    x_query = rng.normal(size=(n_prompts, dim)) @ cholesky.T
    noise_std = np.sqrt(noise_var)
    ys = np.einsum("bmd,bd->bm", xs, w) + noise_std * rng.normal(size=(n_prompts, n_test_context))
    y_query = np.einsum("bd,bd->b", x_query, w) + noise_std * rng.normal(size=n_prompts)
    with jax.enable_x64(True):
        squared_errors = np.asarray(predict_batch(cov, n_context, xs, ys, x_query)) - y_query
        squared_errors = squared_errors**2
        expected = float(theory.expected_test_error(cov, n_context, n_test_context, noise_var))
    standard_error = squared_errors.std() / np.sqrt(n_prompts)
    assert abs(squared_errors.mean() - expected) < 4 * standard_error, (squared_errors.mean(), expected, standard_error)


def gradient_z_scores(loss_of_params, params, prompts) -> np.ndarray:
    """Mean per-prompt gradient of the loss divided by its Monte Carlo standard error, for every parameter entry.

    The per-prompt gradients are heavy-tailed (products of up to five Gaussians), so stationarity is judged in
    units of their own standard error rather than against a fixed threshold.
    """
    single = lambda prompt: jax.tree.map(lambda leaf: leaf[None], prompt)
    per_prompt = jax.jit(jax.vmap(lambda prompt: jax.grad(loss_of_params)(params, single(prompt))))(prompts)
    leaves = np.concatenate([np.asarray(g).reshape(len(prompts.ys_BxM), -1) for g in jax.tree.leaves(per_prompt)], 1)
    moving = leaves.std(axis=0) > 0  # entries that no prompt moves (e.g. W^KQ's last column) carry no signal
    return leaves.mean(axis=0)[moving] / (leaves.std(axis=0)[moving] / np.sqrt(leaves.shape[0]))


def test_minimum_is_a_stationary_point_of_the_sampled_loss(key):
    """Every entry of the MC gradient at the closed-form minimum is within 4.5 standard errors of zero, while at
    W^PV scaled by 0.8 (same direction, wrong scale) the gradient is far outside."""
    dim, n_context = 3, 10
    cov = random_spd(np.random.default_rng(2), dim)
    model = lsa.LinearSelfAttention(dim=dim, param_dtype=jnp.float64)
    with jax.enable_x64(True):
        prompts = tasks.sample_prompts(key, tasks.PromptSpec(dim, n_context, covariance=cov), 20_000)
        loss = lambda variables, batch: lsa.prompt_loss(model, variables, batch)
        w_kq, w_pv = theory.global_minimum(cov, n_context)
        z_at_minimum = gradient_z_scores(loss, lsa.params_from_weights(w_kq, w_pv), prompts)
        z_off_minimum = gradient_z_scores(loss, lsa.params_from_weights(w_kq, 0.8 * w_pv), prompts)
    assert np.abs(z_at_minimum).max() < 4.5, z_at_minimum
    assert np.abs(z_off_minimum).max() > 10.0, z_off_minimum


def test_varying_covariance_minimum_reduces_to_the_constant_covariance_minimum():
    diagonal = np.array([0.5, 1.0, 3.0])
    with jax.enable_x64(True):
        varying = theory.varying_covariance_minimum(np.tile(diagonal, (6, 1)), 11)
        constant = theory.global_minimum(np.diag(diagonal), 11)
        for got, want in zip(varying, constant):
            np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-14)


def test_varying_covariance_minimum_for_exponential_entries_matches_hand_formula():
    # Exp(1): E λ² = 2, E λ³ = 6, so A = 2 / ((N+1)/N · 6 + (6 + 2(d-1))/N) I = N / (3N + d + 5) I.
    dim, n_context, n_samples = 4, 10, 400_000
    diagonals = np.random.default_rng(4).exponential(size=(n_samples, dim))
    with jax.enable_x64(True):
        w_kq, w_pv = theory.varying_covariance_minimum(diagonals, n_context)
        product = np.asarray(w_pv[dim, dim] * w_kq[:dim, :dim])
    expected = n_context / (3 * n_context + dim + 5)
    np.testing.assert_allclose(np.diag(product), expected, rtol=0.02)
    np.testing.assert_array_equal(product - np.diag(np.diag(product)), 0.0)


def test_varying_covariance_minimum_is_stationary_for_random_diagonal_prompts(key):
    """The reduced model at u₋₁U₁₁ = A has a gradient within MC error of zero on random-diagonal prompts; at the
    isotropic Γ⁻¹ = N/(N+1+d) I (the minimum for the mean covariance E Λ_τ = I) it does not."""
    dim, n_context = 3, 10
    exact_product = n_context / (3 * n_context + dim + 5)
    model = lsa.LinearSelfAttention(dim=dim, reduced=True, param_dtype=jnp.float64)

    def weights_for(product):
        w_kq = jnp.zeros((dim + 1, dim + 1)).at[:dim, :dim].set(product * jnp.eye(dim))
        return lsa.params_from_weights(w_kq, jnp.zeros((dim + 1, dim + 1)).at[dim, dim].set(1.0))

    with jax.enable_x64(True):
        prompts = tasks.sample_prompts(key, tasks.PromptSpec(dim, n_context, covariance="random_diagonal"), 20_000)
        loss = lambda variables, batch: lsa.prompt_loss(model, variables, batch)
        z_at_minimum = gradient_z_scores(loss, weights_for(exact_product), prompts)
        z_at_isotropic_guess = gradient_z_scores(loss, weights_for(n_context / (n_context + 1 + dim)), prompts)
    assert np.abs(z_at_minimum).max() < 4.5, z_at_minimum
    assert np.abs(z_at_isotropic_guess).max() > 10.0, z_at_isotropic_guess


@pytest.mark.parametrize(
    "call, field",
    [
        (lambda: theory.gamma(np.eye(2), 0), "n_context"),
        (lambda: theory.gamma(np.eye(2), 2.5), "n_context"),
        (lambda: theory.gamma(np.zeros((0, 0)), 3), "cov"),
        (lambda: theory.gamma(np.ones((2, 3)), 3), "cov"),
        (lambda: theory.gamma(np.array([[1.0, 0.5], [0.0, 1.0]]), 3), "symmetric"),
        (lambda: theory.gamma(np.diag([1.0, -1.0]), 3), "positive definite"),
        (lambda: theory.global_minimum(np.diag([1.0, 0.0]), 3), "positive definite"),
        (lambda: theory.expected_test_error(np.eye(2), 3, 0), "n_test_context"),
        (lambda: theory.expected_test_error(np.eye(2), 3, 3, noise_var=-1.0), "noise_var"),
        (lambda: theory.predict_at_minimum(np.eye(2), 3, np.ones((4, 3)), np.ones(4), np.ones(2)), "xs"),
        (lambda: theory.predict_at_minimum(np.eye(2), 3, np.ones((4, 2)), np.ones(3), np.ones(2)), "ys"),
        (lambda: theory.predict_at_minimum(np.eye(2), 3, np.ones((4, 2)), np.ones(4), np.ones(3)), "x_query"),
        (lambda: theory.varying_covariance_minimum(np.ones(3), 3), "sample_cov_diagonals"),
        (lambda: theory.varying_covariance_minimum(-np.ones((2, 3)), 3), "sample_cov_diagonals"),
        (lambda: theory.varying_covariance_minimum(np.ones((2, 3)), 0), "n_context"),
    ],
)
def test_bad_inputs_raise_value_errors_naming_the_field(call, field):
    with pytest.raises(ValueError, match=field):
        call()


def test_theory_functions_are_jittable_in_the_covariance():
    cov = np.diag([1.0, 2.0])
    jitted = jax.jit(lambda matrix: theory.expected_test_error(matrix, 4, 6, 0.1))
    assert float(jitted(cov)) == pytest.approx(float(theory.expected_test_error(cov, 4, 6, 0.1)), rel=1e-5)
