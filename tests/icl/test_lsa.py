"""The LSA layer against the literal matrix formula, the closed-form minimum and ZFB's shift predictions."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from robust_jax.core import mesh as mesh_lib
from robust_jax.icl import baselines, lsa, tasks, theory


def literal_lsa_prediction(w_kq, w_pv, xs, ys, x_query) -> float:
    """f(E) = E + W^PV E (Eᵀ W^KQ E)/M built as full matrices for one prompt; returns f(E)[d, M]."""
    embedding = np.concatenate([np.concatenate([xs.T, ys[None, :]], 0), np.append(x_query, 0.0)[:, None]], 1)
    output = embedding + w_pv @ embedding @ (embedding.T @ w_kq @ embedding) / xs.shape[0]
    return output[-1, -1]


def random_prompts(rng, batch, n_context, dim):
    xs = rng.normal(size=(batch, n_context, dim))
    w = rng.normal(size=(batch, dim))
    return xs, np.einsum("bmd,bd->bm", xs, w), rng.normal(size=(batch, dim)), w


@pytest.mark.parametrize("n_context", [2, 9])
def test_forward_equals_literal_formula_for_arbitrary_full_weights(n_context):
    rng = np.random.default_rng(n_context)
    dim = 4
    w_kq, w_pv = rng.normal(size=(dim + 1, dim + 1)), rng.normal(size=(dim + 1, dim + 1))
    xs, ys, x_query, _ = random_prompts(rng, 5, n_context, dim)
    model = lsa.LinearSelfAttention(dim=dim, param_dtype=jnp.float64)
    with jax.enable_x64(True):
        got = jax.jit(model.apply)(lsa.params_from_weights(w_kq, w_pv), xs, ys, x_query)
    want = [literal_lsa_prediction(w_kq, w_pv, xs[b], ys[b], x_query[b]) for b in range(5)]
    np.testing.assert_allclose(got, want, rtol=1e-10)


def test_reduced_model_ignores_and_freezes_everything_but_u_and_u11():
    rng = np.random.default_rng(0)
    dim = 3
    w_kq, w_pv = rng.normal(size=(dim + 1, dim + 1)), rng.normal(size=(dim + 1, dim + 1))
    xs, ys, x_query, w = random_prompts(rng, 6, 7, dim)
    model = lsa.LinearSelfAttention(dim=dim, reduced=True, param_dtype=jnp.float64)
    with jax.enable_x64(True):
        variables = lsa.params_from_weights(w_kq, w_pv)
        got = jax.jit(model.apply)(variables, xs, ys, x_query)
        loss = lambda v: lsa.squared_loss(model.apply(v, xs, ys, x_query), jnp.sum(w * x_query, 1))
        grads = jax.jit(jax.grad(loss))(variables)["params"]
        grads = jax.tree.map(np.asarray, grads)
    masked_kq = np.zeros_like(w_kq)
    masked_kq[:dim, :dim] = w_kq[:dim, :dim]
    masked_pv = np.zeros_like(w_pv)
    masked_pv[dim, dim] = w_pv[dim, dim]
    want = [literal_lsa_prediction(masked_kq, masked_pv, xs[b], ys[b], x_query[b]) for b in range(6)]
    np.testing.assert_allclose(got, want, rtol=1e-10)
    np.testing.assert_array_equal(grads["w_kq"][dim, :], 0.0)
    np.testing.assert_array_equal(grads["w_kq"][:, dim], 0.0)
    np.testing.assert_array_equal(grads["w_pv"].ravel()[:-1], 0.0)
    assert np.all(grads["w_kq"][:dim, :dim] != 0.0) and grads["w_pv"][dim, dim] != 0.0


@pytest.mark.parametrize("n_test_context", [5, 12])
def test_forward_at_the_global_minimum_equals_the_closed_form_prediction(n_test_context):
    rng = np.random.default_rng(n_test_context)
    dim, n_context = 4, 8
    basis, _ = np.linalg.qr(rng.normal(size=(dim, dim)))
    cov = basis @ np.diag([0.2, 0.7, 1.5, 3.0]) @ basis.T
    xs, ys, x_query, _ = random_prompts(rng, 16, n_test_context, dim)
    with jax.enable_x64(True):
        variables = lsa.params_from_weights(*theory.global_minimum(cov, n_context))
        closed_form = jax.jit(jax.vmap(lambda x, y, q: theory.predict_at_minimum(cov, n_context, x, y, q)))
        want = np.asarray(closed_form(xs, ys, x_query))
        for reduced in (False, True):
            model = lsa.LinearSelfAttention(dim=dim, reduced=reduced, param_dtype=jnp.float64)
            got = np.asarray(jax.jit(model.apply)(variables, xs, ys, x_query))
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-8)


def test_initialisation_follows_assumption_3_3(key):
    dim, init_scale = 5, 0.3
    model = lsa.LinearSelfAttention(dim=dim, init_scale=init_scale)
    init = jax.jit(model.init)
    params = init(key, jnp.zeros((1, 4, dim)), jnp.zeros((1, 4)), jnp.zeros((1, dim)))["params"]
    w_kq, w_pv = np.asarray(params["w_kq"], np.float64), np.asarray(params["w_pv"], np.float64)
    expected_pv = np.zeros((dim + 1, dim + 1))
    expected_pv[dim, dim] = init_scale
    np.testing.assert_allclose(w_pv, expected_pv, rtol=1e-7, atol=0.0)
    theta_theta_t = w_kq[:dim, :dim] / init_scale
    np.testing.assert_array_equal(w_kq[dim, :], 0.0)
    np.testing.assert_array_equal(w_kq[:, dim], 0.0)
    np.testing.assert_allclose(theta_theta_t, theta_theta_t.T, atol=1e-7)
    assert np.linalg.norm(theta_theta_t) == pytest.approx(1.0, rel=1e-5)
    assert np.linalg.eigvalsh(theta_theta_t).min() > 0.0  # M M^T with a square Gaussian M is positive definite
    other = init(jax.random.fold_in(key, 1), jnp.zeros((1, 4, dim)), jnp.zeros((1, 4)), jnp.zeros((1, dim)))
    assert not np.allclose(other["params"]["w_kq"], params["w_kq"])


# One prompt distribution for the tests that need sampled prompts, so the sampler compiles once.
NOISY_SPEC = tasks.PromptSpec(3, 5, label_noise_std=0.5)


def test_loss_is_half_mean_squared_error_against_the_noiseless_target(key):
    prompts = tasks.sample_prompts(key, NOISY_SPEC, 16)
    model = lsa.LinearSelfAttention(dim=NOISY_SPEC.dim)
    variables = jax.jit(model.init)(key, prompts.xs_BxMxD, prompts.ys_BxM, prompts.x_query_BxD)
    predictions = np.asarray(jax.jit(model.apply)(variables, prompts.xs_BxMxD, prompts.ys_BxM, prompts.x_query_BxD))
    targets = np.sum(np.asarray(prompts.w_BxD) * np.asarray(prompts.x_query_BxD), axis=1)
    assert not np.allclose(targets, np.asarray(prompts.y_query_B))  # the loss must not use the noisy label
    want = np.sum((predictions - targets) ** 2) / (2 * 16)
    assert float(jax.jit(lsa.prompt_loss, static_argnums=0)(model, variables, prompts)) == pytest.approx(want, rel=1e-5)


def test_sharded_jitted_loss_matches_single_device(key):
    prompts = tasks.sample_prompts(key, NOISY_SPEC, 16)
    model = lsa.LinearSelfAttention(dim=NOISY_SPEC.dim)
    variables = jax.jit(model.init)(key, prompts.xs_BxMxD, prompts.ys_BxM, prompts.x_query_BxD)
    mesh = mesh_lib.make_data_mesh()
    sharded = jax.device_put(prompts, mesh_lib.batch_sharding(mesh))
    loss = jax.jit(lambda v, p: lsa.prompt_loss(model, v, p))
    single_device = jax.device_put(prompts, jax.devices()[0])
    np.testing.assert_allclose(loss(variables, sharded), loss(variables, single_device), rtol=1e-5)


def test_covariate_scale_c_multiplies_the_relative_lsa_prediction_by_c_squared_but_not_least_squares():
    """Scaling every covariate by c scales ŷ = x_qᵀΓ⁻¹(1/M)Σyᵢxᵢ by c³ and the target <w, x_q> by c, so the
    prediction relative to the truth is multiplied by c² (ZFB §4.2); least squares stays exact."""
    dim, n_context, c = 4, 20, 3.0
    xs, ys, x_query, w = random_prompts(np.random.default_rng(5), 32, n_context, dim)
    targets = np.sum(w * x_query, axis=1)
    with jax.enable_x64(True):
        model = lsa.LinearSelfAttention(dim=dim, reduced=True, param_dtype=jnp.float64)
        variables = lsa.params_from_weights(*theory.global_minimum(np.eye(dim), n_context))
        predict = jax.jit(model.apply)
        plain = np.asarray(predict(variables, xs, ys, x_query))
        scaled = np.asarray(predict(variables, c * xs, c * ys, c * x_query))
        least_squares_scaled = np.asarray(baselines.least_squares(c * xs, c * ys, c * x_query))
    np.testing.assert_allclose(scaled / (c * targets), c**2 * plain / targets, rtol=1e-8)
    np.testing.assert_allclose(scaled, c**3 * plain, rtol=1e-8)
    np.testing.assert_allclose(least_squares_scaled, c * targets, rtol=1e-6, atol=1e-8)


def test_query_orthogonal_to_the_context_gives_zero_prediction_for_isotropic_training():
    """With Λ = I, Γ⁻¹ ∝ I and ŷ ∝ x_qᵀ Σ yᵢxᵢ = 0 when x_q ⟂ span{xᵢ}; a non-isotropic Γ⁻¹ does not give 0."""
    dim, n_context = 6, 3
    xs, ys, x_query, _ = random_prompts(np.random.default_rng(6), 16, n_context, dim)
    for b in range(16):
        basis, _ = np.linalg.qr(xs[b].T)
        x_query[b] -= basis @ (basis.T @ x_query[b])
    model = lsa.LinearSelfAttention(dim=dim, param_dtype=jnp.float64)
    with jax.enable_x64(True):
        predict = jax.jit(lambda cov: model.apply(lsa.params_from_weights(*theory.global_minimum(cov, 20)),
                                                  xs, ys, x_query))
        isotropic = np.asarray(predict(np.eye(dim)))
        skewed = np.asarray(predict(np.diag(np.linspace(0.2, 3.0, dim))))
    np.testing.assert_allclose(isotropic, 0.0, atol=1e-12)
    assert np.abs(skewed).mean() > 1e-2


def test_model_rejects_covariates_of_the_wrong_dimension():
    model = lsa.LinearSelfAttention(dim=3)
    with pytest.raises(ValueError, match="dim"):
        model.init(jax.random.key(0), jnp.zeros((1, 4, 2)), jnp.zeros((1, 4)), jnp.zeros((1, 2)))
