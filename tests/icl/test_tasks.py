"""Statistical and structural checks of the prompt generator and its shifts."""

import dataclasses

import jax
import numpy as np
import pytest

from robust_jax.icl import tasks


def sample(key, spec, batch):
    return jax.tree.map(lambda leaf: np.asarray(leaf, np.float64), tasks.sample_prompts(key, spec, batch))


def assert_covariance_within_monte_carlo_error(samples, cov, n_standard_errors=5.0):
    """Entry-wise: Var of the sample covariance (mean-zero Gaussian) is (Λᵢᵢ Λⱼⱼ + Λᵢⱼ²)/n."""
    n = samples.shape[0]
    empirical = samples.T @ samples / n
    standard_error = np.sqrt((np.outer(np.diag(cov), np.diag(cov)) + cov**2) / n)
    assert np.all(np.abs(empirical - cov) < n_standard_errors * standard_error), (empirical, cov)


def test_fixed_covariance_context_and_query_match_lambda(key):
    dim = 3
    basis, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(dim, dim)))
    cov = basis @ np.diag([0.25, 1.0, 4.0]) @ basis.T
    prompts = sample(key, tasks.PromptSpec(dim, 10, covariance=cov), 4000)
    assert_covariance_within_monte_carlo_error(prompts.xs_BxMxD.reshape(-1, dim), cov)
    assert_covariance_within_monte_carlo_error(prompts.x_query_BxD, cov)
    assert_covariance_within_monte_carlo_error(prompts.w_BxD, np.eye(dim))
    np.testing.assert_allclose(prompts.context_covariance_BxDxD[0], cov, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(prompts.ys_BxM, np.einsum("bmd,bd->bm", prompts.xs_BxMxD, prompts.w_BxD), atol=1e-4)


def test_random_diagonal_covariance_is_fresh_per_prompt_with_exponential_entries(key):
    dim, batch = 4, 4000
    prompts = sample(key, tasks.PromptSpec(dim, 10, covariance="random_diagonal"), batch)
    covariances = prompts.context_covariance_BxDxD
    diagonals = np.diagonal(covariances, axis1=1, axis2=2)
    np.testing.assert_array_equal(covariances - np.einsum("bi,ij->bij", diagonals, np.eye(dim)), 0.0)
    entries = diagonals.ravel()
    # Exponential(1): mean 1, variance 1, P(λ > 1) = e^-1.
    assert abs(entries.mean() - 1.0) < 5 / np.sqrt(entries.size)
    assert abs((entries > 1.0).mean() - np.exp(-1.0)) < 5 * np.sqrt(np.exp(-1) * (1 - np.exp(-1)) / entries.size)
    assert np.std(diagonals[:, 0]) > 0.5  # differs between prompts
    whitened = (prompts.xs_BxMxD / np.sqrt(diagonals)[:, None, :]).reshape(-1, dim)
    assert_covariance_within_monte_carlo_error(whitened, np.eye(dim))


def test_skewed_covariance_has_inverse_square_spectrum_and_trace_d(key):
    dim, n_context, batch = 5, 10, 2000
    prompts = sample(key, tasks.apply_shift(tasks.PromptSpec(dim, n_context), "skewed"), batch)
    eigenvalues = np.linalg.eigvalsh(prompts.context_covariance_BxDxD)[:, ::-1]
    expected = 1.0 / np.arange(1, dim + 1) ** 2
    expected *= dim / expected.sum()
    np.testing.assert_allclose(eigenvalues, np.broadcast_to(expected, eigenvalues.shape), rtol=1e-4, atol=1e-5)
    assert not np.allclose(prompts.context_covariance_BxDxD[0], prompts.context_covariance_BxDxD[1])
    # Given its covariance, xᵀ Λ⁻¹ x ~ χ²_d: mean d, variance 2d.
    inverses = np.linalg.inv(prompts.context_covariance_BxDxD)
    quadratic = np.einsum("bmi,bij,bmj->bm", prompts.xs_BxMxD, inverses, prompts.xs_BxMxD).ravel()
    assert abs(quadratic.mean() - dim) < 5 * np.sqrt(2 * dim / quadratic.size)


def test_subspace_shift_lies_in_a_half_dimensional_subspace_shared_by_context_and_query(key):
    dim, n_context = 6, 10
    prompts = sample(key, tasks.apply_shift(tasks.PromptSpec(dim, n_context), "subspace"), 500)
    points = np.concatenate([prompts.xs_BxMxD, prompts.x_query_BxD[:, None, :]], axis=1)
    singular_values = np.linalg.svd(points, compute_uv=False)
    assert np.all(singular_values[:, dim // 2 - 1] > 1e-2)
    assert np.all(singular_values[:, dim // 2 :] < 1e-4 * singular_values[:, :1])
    squared_norms = np.sum(prompts.xs_BxMxD**2, axis=-1).ravel()
    # (d/k) ||P z||² with k = d/2: mean d, variance (d/k)² 2k = 4d.
    assert abs(squared_norms.mean() - dim) < 5 * np.sqrt(4 * dim / squared_norms.size)


def test_orthant_shift_keeps_each_coordinate_sign_constant_over_the_context(key):
    dim, n_context, batch = 4, 8, 500
    prompts = sample(key, tasks.apply_shift(tasks.PromptSpec(dim, n_context), "orthant"), batch)
    signs = np.sign(prompts.xs_BxMxD)
    assert np.all(signs == signs[:, :1, :])
    first_signs = signs[:, 0, :]
    assert abs(first_signs.mean()) < 5 / np.sqrt(first_signs.size)  # orthants are random
    query_outside = np.any(np.sign(prompts.x_query_BxD) != first_signs, axis=1).mean()
    assert query_outside == pytest.approx(1 - 2.0**-dim, abs=0.08)  # the query is not folded


def test_scale_shift_multiplies_covariates_and_labels_by_c_with_the_same_randomness(key):
    spec = tasks.PromptSpec(3, 5, covariance="random_diagonal")
    plain = sample(key, spec, 8)
    scaled = sample(key, tasks.apply_shift(spec, "scale", c=0.5), 8)
    np.testing.assert_allclose(scaled.xs_BxMxD, 0.5 * plain.xs_BxMxD, rtol=1e-6)
    np.testing.assert_allclose(scaled.x_query_BxD, 0.5 * plain.x_query_BxD, rtol=1e-6)
    np.testing.assert_allclose(scaled.ys_BxM, 0.5 * plain.ys_BxM, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(scaled.context_covariance_BxDxD, 0.25 * plain.context_covariance_BxDxD, rtol=1e-6)
    np.testing.assert_array_equal(scaled.w_BxD, plain.w_BxD)


def test_orthogonal_query_is_orthogonal_to_the_context_and_keeps_its_norm(key):
    dim, n_context = 8, 3
    prompts = sample(key, tasks.apply_shift(tasks.PromptSpec(dim, n_context), "query_orthogonal"), 2000)
    inner = np.einsum("bmd,bd->bm", prompts.xs_BxMxD, prompts.x_query_BxD)
    norms = np.linalg.norm(prompts.xs_BxMxD, axis=-1) * np.linalg.norm(prompts.x_query_BxD, axis=-1)[:, None]
    assert np.abs(inner / norms).max() < 1e-5
    # √(d/(d-M)) ||P z||², P a rank d-M projection: mean d, variance 2 d²/(d-M).
    squared_norms = np.sum(prompts.x_query_BxD**2, axis=-1)
    assert abs(squared_norms.mean() - dim) < 5 * np.sqrt(2 * dim**2 / (dim - n_context) / squared_norms.size)


def test_query_from_other_distribution_has_skewed_norm_fluctuations(key):
    """||x_q||² = Σ λᵢ zᵢ² has variance 2 Σλᵢ² for the skewed spectrum, against 2d for the isotropic context."""
    dim = 5
    prompts = sample(key, tasks.apply_shift(tasks.PromptSpec(dim, 4), "query_other_distribution"), 4000)
    eigenvalues = tasks.skewed_eigenvalues(dim)
    query_norms = np.sum(prompts.x_query_BxD**2, axis=-1)
    assert abs(query_norms.mean() - dim) < 5 * np.sqrt(2 * np.sum(eigenvalues**2) / query_norms.size)
    fourth_moment = np.sum(eigenvalues**2) * 2 + dim**2  # E||x||⁴ for a Gaussian with spectrum λ
    assert np.mean(query_norms**2) == pytest.approx(fourth_moment, rel=0.15)
    assert np.var(query_norms) > 2 * 2 * dim  # clearly above the isotropic value 2d


def test_label_noise_and_nonlinear_labels(key):
    dim, n_context = 4, 16
    noisy = sample(key, tasks.apply_shift(tasks.PromptSpec(dim, n_context), "noisy_labels", noise_std=0.3), 2000)
    residuals = noisy.ys_BxM - np.einsum("bmd,bd->bm", noisy.xs_BxMxD, noisy.w_BxD)
    query_residuals = noisy.y_query_B - np.einsum("bd,bd->b", noisy.x_query_BxD, noisy.w_BxD)
    assert abs(residuals.var() - 0.09) < 5 * 0.09 * np.sqrt(2 / residuals.size)
    assert abs(query_residuals.var() - 0.09) < 5 * 0.09 * np.sqrt(2 / query_residuals.size)
    nonlinear = sample(key, tasks.apply_shift(tasks.PromptSpec(dim, n_context), "nonlinear_labels"), 64)
    projections = np.einsum("bmd,bd->bm", nonlinear.xs_BxMxD, nonlinear.w_BxD)
    np.testing.assert_allclose(nonlinear.ys_BxM, 2.0 * np.tanh(projections / 2.0), rtol=1e-5, atol=1e-5)


def test_prompt_length_and_batch_independence(key):
    spec = tasks.apply_shift(tasks.PromptSpec(3, 10), "prompt_length", n_context=25)
    small, large = sample(key, spec, 4), sample(key, spec, 8)
    assert large.xs_BxMxD.shape == (8, 25, 3) and large.ys_BxM.shape == (8, 25)
    for leaf_small, leaf_large in zip(small, large):
        np.testing.assert_array_equal(leaf_small, leaf_large[:4])


def test_spec_is_hashable_and_sampling_jits_with_a_traced_key(key):
    spec = tasks.PromptSpec(2, 3, covariance=np.diag([1.0, 2.0]))
    assert hash(spec) == hash(tasks.PromptSpec(2, 3, covariance=((1.0, 0.0), (0.0, 2.0))))
    assert spec == tasks.PromptSpec(2, 3, covariance=((1.0, 0.0), (0.0, 2.0)))
    length_spec = tasks.apply_shift(tasks.PromptSpec(3, 10), "prompt_length", n_context=25)
    jitted = jax.jit(lambda k: tasks.sample_prompts(k, length_spec, 4).ys_BxM)
    np.testing.assert_allclose(jitted(key), tasks.sample_prompts(key, length_spec, 4).ys_BxM, rtol=1e-6)


@pytest.mark.parametrize(
    "make, field",
    [
        (lambda: tasks.PromptSpec(0, 5), "dim"),
        (lambda: tasks.PromptSpec(3, 0), "n_context"),
        (lambda: tasks.PromptSpec(3, 2.0), "n_context"),
        (lambda: tasks.PromptSpec(3, 5, covariate_scale=0.0), "covariate_scale"),
        (lambda: tasks.PromptSpec(3, 5, covariate_scale=-2.0), "covariate_scale"),
        (lambda: tasks.PromptSpec(3, 5, label_noise_std=-0.1), "label_noise_std"),
        (lambda: tasks.PromptSpec(2, 5, covariance=np.diag([1.0, -1.0])), "covariance"),
        (lambda: tasks.PromptSpec(2, 5, covariance=np.array([[1.0, 2.0], [0.0, 1.0]])), "covariance"),
        (lambda: tasks.PromptSpec(2, 5, covariance=np.eye(3)), "covariance"),
        (lambda: tasks.PromptSpec(2, 5, covariance="exponential"), "covariance"),
        (lambda: tasks.PromptSpec(2, 5, covariate_shift="rotate"), "covariate_shift"),
        (lambda: tasks.PromptSpec(2, 5, query="far"), "query"),
        (lambda: tasks.PromptSpec(2, 5, labels="relu"), "labels"),
        (lambda: tasks.PromptSpec(4, 4, query="orthogonal"), "query"),
        (lambda: tasks.PromptSpec(1, 4, covariate_shift="subspace"), "covariate_shift"),
        (lambda: tasks.PromptSpec(3, 4, covariance="random_diagonal", covariate_shift="skewed"), "covariate_shift"),
        (lambda: tasks.apply_shift(tasks.PromptSpec(3, 5), "rotation"), "shift"),
        (lambda: tasks.apply_shift(tasks.PromptSpec(3, 5), "scale"), "c"),
        (lambda: tasks.apply_shift(tasks.PromptSpec(3, 5), "scale", c=0.0), "c"),
        (lambda: tasks.apply_shift(tasks.PromptSpec(3, 5), "noisy_labels"), "noise_std"),
        (lambda: tasks.apply_shift(tasks.PromptSpec(3, 5), "prompt_length", n_context=0), "n_context"),
        (lambda: tasks.sample_prompts(jax.random.key(0), tasks.PromptSpec(3, 5), 0), "batch_size"),
        (lambda: dataclasses.replace(tasks.PromptSpec(3, 5), dim=-1), "dim"),
    ],
)
def test_bad_inputs_raise_value_errors_naming_the_field(make, field):
    with pytest.raises(ValueError, match=field):
        make()
