"""InfoNCE with in-batch negatives, and the EMA target network's update and rate schedule (rRCM pretraining).

InfoNCE(queries, keys): both L2-normalised, logits_ij = <q_i, k_j> / tau, loss = mean_i cross-entropy(logits_i, i):
example i's positive is key i and the other keys of the batch are its negatives. The functions work on global arrays:
inside a jitted step on a batch sharded over the mesh axis 'data', XLA gathers the keys so every query sees the
negatives of the whole global batch, not only its device's slice. (Under the trainer's micro-batches the negatives
are those of the micro-batch.)

EMA rate schedule (`EmaRateSchedule`), the official code's shape: from `start` s at step 0 towards `end` e at
`total_steps` D, with shape A (15 for CIFAR-10, 10 for ImageNet in the official configs):
    m(k) = sqrt(k / D * (e^2 - s^2) + s^2)  (k < D; e from D on),
    c(k) = 2 / (1 + exp(-A (m(k) - s) / (e - s))) - 1,
    rate(k) = c(k) e + (1 - c(k)) s,
so c rises like tanh(A u / 2) in u ~ k / D: at A = 15 the rate is within 4% of e's distance from s by a quarter of
the run. The official run ends at e = 0.9999 after 300k steps, an averaging horizon 1 / (1 - e) of 1/30 of the run;
`tied_ema_end(steps, horizon)` gives the end rate with that horizon for a run of `steps` (at least the start rate).
EMA update: target <- rate * target + (1 - rate) * online.
"""

from __future__ import annotations

import dataclasses
import numbers

import jax
import jax.numpy as jnp
import optax

TEMPERATURE = 0.2


def l2_normalize(x_BxD: jax.Array, eps: float = 1e-6) -> jax.Array:
    """x / max(||x||, eps) row by row, in float32."""
    x_BxD = x_BxD.astype(jnp.float32)
    norm_Bx1 = jnp.sqrt(jnp.sum(x_BxD ** 2, axis=-1, keepdims=True))
    return x_BxD / jnp.maximum(norm_Bx1, eps)


def info_nce(queries_BxD: jax.Array, keys_BxD: jax.Array, temperature: float = TEMPERATURE) -> jax.Array:
    """Mean InfoNCE loss of matching query i to key i among all keys of the batch (scalar float32)."""
    if queries_BxD.ndim != 2 or queries_BxD.shape != keys_BxD.shape:
        raise ValueError(f"queries and keys must both have shape (batch, dim); got {queries_BxD.shape} and "
                         f"{keys_BxD.shape}")
    logits_BxB = l2_normalize(queries_BxD) @ l2_normalize(keys_BxD).T / temperature
    labels_B = jnp.arange(queries_BxD.shape[0])
    return optax.softmax_cross_entropy_with_integer_labels(logits_BxB, labels_B).mean()


def symmetric_info_nce(online_1_BxD: jax.Array, online_2_BxD: jax.Array, target_1_BxD: jax.Array,
                       target_2_BxD: jax.Array, temperature: float = TEMPERATURE) -> jax.Array:
    """Two views of each image: InfoNCE(online_1, target_2) + InfoNCE(online_2, target_1).

    Each view's online output is matched to the target's output on the other view; the two directions are summed,
    as the official code sums them (so instance discrimination weighs 2:1 against one InfoNCE term). The targets are
    not differentiated (stop-gradient).
    """
    target_1_BxD, target_2_BxD = jax.lax.stop_gradient((target_1_BxD, target_2_BxD))
    return info_nce(online_1_BxD, target_2_BxD, temperature) + info_nce(online_2_BxD, target_1_BxD, temperature)


def tied_ema_end(steps: int, horizon: float, start: float) -> float:
    """The end rate whose averaging horizon 1 / (1 - rate) is `horizon` of a `steps`-step run, at least `start`
    (the official 0.9999 over 300k steps is horizon 1/30)."""
    if not 0 < horizon <= 1:
        raise ValueError(f"horizon must be a fraction of the run in (0, 1], got {horizon!r}")
    return max(float(start), 1.0 - 1.0 / (horizon * steps))


@dataclasses.dataclass(frozen=True)
class EmaRateSchedule:
    """rate(step): the EMA target's decay, the official schedule's shape (formula in the module docstring)."""

    total_steps: int
    start: float = 0.99
    end: float = 0.9999
    shape: float = 15.0

    def __post_init__(self):
        if isinstance(self.total_steps, bool) or not isinstance(self.total_steps, numbers.Integral) \
                or self.total_steps < 1:
            raise ValueError(f"total_steps must be an integer >= 1, got {self.total_steps!r}")
        for name in ("start", "end"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 <= value < 1:
                raise ValueError(f"{name} must be an EMA rate in [0, 1), got {value!r}")
        if self.end < self.start:
            raise ValueError(f"end={self.end!r} is below start={self.start!r}: the EMA rate only increases")
        if isinstance(self.shape, bool) or not isinstance(self.shape, numbers.Real) or self.shape <= 0:
            raise ValueError(f"shape must be a number > 0, got {self.shape!r}")

    def __call__(self, step) -> jax.Array:
        """The rate at `step` (int or traced), float32; steps from total_steps on keep the end rate."""
        start, end = self.start, self.end
        if end == start:
            return jnp.full((), start, jnp.float32)
        progress = jnp.asarray(step, jnp.float32) / self.total_steps
        m = jnp.where(progress < 1.0, jnp.sqrt(jnp.minimum(progress, 1.0) * (end ** 2 - start ** 2) + start ** 2),
                      end)
        c = 2.0 / (1.0 + jnp.exp(-self.shape * (m - start) / (end - start))) - 1.0
        return (c * end + (1.0 - c) * start).astype(jnp.float32)


def ema_update(target_params, online_params, rate) -> object:
    """rate * target + (1 - rate) * online, leaf by leaf; the online parameters are not differentiated through."""
    online_params = jax.lax.stop_gradient(online_params)
    return jax.tree.map(lambda target, online: (rate * target + (1.0 - rate) * online).astype(target.dtype),
                        target_params, online_params)
