"""The rRCM network (Lei et al. 2025): a ViT told its input's noise level, with a projector for contrastive
pretraining and a linear head for fine-tuning.

Input: a noisy image x_t = x + t * eps with x in [-1, 1] (NHWC) and its level t (noise std in those units, one per
example or one for the batch). The network
  * multiplies x_t by c_in(t) = 1 / sqrt(t^2 + sigma_data^2) (sigma_data = 0.5),
  * embeds 250 * ln t sinusoidally (models/embeddings.py: cosines then sines, max period 10000) and projects it with one
    Dense layer to the ViT width: that vector is an extra token placed right after CLS,
  * runs the ViT (its own input normalisation is the identity: mean 0, std 1, because the data is in [-1, 1] already),
  * returns `RRCMOutput(projection, features, logits)`: features = the CLS token after the final LayerNorm,
    projection = projector(features) (None with project=False), logits = the ViT's linear head on CLS (None when the
    backbone has num_classes = 0, as in pretraining).
Projector: Dense-BN-ReLU, Dense-BN-ReLU (hidden 2048 by default; Dense without bias before BN, which has its own
shift), Dense without bias to 256. BatchNorm uses batch statistics with train=True (collection 'batch_stats').
"""

from __future__ import annotations

from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from robust_jax.models.embeddings import sinusoidal_embedding
from robust_jax.models.vit import VIT_SIZES, ViT, vit
from robust_jax.smoothing.methods.rrcm.noise_schedule import SIGMA_DATA, input_scale

LEVEL_EMBEDDING_SCALE = 250.0  # the level enters as 250 * ln(sigma), the consistency-model convention


class RRCMOutput(NamedTuple):
    projection: jax.Array | None  # (batch, projection_dim) float32, or None with project=False
    features: jax.Array  # (batch, width) float32: CLS after the final LayerNorm
    logits: jax.Array | None  # (batch, num_classes) float32, or None when the backbone has no head


def level_embedding(sigma_B: jax.Array, dim: int) -> jax.Array:
    """(batch, dim) sinusoidal embedding of 250 * ln(sigma) for noise levels sigma > 0."""
    return sinusoidal_embedding(LEVEL_EMBEDDING_SCALE * jnp.log(jnp.asarray(sigma_B, jnp.float32)), dim)


class Projector(nn.Module):
    """Dense-BN-ReLU, Dense-BN-ReLU, Dense (no bias)."""

    hidden_dim: int = 2048
    output_dim: int = 256
    batch_norm_momentum: float = 0.9
    batch_norm_epsilon: float = 1e-5

    @nn.compact
    def __call__(self, x_BxD: jax.Array, train: bool) -> jax.Array:
        for i in (1, 2):
            x_BxD = nn.Dense(self.hidden_dim, use_bias=False, name=f"fc{i}")(x_BxD)
            x_BxD = nn.BatchNorm(use_running_average=not train, momentum=self.batch_norm_momentum,
                                 epsilon=self.batch_norm_epsilon, name=f"bn{i}")(x_BxD)
            x_BxD = nn.relu(x_BxD)
        return nn.Dense(self.output_dim, use_bias=False, name="fc3")(x_BxD)


class RRCMNet(nn.Module):
    """`backbone` must be a ViT with one extra token and identity normalisation (see `rrcm_net`)."""

    backbone: ViT
    projection_dim: int = 256
    projector_hidden_dim: int = 2048
    level_embedding_dim: int = 256
    sigma_data: float = SIGMA_DATA

    def __post_init__(self):
        backbone = self.backbone
        if backbone.num_extra_tokens != 1:
            raise ValueError(f"backbone.num_extra_tokens={backbone.num_extra_tokens!r}: the rRCM backbone needs "
                             "exactly 1 extra token (the noise level)")
        if any(m != 0 for m in backbone.mean) or any(s != 1 for s in backbone.std):
            raise ValueError(f"backbone mean={backbone.mean!r}, std={backbone.std!r}: the rRCM backbone must not "
                             "normalise (mean 0, std 1); its input is c_in(sigma) * (x + sigma * eps), x in [-1, 1]")
        for name in ("projection_dim", "projector_hidden_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        if self.level_embedding_dim < 2 or self.level_embedding_dim % 2:
            raise ValueError(f"level_embedding_dim must be an even integer >= 2, got {self.level_embedding_dim!r}")
        super().__post_init__()

    @nn.compact
    def __call__(self, noisy_images_BxHxWxC: jax.Array, sigma, train: bool = False,
                 project: bool = True) -> RRCMOutput:
        batch = noisy_images_BxHxWxC.shape[0]
        sigma_B = jnp.broadcast_to(jnp.asarray(sigma, jnp.float32), (batch,))
        scaled_BxHxWxC = noisy_images_BxHxWxC * input_scale(sigma_B, self.sigma_data)[:, None, None, None]
        level_token_Bx1xD = nn.Dense(self.backbone.width, name="level_projection")(
            level_embedding(sigma_B, self.level_embedding_dim))[:, None, :]
        out = self.backbone(scaled_BxHxWxC, level_token_Bx1xD, train=train)
        projection = None
        if project:
            projection = Projector(self.projector_hidden_dim, self.projection_dim, name="projector")(
                out.features, train).astype(jnp.float32)
        return RRCMOutput(projection=projection, features=out.features, logits=out.logits)


def rrcm_net(size: str, *, num_classes: int = 0, image_size: int = 32, channels: int = 3,
             patch_size: int | None = None, projection_dim: int = 256, projector_hidden_dim: int = 2048,
             level_embedding_dim: int = 256, **vit_overrides) -> RRCMNet:
    """An rRCM network on a preset ViT: size 'Ti', 'S' or 'B' (ViT-B/4 at 32x32 is the CIFAR-10 model).

    num_classes = 0 for pretraining (no head), > 0 for fine-tuning. vit_overrides (width, depth, num_heads, mlp_dim,
    dropout_rate, dtype, ...) replace the preset's values, e.g. for a tiny test model.
    """
    if size not in VIT_SIZES:
        raise ValueError(f"backbone size={size!r} is not allowed; allowed: {sorted(VIT_SIZES)}")
    backbone = vit(size, num_classes, image_size=image_size, patch_size=patch_size, num_extra_tokens=1,
                   mean=(0.0,) * channels, std=(1.0,) * channels, **vit_overrides)
    return RRCMNet(backbone=backbone, projection_dim=projection_dim, projector_hidden_dim=projector_hidden_dim,
                   level_embedding_dim=level_embedding_dim)


def load_pretrained(params, pretrained_params):
    """`params` (e.g. a fine-tuning model's fresh parameters) with every leaf that `pretrained_params` also has
    replaced by the pretrained value. Leaves only `params` has (the classification head) keep their values; leaves only
    the pretrained tree has (the projector) are dropped. A shared leaf with a different shape is a ValueError."""

    def merge(fresh, old, path):
        if isinstance(fresh, dict) or hasattr(fresh, "items"):
            if not hasattr(old, "items"):
                return fresh
            return {name: merge(value, old[name], f"{path}/{name}") if name in old else value
                    for name, value in fresh.items()}
        if jnp.shape(fresh) != jnp.shape(old):
            raise ValueError(f"parameter {path or '/'} has shape {jnp.shape(fresh)} but the pretrained one has "
                             f"{jnp.shape(old)}")
        return jnp.asarray(old, jnp.result_type(fresh))

    return merge(params, pretrained_params, "")
