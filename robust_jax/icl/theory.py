"""Closed-form results for one linear self-attention layer trained on in-context linear regression.

Zhang, Frei & Bartlett (JMLR 2024, "ZFB") show that gradient flow from their initialisation reaches a global
minimum that predicts ŷ = x_qᵀ Γ⁻¹ (1/M) Σ yᵢ xᵢ, with Γ = (1 + 1/N) Λ + (tr Λ / N) I. These functions give that
minimum, its prediction and its expected test error, so trained models and experiments can be checked against
exact numbers.

Conventions: d is the covariate dimension, N the training prompt length (number of context examples), M the
number of context examples of a test prompt. Weight matrices are (d+1)x(d+1) in the layout of `lsa.py`:
index d (0-based) is the label coordinate. Inputs are validated in Python (before any tracing), the arithmetic
is jnp so that the functions also run under `jax.jit` with concrete-shaped, traced covariances.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from robust_jax.core import checks


def _is_traced(value) -> bool:
    return isinstance(value, jax.core.Tracer)


def check_covariance(name: str, cov) -> jax.Array:
    """Returns `cov` as a float array after checking it is a dxd symmetric positive definite matrix, d >= 1.

    Values are checked only when concrete; a traced covariance is checked for shape alone.
    """
    shape = np.shape(cov)
    if len(shape) != 2 or shape[0] != shape[1]:
        raise ValueError(f"{name} must be a square (d, d) matrix, got shape {shape}")
    if shape[0] < 1:
        raise ValueError(f"{name} must have dimension d >= 1, got d = {shape[0]}")
    if not _is_traced(cov):
        cov_np = np.asarray(cov, dtype=np.float64)
        if not np.all(np.isfinite(cov_np)):
            raise ValueError(f"{name} must be finite, got non-finite entries")
        scale = max(np.abs(cov_np).max(), 1e-30)
        if not np.allclose(cov_np, cov_np.T, rtol=0.0, atol=1e-6 * scale):
            raise ValueError(f"{name} must be symmetric, max |cov - covᵀ| = {np.abs(cov_np - cov_np.T).max():.3g}")
        min_eigenvalue = np.linalg.eigvalsh(0.5 * (cov_np + cov_np.T)).min()
        if min_eigenvalue <= 0.0:
            raise ValueError(f"{name} must be positive definite, smallest eigenvalue is {min_eigenvalue:.3g}")
    cov = jnp.asarray(cov)
    if not jnp.issubdtype(cov.dtype, jnp.floating):
        cov = cov.astype(jnp.result_type(float))
    return cov


def gamma(cov, n_context: int) -> jax.Array:
    """Γ = (1 + 1/N) Λ + (tr Λ / N) I_d: the matrix whose inverse the trained layer applies to (1/M) Σ yᵢ xᵢ.

    The extra Λ/N and tr(Λ)/N I terms are the bias the minimum accepts to shrink the variance of the N-sample
    estimate of E[x y].
    """
    cov = check_covariance("cov", cov)
    n_context = checks.check_int("n_context", n_context, minimum=1)
    dim = cov.shape[0]
    return (1.0 + 1.0 / n_context) * cov + (jnp.trace(cov) / n_context) * jnp.eye(dim, dtype=cov.dtype)


def _embed_blocks(top_left: jax.Array, bottom_right_scale) -> tuple[jax.Array, jax.Array]:
    """(w_kq, w_pv) with top_left in W^KQ[:d, :d] and bottom_right_scale in W^PV[d, d], zeros elsewhere."""
    dim = top_left.shape[0]
    w_kq = jnp.zeros((dim + 1, dim + 1), top_left.dtype).at[:dim, :dim].set(top_left)
    w_pv = jnp.zeros((dim + 1, dim + 1), top_left.dtype).at[dim, dim].set(bottom_right_scale)
    return w_kq, w_pv


def global_minimum(cov, n_context: int) -> tuple[jax.Array, jax.Array]:
    """The global minimum (ZFB §4) reached from their initialisation: W^KQ_*, W^PV_*, each (d+1)x(d+1).

    W^KQ_* = tr(Γ⁻²)^(-1/4) [[Γ⁻¹, 0], [0, 0]] and W^PV_* = tr(Γ⁻²)^(1/4) [[0, 0], [0, 1]]. Only the product
    u₋₁ U₁₁ = Γ⁻¹ matters for predictions; the split balances the two factors (||u₋₁ e||² = ||U₁₁||_F²), which is
    what gradient flow from the balanced initialisation preserves.
    """
    gamma_inv = jnp.linalg.inv(gamma(cov, n_context))
    trace_gamma_inv_sq = jnp.sum(gamma_inv * gamma_inv)  # tr(Γ⁻²) = ||Γ⁻¹||_F² because Γ is symmetric
    return _embed_blocks(trace_gamma_inv_sq ** -0.25 * gamma_inv, trace_gamma_inv_sq**0.25)


def predict_at_minimum(cov, n_context: int, xs, ys, x_query) -> jax.Array:
    """ŷ = x_qᵀ Γ⁻¹ (1/M) Σᵢ yᵢ xᵢ for one prompt; xs (M, d), ys (M,), x_query (d,), M = len(xs).

    Γ uses the training length N; the 1/M is the prompt's own length (the layer normalises by it).
    """
    cov = check_covariance("cov", cov)
    dim = cov.shape[0]
    if np.ndim(xs) != 2 or np.shape(xs)[1] != dim or np.shape(xs)[0] < 1:
        raise ValueError(f"xs must have shape (M, {dim}) with M >= 1, got {np.shape(xs)}")
    if np.shape(ys) != (np.shape(xs)[0],):
        raise ValueError(f"ys must have shape ({np.shape(xs)[0]},) to match xs, got {np.shape(ys)}")
    if np.shape(x_query) != (dim,):
        raise ValueError(f"x_query must have shape ({dim},), got {np.shape(x_query)}")
    xs, ys, x_query = jnp.asarray(xs), jnp.asarray(ys), jnp.asarray(x_query)
    label_weighted_mean_D = jnp.mean(ys[:, None] * xs, axis=0)
    return x_query @ jnp.linalg.solve(gamma(cov, n_context), label_weighted_mean_D)


def expected_test_error(cov, n_context: int, n_test_context: int, noise_var: float = 0.0) -> jax.Array:
    """E(ŷ − y_q)² at the global minimum for linear tasks y = <w, x> + ε, averaged over w ~ N(0, I).

    ZFB Thm 4.2 for a fixed task, with a = Λ⁻¹E[xy] and Σ = Cov(xy), reads
        s² + (1/M) tr(Σ Γ⁻² Λ) + (1/N²) ||(Λ + tr(Λ) I) a||²_{Γ⁻²Λ}.
    For y = <w, x> + ε with Var ε = s² (on the context labels and on the query label): a = w, min error s²,
    and for Gaussian x, Cov(xy | w) = Λwwᵀ Λ + (wᵀΛw) Λ + s² Λ. Averaging over w ~ N(0, I) replaces wwᵀ by I:
        E_w Σ = Λ² + tr(Λ) Λ + s² Λ,   E_w ||·a||²_B = tr(B).
    The average is of the conditional covariance, not the covariance of xy with w random (that one would add
    a spurious Λ² from the spread of E[xy | w] = Λw across tasks).
    """
    cov = check_covariance("cov", cov)
    n_context = checks.check_int("n_context", n_context, minimum=1)
    n_test_context = checks.check_int("n_test_context", n_test_context, minimum=1)
    if not _is_traced(noise_var) and not (np.isfinite(noise_var) and noise_var >= 0.0):
        raise ValueError(f"noise_var must be finite and >= 0, got {noise_var!r}")
    dim = cov.shape[0]
    identity = jnp.eye(dim, dtype=cov.dtype)
    trace_cov = jnp.trace(cov)
    gamma_inv = jnp.linalg.inv(gamma(cov, n_context))
    # Γ, Λ commute (Γ is a polynomial in Λ), so Γ⁻²Λ is symmetric positive definite.
    weighting = gamma_inv @ gamma_inv @ cov
    mean_label_cov = cov @ cov + trace_cov * cov + noise_var * cov
    variance_term = jnp.trace(weighting @ mean_label_cov) / n_test_context
    shrink = cov + trace_cov * identity
    bias_term = jnp.trace(weighting @ shrink @ shrink) / n_context**2
    return noise_var + variance_term + bias_term


def varying_covariance_minimum(sample_cov_diagonals, n_context: int) -> tuple[jax.Array, jax.Array]:
    """Global minimum when each prompt has its own diagonal covariance Λ_τ (ZFB Def 4.4, Thm 4.5).

    `sample_cov_diagonals` (K, d) are K Monte Carlo draws of diag(Λ_τ); expectations are their means.
    Γ_τ = ((N+1)/N) Λ_τ + (tr Λ_τ / N) I, A = (E[Γ_τ Λ_τ²])⁻¹ E[Λ_τ²] (diagonal),
    W^KQ_* = ||A||_F^(-1/2) [[A, 0], [0, 0]], W^PV_* = ||A||_F^(1/2) [[0, 0], [0, 1]].
    With every draw equal to diag(Λ) this is `global_minimum(diag(Λ), N)`.
    """
    shape = np.shape(sample_cov_diagonals)
    if len(shape) != 2 or shape[0] < 1 or shape[1] < 1:
        raise ValueError(f"sample_cov_diagonals must have shape (K, d) with K >= 1 and d >= 1, got {shape}")
    n_context = checks.check_int("n_context", n_context, minimum=1)
    if not _is_traced(sample_cov_diagonals):
        diagonals_np = np.asarray(sample_cov_diagonals, dtype=np.float64)
        if not np.all(np.isfinite(diagonals_np)) or diagonals_np.min() <= 0.0:
            raise ValueError(
                "sample_cov_diagonals must be finite and > 0 (positive definite diagonal covariances), "
                f"got min {np.nanmin(diagonals_np):.3g}"
            )
    diagonals_KxD = jnp.asarray(sample_cov_diagonals)
    if not jnp.issubdtype(diagonals_KxD.dtype, jnp.floating):
        diagonals_KxD = diagonals_KxD.astype(jnp.result_type(float))
    gamma_diagonals_KxD = (n_context + 1) / n_context * diagonals_KxD + (
        jnp.sum(diagonals_KxD, axis=1, keepdims=True) / n_context
    )
    squared_KxD = diagonals_KxD**2
    a_diagonal_D = jnp.mean(squared_KxD, axis=0) / jnp.mean(gamma_diagonals_KxD * squared_KxD, axis=0)
    a_frobenius = jnp.sqrt(jnp.sum(a_diagonal_D**2))
    return _embed_blocks(a_frobenius**-0.5 * jnp.diag(a_diagonal_D), a_frobenius**0.5)
