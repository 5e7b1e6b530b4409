"""Garg et al.'s in-context regression transformer: a GPT-2 backbone reading (x₁, y₁, …, x_P, y_P) as 2P tokens.

Each x and each y is its own token: y is zero-padded to length d, the 2P tokens pass a Linear(d → n_embd) read-in,
the causal GPT-2 backbone (`robust_jax.models.transformer`) and a Linear(n_embd → 1) read-out taken at the x
positions, so the output at x_i predicts y_i from x₁, y₁, …, x_{i−1}, y_{i−1}, x_i (causal attention keeps y_i out
of its own prediction). Training minimises the squared error averaged over all P prefixes (i − 1 = 0 … P − 1
in-context examples) on fresh prompts every step, with Garg's curriculum on the active dimension and the prompt
length (`Curriculum`). Sizes: `GPT2_SIZES` (tiny 3/2/64, small 6/4/128, standard 12/8/256 layers/heads/embd).

The curriculum is compiled once: prompts always have the final length `points_end`, and the loss is masked to the
first `n_points` positions. Causal attention makes the later tokens irrelevant to the earlier predictions, so this is
exactly training on prompts of n_points points. Inactive coordinates of x are zeroed and the labels recomputed
from the zeroed x, as Garg does.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from robust_jax.core import checks
from robust_jax.icl.evaluate import normalized_squared_error
from robust_jax.icl.tasks import Prompts, PromptSpec, prompts_at
from robust_jax.models.transformer import CausalTransformer

Dtype = Any

GPT2_SIZES = {
    "tiny": dict(n_layer=3, n_head=2, n_embd=64),
    "small": dict(n_layer=6, n_head=4, n_embd=128),
    "standard": dict(n_layer=12, n_head=8, n_embd=256),
}


def interleave(xs_BxPxD, ys_BxP) -> jax.Array:
    """The 2P-token sequence x₁, (y₁, 0, …, 0), x₂, … of shape (B, 2P, d)."""
    padded_ys_BxPxD = jnp.zeros_like(xs_BxPxD).at[..., 0].set(ys_BxP)
    return jnp.stack([xs_BxPxD, padded_ys_BxPxD], axis=2).reshape(xs_BxPxD.shape[0], -1, xs_BxPxD.shape[-1])


class InContextGPT2(nn.Module):
    """(xs (B, P, d), ys (B, P)) -> predictions (B, P); prediction i is read at x_i and sees only earlier labels.

    dim: d. max_points: the longest prompt P it accepts (the backbone has 2·max_points positions).
    """

    dim: int
    max_points: int
    n_layer: int = 3
    n_head: int = 2
    n_embd: int = 64
    dtype: Dtype = jnp.float32

    def __post_init__(self):
        for name in ("dim", "max_points"):
            checks.check_int(f"InContextGPT2.{name}", getattr(self, name), minimum=1)
        super().__post_init__()

    @nn.compact
    def __call__(self, xs_BxPxD: jax.Array, ys_BxP: jax.Array) -> jax.Array:
        batch, points, dim = xs_BxPxD.shape
        if dim != self.dim or ys_BxP.shape != (batch, points):
            raise ValueError(f"expected xs (B, P, {self.dim}) and ys (B, P), got {xs_BxPxD.shape} and {ys_BxP.shape}")
        if points > self.max_points:
            raise ValueError(f"prompt has {points} points, more than max_points={self.max_points}")
        # The read-in is Linear(d -> n_embd) on every token; a y token is (y, 0, ..., 0), so its embedding is
        # y · kernel[0] + bias and the zero padding never has to be multiplied.
        kernel_DxE = self.param("read_in_kernel", nn.initializers.lecun_normal(), (dim, self.n_embd))
        bias_E = self.param("read_in_bias", nn.initializers.zeros, (self.n_embd,))
        x_embeds_BxPxE = xs_BxPxD @ kernel_DxE + bias_E
        y_embeds_BxPxE = ys_BxP[..., None] * kernel_DxE[0] + bias_E
        embeds_BxTxE = jnp.stack([x_embeds_BxPxE, y_embeds_BxPxE], axis=2).reshape(batch, 2 * points, self.n_embd)
        hidden_BxTxE = CausalTransformer(
            n_positions=2 * self.max_points, n_embd=self.n_embd, n_layer=self.n_layer, n_head=self.n_head,
            dtype=self.dtype, name="backbone",
        )(embeds_BxTxE, output_positions=slice(0, None, 2))  # only the x positions are read out
        at_x_BxPxE = hidden_BxTxE
        return nn.Dense(1, name="read_out")(at_x_BxPxE)[..., 0]


def gpt2_model(size: str, dim: int, max_points: int, dtype: Dtype = jnp.float32) -> InContextGPT2:
    """The model of a named size (`GPT2_SIZES`) for prompts of up to max_points points in dimension dim."""
    if size not in GPT2_SIZES:
        raise ValueError(f"size must be one of {tuple(GPT2_SIZES)}, got {size!r}")
    return InContextGPT2(dim=dim, max_points=max_points, dtype=dtype, **GPT2_SIZES[size])


@dataclasses.dataclass(frozen=True)
class Curriculum:
    """Garg's curriculum: every `interval` steps the active dimension grows by dims_increment (up to dims_end)
    and the prompt length by points_increment (up to points_end). `Curriculum.garg(d)` is theirs:
    dimension 5 → d (+1), points 11 → 2d + 1 (+2), every 2000 steps (starts clipped to the ends for d < 5)."""

    dims_start: int
    dims_end: int
    points_start: int
    points_end: int
    dims_increment: int = 1
    points_increment: int = 2
    interval: int = 2000

    def __post_init__(self):
        for field in dataclasses.fields(self):
            minimum = 1 if field.name in ("dims_start", "dims_end", "points_start", "points_end", "interval") else 0
            checks.check_int(f"Curriculum.{field.name}", getattr(self, field.name), minimum=minimum)
        if self.dims_start > self.dims_end:
            raise ValueError(f"Curriculum.dims_start={self.dims_start} exceeds dims_end={self.dims_end}")
        if self.points_start > self.points_end:
            raise ValueError(f"Curriculum.points_start={self.points_start} exceeds points_end={self.points_end}")

    @classmethod
    def garg(cls, dim: int, points_end: int | None = None) -> "Curriculum":
        points_end = 2 * dim + 1 if points_end is None else points_end
        return cls(dims_start=min(5, dim), dims_end=dim, points_start=min(11, points_end), points_end=points_end)

    @classmethod
    def fixed(cls, dim: int, n_points: int) -> "Curriculum":
        """No curriculum: all dim coordinates and n_points points from the first step."""
        return cls(dims_start=dim, dims_end=dim, points_start=n_points, points_end=n_points)


def curriculum_at(step, curriculum: Curriculum):
    """(active_dims, n_points) at `step`: Python ints for an int step, int32 arrays for a traced one."""
    stage = step // curriculum.interval
    if isinstance(step, (int, np.integer)):
        return (min(curriculum.dims_end, curriculum.dims_start + curriculum.dims_increment * int(stage)),
                min(curriculum.points_end, curriculum.points_start + curriculum.points_increment * int(stage)))
    stage = jnp.asarray(stage, jnp.int32)
    return (jnp.minimum(curriculum.dims_end, curriculum.dims_start + curriculum.dims_increment * stage),
            jnp.minimum(curriculum.points_end, curriculum.points_start + curriculum.points_increment * stage))


def prompt_points(prompts: Prompts) -> tuple[jax.Array, jax.Array]:
    """A prompt's M context examples and its query as M + 1 labelled points (xs (B, M+1, d), ys (B, M+1))."""
    xs_BxPxD = jnp.concatenate([prompts.xs_BxMxD, prompts.x_query_BxD[:, None]], axis=1)
    ys_BxP = jnp.concatenate([prompts.ys_BxM, prompts.y_query_B[:, None]], axis=1)
    return xs_BxPxD, ys_BxP


def curriculum_points(key, spec: PromptSpec, batch_size: int, active_dims) -> tuple[jax.Array, jax.Array]:
    """`batch_size` prompts of spec.n_context + 1 points with only the first active_dims coordinates of x non-zero
    and labels yᵢ = <w, xᵢ> of the zeroed x (Garg's curriculum; `spec` must have linear noiseless labels)."""
    return curriculum_points_at(key, spec, jnp.arange(batch_size), active_dims)


def curriculum_points_at(key, spec: PromptSpec, indices_B, active_dims) -> tuple[jax.Array, jax.Array]:
    """`curriculum_points` for the prompts with these indices (prompt i from fold_in(key, i)): a batch of indices
    sharded over devices gives each device its own prompts."""
    prompts = prompts_at(key, spec, indices_B)
    xs_BxPxD, _ = prompt_points(prompts)
    active_D = (jnp.arange(spec.dim) < active_dims).astype(xs_BxPxD.dtype)
    xs_BxPxD = xs_BxPxD * active_D
    return xs_BxPxD, jnp.einsum("bpd,bd->bp", xs_BxPxD, prompts.w_BxD)


def prefix_loss(predictions_BxP, ys_BxP, n_points=None) -> jax.Array:
    """Squared error averaged over the prompts and over the first n_points prefixes (all P when None)."""
    squared_errors_BxP = (predictions_BxP - ys_BxP) ** 2
    if n_points is None:
        return jnp.mean(squared_errors_BxP)
    used_P = (jnp.arange(ys_BxP.shape[1]) < n_points).astype(squared_errors_BxP.dtype)
    return jnp.sum(squared_errors_BxP * used_P) / (ys_BxP.shape[0] * jnp.asarray(n_points, squared_errors_BxP.dtype))


def check_training_spec(model: InContextGPT2, spec: PromptSpec, curriculum: Curriculum) -> None:
    if not isinstance(spec, PromptSpec):
        raise ValueError(f"spec must be a PromptSpec, got {type(spec).__name__}")
    if spec.labels != "linear" or spec.label_noise_std != 0.0:
        raise ValueError(
            f"training spec must have linear noiseless labels (the curriculum recomputes them), got "
            f"labels={spec.labels!r}, label_noise_std={spec.label_noise_std}"
        )
    if spec.dim != model.dim or curriculum.dims_end != model.dim:
        raise ValueError(
            f"spec.dim={spec.dim} and curriculum.dims_end={curriculum.dims_end} must equal the model's dim={model.dim}"
        )
    if spec.n_context + 1 != curriculum.points_end:
        raise ValueError(
            f"spec.n_context + 1 = {spec.n_context + 1} must equal curriculum.points_end={curriculum.points_end}"
        )
    if curriculum.points_end > model.max_points:
        raise ValueError(f"curriculum.points_end={curriculum.points_end} exceeds model.max_points={model.max_points}")


def training_functions(model: InContextGPT2, spec: PromptSpec, curriculum: Curriculum) -> tuple[Callable, Callable]:
    """(init_fn, loss_fn) for `robust_jax.core.train.train`, Garg et al.'s recipe: fresh prompts every step, drawn
    on device for the batch's prompt indices (prompt i from fold_in(key, i), `IndexBatches`), the curriculum at the
    step, the squared error over all prefixes. spec gives the prompt distribution at the curriculum's final size
    (spec.n_context + 1 = points_end). The ICL study trains with exactly these functions, and
    `experiments/benchmarks/icl_throughput.py` times the step the core compiles from them."""
    check_training_spec(model, spec, curriculum)
    points = curriculum.points_end

    def init_fn(key):
        return model.init(key, jnp.zeros((1, points, spec.dim)), jnp.zeros((1, points))), {}

    def loss_fn(params, model_state, batch, key, step, constants):
        del constants
        active_dims, n_points = curriculum_at(step, curriculum)
        xs_BxPxD, ys_BxP = curriculum_points_at(key, spec, batch["index"], active_dims)
        loss = prefix_loss(model.apply(params, xs_BxPxD, ys_BxP), ys_BxP, n_points)
        return loss, ({"active_dims": active_dims, "n_points": n_points}, model_state)

    return init_fn, loss_fn


@functools.partial(jax.jit, static_argnames="model")
def prefix_errors(model: InContextGPT2, params, prompts: Prompts) -> jax.Array:
    """Normalised squared error (ŷ − <w, x>)²/d of the prediction at every point of the prompts, (B, M + 1):
    column k has k in-context examples (the last column is the query)."""
    xs_BxPxD, ys_BxP = prompt_points(prompts)
    predictions_BxP = model.apply(params, xs_BxPxD, ys_BxP)
    return _normalized_errors(predictions_BxP, prompts.w_BxD, xs_BxPxD)


def baseline_prefix_errors(estimator: Callable, prompts: Prompts) -> jax.Array:
    """`prefix_errors` of a baseline from `robust_jax.icl.baselines` (estimator(xs, ys, x_query) -> ŷ) on the same
    prompts: column k uses the first k examples to predict point k + 1; with k = 0 every estimator predicts 0."""
    xs_BxPxD, ys_BxP = prompt_points(prompts)
    predictions = [jnp.zeros_like(ys_BxP[:, 0])]
    for k in range(1, xs_BxPxD.shape[1]):
        predictions.append(estimator(xs_BxPxD[:, :k], ys_BxP[:, :k], xs_BxPxD[:, k]))
    return _normalized_errors(jnp.stack(predictions, axis=1), prompts.w_BxD, xs_BxPxD)


def _normalized_errors(predictions_BxP, w_BxD, xs_BxPxD) -> jax.Array:
    per_point = jax.vmap(normalized_squared_error, in_axes=(1, None, 1), out_axes=1)
    return per_point(predictions_BxP, w_BxD, xs_BxPxD)
