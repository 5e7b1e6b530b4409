"""A small convolutional classifier for small images (the digits study, and a quick base classifier to smooth)."""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax.numpy as jnp


class SmallCNN(nn.Module):
    """conv3x3-relu blocks (each followed by 2x2 average pooling but the first), a hidden dense layer, logits.

    Takes images in [0, 1]; the normalisation (x - mean) / std is part of the model, so a smoothed classifier adds
    its noise to the raw [0, 1] input.
    """

    num_classes: int
    features: Sequence[int] = (32, 64)
    hidden: int = 128
    mean: float = 0.5
    std: float = 0.5
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, images_BxHxWxC: jnp.ndarray) -> jnp.ndarray:
        x = ((images_BxHxWxC - self.mean) / self.std).astype(self.dtype)
        for i, width in enumerate(self.features):
            x = nn.relu(nn.Conv(width, (3, 3), dtype=self.dtype, name=f"conv{i}")(x))
            if i > 0:
                x = nn.avg_pool(x, (2, 2), strides=(2, 2))
        x = x.reshape(x.shape[0], -1)
        x = nn.relu(nn.Dense(self.hidden, dtype=self.dtype, name="hidden")(x))
        return nn.Dense(self.num_classes, dtype=self.dtype, name="logits")(x).astype(jnp.float32)
