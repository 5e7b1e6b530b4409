"""VIFormer: the small transformer that Omniview-Tuning puts after the frozen CLIP image tower.

The image embedding z (B, E) is read as a one-token sequence (B, 1, E) and passed through a 2-layer transformer
encoder with d_model = E, 4 heads and an MLP of width 2048; the viewpoint-invariant embedding is

    normalise(z + residual_scale * VIFormer(z)),      residual_scale = 0.1.

The layers are post-LayerNorm, x = LN(x + attn(x)) then x = LN(x + mlp(x)), with ReLU: the defaults of
torch.nn.TransformerEncoderLayer, which a "2-layer transformer encoder" describes, under the same parameter names
(self_attn.in_proj / out_proj, linear1, linear2, norm1, norm2) so converted weights map one to one. Dropout is not
modelled (the embedding is deterministic). With one token, softmax attention over a single key is 1, so attention
reduces to out_proj(value projection); the query and key projections are still parameters (and are counted).

Post-norm means VIFormer(z) is a LayerNorm output (per-example mean 0, RMS about 1 per feature), not a small
correction: its norm is about sqrt(E) at initialisation, whatever the scale of z. So the scale of z decides how far a
fresh VIFormer moves the embedding: for E = 512 (random z, fresh VIFormer) the output's cosine with z is about 0.64
when |z| = 1 and about 0.98 when |z| = 10. Feed the image tower's unnormalised output, as `CLIP.encode_image` gives it.
"""

from __future__ import annotations

import functools
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from robust_jax.models.clip import MultiHeadSelfAttention, l2_normalize, quick_gelu

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "relu": jax.nn.relu,
    "gelu": functools.partial(jax.nn.gelu, approximate=False),
    "quick_gelu": quick_gelu,
}


class PostNormEncoderLayer(nn.Module):
    """x = LN(x + attn(x)); x = LN(x + linear2(act(linear1(x)))): (B, L, D) -> (B, L, D)."""

    heads: int
    mlp_dim: int
    activation: str = "relu"
    layer_norm_eps: float = 1e-5

    @nn.compact
    def __call__(self, x_BxLxD: jax.Array) -> jax.Array:
        width = x_BxLxD.shape[-1]
        attended_BxLxD = MultiHeadSelfAttention(self.heads, name="self_attn")(x_BxLxD, causal=False)
        x_BxLxD = nn.LayerNorm(epsilon=self.layer_norm_eps, name="norm1")(x_BxLxD + attended_BxLxD)
        h_BxLxF = ACTIVATIONS[self.activation](nn.Dense(self.mlp_dim, name="linear1")(x_BxLxD))
        h_BxLxD = nn.Dense(width, name="linear2")(h_BxLxF)
        return nn.LayerNorm(epsilon=self.layer_norm_eps, name="norm2")(x_BxLxD + h_BxLxD)


class VIFormer(nn.Module):
    """`__call__(z_BxE)` is the encoder's output VIFormer(z) (B, E); `viewpoint_invariant_embedding(z_BxE)` is the
    unit-norm normalise(z + residual_scale * VIFormer(z)). E is read from the input."""

    layers: int = 2
    heads: int = 4
    mlp_dim: int = 2048
    activation: str = "relu"
    residual_scale: float = 0.1
    layer_norm_eps: float = 1e-5

    @nn.compact
    def __call__(self, z_BxE: jax.Array) -> jax.Array:
        if z_BxE.ndim != 2:
            raise ValueError(f"z has shape {z_BxE.shape}; expected (batch, embed_dim) image embeddings")
        if z_BxE.shape[-1] % self.heads:
            raise ValueError(f"embed_dim={z_BxE.shape[-1]} must be divisible by heads={self.heads}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation={self.activation!r} is not supported; allowed: {sorted(ACTIVATIONS)}")
        x_Bx1xE = z_BxE[:, None, :]
        for i in range(self.layers):
            x_Bx1xE = PostNormEncoderLayer(self.heads, self.mlp_dim, self.activation, self.layer_norm_eps,
                                           name=f"layers_{i}")(x_Bx1xE)
        return x_Bx1xE[:, 0, :]

    def viewpoint_invariant_embedding(self, z_BxE: jax.Array) -> jax.Array:
        z_BxE = z_BxE.astype(jnp.float32)
        return l2_normalize(z_BxE + self.residual_scale * self(z_BxE))


def viewpoint_invariant_embedding(viformer: VIFormer, viformer_params, z_BxE: jax.Array) -> jax.Array:
    """normalise(z + residual_scale * VIFormer(z)) for a VIFormer and its variables {'params': ...}."""
    return viformer.apply(viformer_params, z_BxE, method=VIFormer.viewpoint_invariant_embedding)
