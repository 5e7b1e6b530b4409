"""Sinusoidal embedding of a scalar per example (diffusion timesteps, noise levels).

For values v (batch,) and an even dimension D = 2h, frequencies f_k = max_period^(-k / h), k = 0 .. h - 1, and
    embedding(v) = [cos(v f_0), .., cos(v f_{h-1}), sin(v f_0), .., sin(v f_{h-1})]   (cosines first),
the layout of the DDPM / ADM timestep embedding.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp


def sinusoidal_embedding(values_B: jax.Array, dim: int, max_period: float = 10000.0) -> jax.Array:
    """(batch, dim) float32 embedding of (batch,) values; dim must be even."""
    if dim < 2 or dim % 2:
        raise ValueError(f"dim must be an even integer >= 2, got {dim!r}")
    values_B = jnp.asarray(values_B, jnp.float32)
    if values_B.ndim != 1:
        raise ValueError(f"values must have shape (batch,), got {values_B.shape}")
    half = dim // 2
    frequencies_H = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
    angles_BxH = values_B[:, None] * frequencies_H[None, :]
    return jnp.concatenate([jnp.cos(angles_BxH), jnp.sin(angles_BxH)], axis=-1)
