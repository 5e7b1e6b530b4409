"""In-context linear regression prompts, sampled on device, and the distribution shifts studied on them.

A prompt is (x₁, y₁, …, x_M, y_M, x_q) with a task w ~ N(0, I_d), covariates x ~ N(0, Λ) and labels
yᵢ = <w, xᵢ> (ZFB, Garg et al.). `PromptSpec` describes the prompt distribution with independent fields
(covariates, query, labels); `apply_shift` turns a training spec into a shifted test spec by name:

  task shift       "noisy_labels" (label_noise_std), "nonlinear_labels" (`nonlinear_label`)
  query shift      "query_orthogonal", "query_other_distribution"
  covariate shift  "scale" (by c), "skewed", "subspace", "orthant"
  prompt length    "prompt_length" (M ≠ N context examples)

Every prompt of a batch is drawn from `jax.random.fold_in(key, index)`, so prompt i does not depend on the
batch size or on how the batch is split over devices. Shapes are static: the spec is a hashable frozen
dataclass, validated when it is built, i.e. before anything is compiled.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import NamedTuple, Union

import jax
import jax.numpy as jnp
import numpy as np

from robust_jax.core import checks

COVARIANCE_KINDS = ("identity", "random_diagonal")
COVARIATE_SHIFTS = ("none", "skewed", "subspace", "orthant")
QUERY_KINDS = ("same", "orthogonal", "other_distribution")
LABEL_KINDS = ("linear", "nonlinear")
SHIFT_NAMES = (
    "noisy_labels",
    "nonlinear_labels",
    "query_orthogonal",
    "query_other_distribution",
    "scale",
    "skewed",
    "subspace",
    "orthant",
    "prompt_length",
)

Covariance = Union[str, tuple]


def nonlinear_label(projection, dim: int):
    """The fixed nonlinearity of "nonlinear" labels: y = √d · tanh(<w, x> / √d).

    Odd (so no intercept is needed) and ≈ identity for |<w, x>| ≪ √d, while saturating on the typical scale
    √d of <w, x>. By Stein's lemma the best linear predictor of y from Gaussian x is E[tanh'(s/√d)] · w with
    s = <w, x>: a shrunk version of w, which is what a model that tolerates the task shift should approach.
    """
    root_dim = math.sqrt(dim)
    return root_dim * jnp.tanh(projection / root_dim)


def skewed_eigenvalues(dim: int) -> np.ndarray:
    """Eigenvalues ∝ 1/i² (i = 1..d), normalised so that they sum to d (the trace of the identity)."""
    inverse_squares = 1.0 / np.arange(1, dim + 1, dtype=np.float64) ** 2
    return dim * inverse_squares / inverse_squares.sum()


@dataclasses.dataclass(frozen=True)
class PromptSpec:
    """The distribution of one prompt.

    dim: covariate dimension d >= 1.
    n_context: number of labelled context examples (N when training, M at test), >= 1.
    covariance: Λ of the context covariates: "identity", "random_diagonal" (a fresh Λ = diag(λ) per prompt,
      λᵢ i.i.d. Exponential(1)) or a symmetric positive definite (d, d) matrix (stored as nested tuples so
      the spec stays hashable).
    covariate_scale: c > 0; covariates are multiplied by c (their covariance by c²).
    covariate_shift: "none"; "skewed": Λ = Q diag(λ) Qᵀ with a random orthogonal Q per prompt and λᵢ ∝ 1/i²,
      Σλ = d; "subspace": x in a random ⌊d/2⌋-dimensional subspace per prompt, covariance (d/k) U Uᵀ
      (trace d); "orthant": context covariates folded into one random orthant per prompt (the query is not).
      "skewed" and "subspace" define Λ themselves and need covariance "identity".
    query: "same" (distributed as the context); "orthogonal": projected onto the orthogonal complement of
      span{xᵢ} and rescaled by √(d/(d−M)) so that E||x_q||² is kept for isotropic covariates (needs M < d);
      "other_distribution": x_q ~ N(0, c² S) with S a skewed covariance (random basis drawn independently of
      the context).
    labels: "linear" yᵢ = <w, xᵢ>, or "nonlinear" yᵢ = `nonlinear_label`(<w, xᵢ>).
    label_noise_std: standard deviation of Gaussian noise added to the context and query labels, >= 0.
    """

    dim: int
    n_context: int
    covariance: Covariance = "identity"
    covariate_scale: float = 1.0
    covariate_shift: str = "none"
    query: str = "same"
    labels: str = "linear"
    label_noise_std: float = 0.0

    def __post_init__(self):
        for name in ("dim", "n_context"):
            object.__setattr__(self, name, checks.check_int(f"PromptSpec.{name}", getattr(self, name), minimum=1))
        object.__setattr__(self, "covariance", self._checked_covariance(self.covariance))
        object.__setattr__(self, "covariate_scale",
                           checks.check_float("PromptSpec.covariate_scale", self.covariate_scale, positive=True))
        object.__setattr__(self, "label_noise_std",
                           checks.check_float("PromptSpec.label_noise_std", self.label_noise_std, non_negative=True))
        for name, allowed in (
            ("covariate_shift", COVARIATE_SHIFTS),
            ("query", QUERY_KINDS),
            ("labels", LABEL_KINDS),
        ):
            if getattr(self, name) not in allowed:
                raise ValueError(f"PromptSpec.{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if self.covariate_shift in ("skewed", "subspace") and self.covariance != "identity":
            raise ValueError(
                f"PromptSpec.covariate_shift={self.covariate_shift!r} defines the covariance itself and needs "
                f"covariance='identity', got covariance={self._covariance_description()}"
            )
        if self.covariate_shift == "subspace" and self.dim < 2:
            raise ValueError(f"PromptSpec.covariate_shift='subspace' needs dim >= 2, got dim={self.dim}")
        if self.query == "orthogonal" and self.n_context >= self.dim:
            raise ValueError(
                "PromptSpec.query='orthogonal' needs n_context < dim (otherwise the context spans R^d), "
                f"got n_context={self.n_context}, dim={self.dim}"
            )

    def _checked_covariance(self, covariance) -> Covariance:
        if isinstance(covariance, str):
            if covariance not in COVARIANCE_KINDS:
                raise ValueError(
                    f"PromptSpec.covariance must be one of {COVARIANCE_KINDS} or a (d, d) positive definite "
                    f"matrix, got {covariance!r}"
                )
            return covariance
        matrix = np.asarray(covariance, dtype=np.float64)
        if matrix.shape != (self.dim, self.dim):
            raise ValueError(
                f"PromptSpec.covariance must have shape (dim, dim) = ({self.dim}, {self.dim}), got {matrix.shape}"
            )
        if not np.all(np.isfinite(matrix)):
            raise ValueError("PromptSpec.covariance must be finite")
        if not np.allclose(matrix, matrix.T, rtol=0.0, atol=1e-8 * max(np.abs(matrix).max(), 1e-30)):
            raise ValueError("PromptSpec.covariance must be symmetric")
        min_eigenvalue = np.linalg.eigvalsh(matrix).min()
        if min_eigenvalue <= 0.0:
            raise ValueError(
                f"PromptSpec.covariance must be positive definite, smallest eigenvalue is {min_eigenvalue:.3g}"
            )
        return tuple(tuple(float(entry) for entry in row) for row in matrix)

    def _covariance_description(self) -> str:
        return repr(self.covariance) if isinstance(self.covariance, str) else f"a ({self.dim}, {self.dim}) matrix"

    @property
    def covariance_matrix(self) -> np.ndarray | None:
        """Λ as a float64 array when the spec has a fixed matrix, else None."""
        return None if isinstance(self.covariance, str) else np.asarray(self.covariance, dtype=np.float64)


def apply_shift(spec: PromptSpec, shift: str, *, c: float | None = None, noise_std: float | None = None,
                n_context: int | None = None) -> PromptSpec:
    """The test distribution obtained from `spec` by the named shift (see the module docstring).

    "scale" needs c (covariates multiplied by c), "noisy_labels" needs noise_std, "prompt_length" needs
    n_context (the test prompt length M); the other shifts take no value.
    """
    if not isinstance(spec, PromptSpec):
        raise ValueError(f"spec must be a PromptSpec, got {type(spec).__name__}")
    if shift not in SHIFT_NAMES:
        raise ValueError(f"shift must be one of {SHIFT_NAMES}, got {shift!r}")
    needed = {"scale": ("c", c), "noisy_labels": ("noise_std", noise_std), "prompt_length": ("n_context", n_context)}
    if shift in needed and needed[shift][1] is None:
        raise ValueError(f"shift={shift!r} needs {needed[shift][0]}=...")
    if shift == "scale":
        return dataclasses.replace(spec, covariate_scale=spec.covariate_scale * _positive("c", c))
    if shift == "noisy_labels":
        return dataclasses.replace(spec, label_noise_std=noise_std)
    if shift == "prompt_length":
        return dataclasses.replace(spec, n_context=n_context)
    if shift == "nonlinear_labels":
        return dataclasses.replace(spec, labels="nonlinear")
    if shift == "query_orthogonal":
        return dataclasses.replace(spec, query="orthogonal")
    if shift == "query_other_distribution":
        return dataclasses.replace(spec, query="other_distribution")
    return dataclasses.replace(spec, covariate_shift=shift)


def _positive(name: str, value) -> float:
    return checks.check_float(name, value, positive=True)


class Prompts(NamedTuple):
    """A batch of B prompts with M context examples each (a pytree of arrays).

    w_BxD is the task; context_covariance_BxDxD is the covariance of the Gaussian the context covariates
    come from (before any orthant folding), c² included. y_query_B is the query label drawn like the context
    labels (noise, nonlinearity); `target_B` is the noiseless linear target <w, x_q> used by ZFB's loss and
    Garg's normalised error.
    """

    xs_BxMxD: jax.Array
    ys_BxM: jax.Array
    x_query_BxD: jax.Array
    y_query_B: jax.Array
    w_BxD: jax.Array
    context_covariance_BxDxD: jax.Array

    @property
    def target_B(self) -> jax.Array:
        return jnp.einsum("bd,bd->b", self.w_BxD, self.x_query_BxD)


class _GaussianDraws:
    """Hands out consecutive slices of one vector of i.i.d. N(0, 1) draws.

    One prompt uses a single `jax.random.normal` call: each random-bit generator call site costs seconds of
    XLA compilation on CPU, and every other distribution needed here is a function of Gaussians.
    """

    def __init__(self, key, size: int):
        self._values = jax.random.normal(key, (size,))
        self._offset = 0

    def take(self, shape: tuple[int, ...]) -> jax.Array:
        size = math.prod(shape)
        values = self._values[self._offset : self._offset + size].reshape(shape)
        self._offset += size
        return values


def _gaussian_draw_count(spec: PromptSpec) -> int:
    """How many N(0, 1) draws one prompt of `spec` consumes (must match `_sample_one_prompt`)."""
    dim, n_context = spec.dim, spec.n_context
    count = dim + n_context * dim + dim + (n_context + 1)  # task, context, query, label noise
    if spec.covariate_shift in ("skewed", "subspace"):
        count += dim * dim
    elif spec.covariance == "random_diagonal":
        count += 2 * dim
    if spec.covariate_shift == "orthant":
        count += dim
    if spec.query == "other_distribution":
        count += dim * dim
    return count


def random_orthogonal(gaussian_DxD) -> jax.Array:
    """A Haar-distributed orthogonal matrix from a dxd standard Gaussian matrix (QR with the signs of R fixed)."""
    q_DxD, r_DxD = jnp.linalg.qr(gaussian_DxD)
    return q_DxD * jnp.where(jnp.diagonal(r_DxD) < 0, -1.0, 1.0)[None, :]


def _skewed_factor(gaussian_DxD) -> jax.Array:
    """L with L Lᵀ = Q diag(λ) Qᵀ, λ from `skewed_eigenvalues`, Q random orthogonal."""
    dim = gaussian_DxD.shape[0]
    sqrt_eigenvalues_D = jnp.asarray(np.sqrt(skewed_eigenvalues(dim)), dtype=gaussian_DxD.dtype)
    return random_orthogonal(gaussian_DxD) * sqrt_eigenvalues_D[None, :]


def _context_factor(draws: _GaussianDraws, spec: PromptSpec) -> jax.Array:
    """A dxd L with context covariates x = L z, z ~ N(0, I): covariance L Lᵀ."""
    dim = spec.dim
    float_dtype = jnp.result_type(float)
    if spec.covariate_shift == "skewed":
        factor_DxD = _skewed_factor(draws.take((dim, dim)))
    elif spec.covariate_shift == "subspace":
        rank = dim // 2
        keep_columns_D = (jnp.arange(dim) < rank).astype(float_dtype)
        factor_DxD = math.sqrt(dim / rank) * random_orthogonal(draws.take((dim, dim))) * keep_columns_D[None, :]
    elif spec.covariance == "identity":
        factor_DxD = jnp.eye(dim, dtype=float_dtype)
    elif spec.covariance == "random_diagonal":
        # (z₁² + z₂²)/2 ~ χ²₂/2 = Exponential(1).
        exponential_D = 0.5 * jnp.sum(draws.take((2, dim)) ** 2, axis=0)
        factor_DxD = jnp.diag(jnp.sqrt(exponential_D))
    else:
        factor_DxD = jnp.asarray(np.linalg.cholesky(spec.covariance_matrix), dtype=float_dtype)
    return spec.covariate_scale * factor_DxD


def _labels(spec: PromptSpec, noise_M1, xs_M1xD, w_D) -> jax.Array:
    projections_M1 = xs_M1xD @ w_D
    if spec.labels == "nonlinear":
        projections_M1 = nonlinear_label(projections_M1, spec.dim)
    return projections_M1 + spec.label_noise_std * noise_M1


def _sample_one_prompt(key, spec: PromptSpec):
    """One prompt with M+1 labelled points; the last one is the query."""
    dim, n_context = spec.dim, spec.n_context
    draws = _GaussianDraws(key, _gaussian_draw_count(spec))
    w_D = draws.take((dim,))
    factor_DxD = _context_factor(draws, spec)
    xs_MxD = draws.take((n_context, dim)) @ factor_DxD.T
    if spec.covariate_shift == "orthant":
        orthant_signs_D = jnp.where(draws.take((dim,)) < 0, -1.0, 1.0)
        xs_MxD = jnp.abs(xs_MxD) * orthant_signs_D[None, :]

    query_noise_D = draws.take((dim,))
    if spec.query == "other_distribution":
        x_query_D = spec.covariate_scale * _skewed_factor(draws.take((dim, dim))) @ query_noise_D
    else:
        x_query_D = factor_DxD @ query_noise_D
    if spec.query == "orthogonal":
        context_basis_DxM, _ = jnp.linalg.qr(xs_MxD.T)
        x_query_D = x_query_D - context_basis_DxM @ (context_basis_DxM.T @ x_query_D)
        x_query_D = math.sqrt(dim / (dim - n_context)) * x_query_D

    points_M1xD = jnp.concatenate([xs_MxD, x_query_D[None, :]])
    labels_M1 = _labels(spec, draws.take((n_context + 1,)), points_M1xD, w_D)
    return xs_MxD, labels_M1[:-1], x_query_D, labels_M1[-1], w_D, factor_DxD @ factor_DxD.T


def prompts_at(key, spec: PromptSpec, indices_B) -> Prompts:
    """The prompts with these indices: prompt i uses `jax.random.fold_in(key, i)`, whatever batch it is in.

    For use inside a jitted step whose batch is a sharded vector of example indices: each device then draws
    only its own prompts, and the batch is the same for any device or process count.
    """
    return Prompts(*jax.vmap(lambda index: _sample_one_prompt(jax.random.fold_in(key, index), spec))(indices_B))


@functools.partial(jax.jit, static_argnames=("spec", "batch_size"))
def _sample_prompts_compiled(key, spec: PromptSpec, batch_size: int) -> Prompts:
    return prompts_at(key, spec, jnp.arange(batch_size))


def sample_prompts(key, spec: PromptSpec, batch_size: int) -> Prompts:
    """`batch_size` prompts from `spec`; prompt i uses `jax.random.fold_in(key, i)`.

    Compiled once per (spec, batch_size); may also be called inside a jitted step.
    """
    if not isinstance(spec, PromptSpec):
        raise ValueError(f"spec must be a PromptSpec, got {type(spec).__name__}")
    return _sample_prompts_compiled(key, spec, checks.check_int("batch_size", batch_size, minimum=1))
