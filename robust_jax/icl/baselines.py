"""Classical in-context estimators that the trained models are compared with (Garg et al., von Oswald et al.).

Each takes a batch of prompts (xs_BxMxD, ys_BxM, x_query_BxD) and returns the query predictions ŷ_B. All are
pure jnp, batched and jit-able; M may be any size, M < d included (least squares then returns the minimum-norm
interpolant).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from robust_jax.core import checks


def zero_estimator(xs_BxMxD, ys_BxM, x_query_BxD) -> jax.Array:
    """ŷ = 0: scores normalised error 1 when E<w, x_q>² = d; the reference every curve starts from."""
    del xs_BxMxD, ys_BxM
    return jnp.zeros_like(jnp.asarray(x_query_BxD)[:, 0])


def least_squares(xs_BxMxD, ys_BxM, x_query_BxD) -> jax.Array:
    """ŵ = X⁺ y (Moore–Penrose, so the minimum-norm solution when M < d); ŷ = <ŵ, x_q>.

    Invariant to rescaling all covariates by c (ŵ → ŵ/c), the covariate-shift control of ZFB.
    """
    w_hat_BxD = jnp.einsum("bdm,bm->bd", jnp.linalg.pinv(xs_BxMxD), ys_BxM)
    return jnp.einsum("bd,bd->b", w_hat_BxD, x_query_BxD)


def ridge(xs_BxMxD, ys_BxM, x_query_BxD, regularization) -> jax.Array:
    """ŵ = argmin ||X w − y||² + λ ||w||² = (XᵀX + λI)⁻¹ Xᵀ y (sums, not means, over the M examples); λ > 0."""
    if not isinstance(regularization, jax.core.Tracer):
        value = float(np.asarray(regularization))
        if not (math.isfinite(value) and value > 0.0):
            raise ValueError(f"regularization must be finite and > 0 (use least_squares for 0), got {value}")
    dim = xs_BxMxD.shape[-1]
    gram_BxDxD = jnp.einsum("bmi,bmj->bij", xs_BxMxD, xs_BxMxD)
    regularized_BxDxD = gram_BxDxD + regularization * jnp.eye(dim, dtype=gram_BxDxD.dtype)[None]
    moment_BxD = jnp.einsum("bmd,bm->bd", xs_BxMxD, ys_BxM)
    w_hat_BxD = jnp.linalg.solve(regularized_BxDxD, moment_BxD[..., None])[..., 0]
    return jnp.einsum("bd,bd->b", w_hat_BxD, x_query_BxD)


def averaging(xs_BxMxD, ys_BxM, x_query_BxD) -> jax.Array:
    """ŵ = (1/M) Σ yᵢ xᵢ, unbiased for Λ w; equals one GD step with η = 1 (and the LSA limit for Λ = I, N → ∞)."""
    w_hat_BxD = jnp.einsum("bmd,bm->bd", xs_BxMxD, ys_BxM) / xs_BxMxD.shape[1]
    return jnp.einsum("bd,bd->b", w_hat_BxD, x_query_BxD)


def nearest_neighbours(xs_BxMxD, ys_BxM, x_query_BxD, n_neighbours: int = 3) -> jax.Array:
    """Mean label of the n_neighbours context points closest to x_q (Euclidean); all M of them when M < n_neighbours."""
    checks.check_int("n_neighbours", n_neighbours, minimum=1)
    used_neighbours = min(n_neighbours, xs_BxMxD.shape[1])
    squared_distances_BxM = jnp.sum((xs_BxMxD - x_query_BxD[:, None, :]) ** 2, axis=-1)
    _, nearest_BxK = jax.lax.top_k(-squared_distances_BxM, used_neighbours)
    return jnp.mean(jnp.take_along_axis(ys_BxM, nearest_BxK, axis=1), axis=1)


def one_step_gradient_descent(xs_BxMxD, ys_BxM, x_query_BxD, step_size) -> jax.Array:
    """ŷ = (η/M) Σⱼ yⱼ xⱼᵀ x_q: one GD step on (1/2M) Σ ||w xᵢ − yᵢ||² from w = 0 (von Oswald et al.)."""
    return step_size * averaging(xs_BxMxD, ys_BxM, x_query_BxD)


def tune_gradient_descent_step_size(xs_BxMxD, ys_BxM, x_query_BxD, targets_B) -> jax.Array:
    """The η minimising Σ_b (ŷ_b(η) − target_b)² over training prompts: an exact line search.

    ŷ(η) = η g with g the averaging prediction, so the squared error is a parabola in η with minimum at
    η* = Σ g·target / Σ g²; no grid is needed.
    """
    unit_step_predictions_B = averaging(xs_BxMxD, ys_BxM, x_query_BxD)
    return jnp.sum(unit_step_predictions_B * targets_B) / jnp.sum(unit_step_predictions_B**2)
