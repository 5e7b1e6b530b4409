"""Vision Transformer (Dosovitskiy et al., 2021) in Flax Linen, with room for extra tokens next to CLS.

Sequence layout: [CLS, extra_1 .. extra_k, patch_1 .. patch_N] + a learned position embedding over all 1 + k + N
tokens. The extra tokens are given by the caller per example (shape (batch, k, width)); rRCM puts an embedding of the
noise level there. Encoder blocks are pre-LN: x + MHSA(LN(x)), then x + MLP(LN(x)) with the exact (erf) GELU, as in
the original ViT and timm; a final LayerNorm; the CLS token after it is the feature vector; a linear head gives logits.

Images are NHWC in [0, 1] and are normalised inside the model with `mean`/`std` (default 0.5/0.5, i.e. to [-1, 1],
the ViT convention), so smoothing noise is added to the raw input.

Parameter names: patch_embed (conv, patch x patch, stride patch), cls_token, pos_embed, block_<i>/{ln1, attn/{qkv, out},
ln2, mlp/{fc1, fc2}}, ln_final, head. The attention keeps q|k|v fused in one Dense (width -> 3 width), heads
contiguous within each of q, k, v (the layout of timm's and torch's in_proj weights).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any

VIT_SIZES = {
    "Ti": dict(width=192, depth=12, num_heads=3, mlp_dim=768),
    "S": dict(width=384, depth=12, num_heads=6, mlp_dim=1536),
    "B": dict(width=768, depth=12, num_heads=12, mlp_dim=3072),
}
# Patch size by image size for the presets: ViT-*/4 on 32x32 (CIFAR), ViT-*/16 on 224x224 (ImageNet).
DEFAULT_PATCH_SIZE = {32: 4, 224: 16}

_dense_init = nn.initializers.xavier_uniform()
_gelu = functools.partial(jax.nn.gelu, approximate=False)


class ViTOutput(NamedTuple):
    logits: jax.Array | None  # (batch, num_classes) float32; None when num_classes == 0
    features: jax.Array  # (batch, width) float32: the CLS token after the final LayerNorm


class SelfAttention(nn.Module):
    num_heads: int
    dropout_rate: float = 0.0
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x_BxTxD: jax.Array, train: bool) -> jax.Array:
        batch, tokens, width = x_BxTxD.shape
        head_dim = width // self.num_heads
        dense = functools.partial(nn.Dense, kernel_init=_dense_init, dtype=self.dtype, param_dtype=self.param_dtype)
        qkv_BxTx3D = dense(3 * width, name="qkv")(x_BxTxD)
        qkv_BxTx3xNxH = qkv_BxTx3D.reshape(batch, tokens, 3, self.num_heads, head_dim)
        q_BxTxNxH, k_BxTxNxH, v_BxTxNxH = (qkv_BxTx3xNxH[:, :, i] for i in range(3))
        # No attention dropout (the ViT recipe); dot_product_attention may use a fused kernel on GPU.
        out_BxTxNxH = jax.nn.dot_product_attention(q_BxTxNxH, k_BxTxNxH, v_BxTxNxH)
        out_BxTxD = dense(width, name="out")(out_BxTxNxH.reshape(batch, tokens, width))
        return nn.Dropout(self.dropout_rate, deterministic=not train)(out_BxTxD)


class MlpBlock(nn.Module):
    mlp_dim: int
    dropout_rate: float = 0.0
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x_BxTxD: jax.Array, train: bool) -> jax.Array:
        dense = functools.partial(nn.Dense, kernel_init=_dense_init, bias_init=nn.initializers.normal(1e-6),
                                  dtype=self.dtype, param_dtype=self.param_dtype)
        h_BxTxF = _gelu(dense(self.mlp_dim, name="fc1")(x_BxTxD))
        h_BxTxF = nn.Dropout(self.dropout_rate, deterministic=not train)(h_BxTxF)
        out_BxTxD = dense(x_BxTxD.shape[-1], name="fc2")(h_BxTxF)
        return nn.Dropout(self.dropout_rate, deterministic=not train)(out_BxTxD)


class EncoderBlock(nn.Module):
    """Pre-LN transformer block: x + MHSA(LN(x)); x + MLP(LN(x))."""

    num_heads: int
    mlp_dim: int
    dropout_rate: float = 0.0
    layer_norm_eps: float = 1e-6
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x_BxTxD: jax.Array, train: bool = False) -> jax.Array:
        kw = dict(dropout_rate=self.dropout_rate, dtype=self.dtype, param_dtype=self.param_dtype)
        norm = functools.partial(nn.LayerNorm, epsilon=self.layer_norm_eps, dtype=self.dtype,
                                 param_dtype=self.param_dtype)
        x_BxTxD = x_BxTxD + SelfAttention(self.num_heads, name="attn", **kw)(norm(name="ln1")(x_BxTxD), train)
        return x_BxTxD + MlpBlock(self.mlp_dim, name="mlp", **kw)(norm(name="ln2")(x_BxTxD), train)


class ViT(nn.Module):
    """Vision Transformer returning `ViTOutput(logits, features)`.

    `num_extra_tokens = k > 0` makes `extra_tokens` of shape (batch, k, width) a required input, inserted after CLS.
    `num_classes = 0` drops the head (logits is None). The head is zero-initialised (ViT convention).
    """

    num_classes: int = 1000
    image_size: int = 224
    patch_size: int = 16
    width: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_dim: int = 3072
    num_extra_tokens: int = 0
    mean: Sequence[float] = (0.5, 0.5, 0.5)
    std: Sequence[float] = (0.5, 0.5, 0.5)
    dropout_rate: float = 0.0
    layer_norm_eps: float = 1e-6
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def __post_init__(self):
        checks = [
            ("patch_size", self.patch_size, self.patch_size >= 1 and self.image_size % self.patch_size == 0,
             f"must divide image_size={self.image_size}"),
            ("num_heads", self.num_heads, self.num_heads >= 1 and self.width % self.num_heads == 0,
             f"must divide width={self.width}"),
            ("depth", self.depth, self.depth >= 1, "must be >= 1"),
            ("num_classes", self.num_classes, self.num_classes >= 0, "must be >= 0 (0: no head)"),
            ("num_extra_tokens", self.num_extra_tokens, self.num_extra_tokens >= 0, "must be >= 0"),
            ("std", self.std, len(self.std) == len(self.mean) and all(s > 0 for s in self.std),
             f"must be positive and as long as mean={self.mean!r}"),
        ]
        for name, value, ok, allowed in checks:
            if not ok:
                raise ValueError(f"{name}={value!r} is not allowed: {allowed}")
        super().__post_init__()

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @nn.compact
    def __call__(self, images_BxHxWxC: jax.Array, extra_tokens_BxKxD: jax.Array | None = None,
                 train: bool = False) -> ViTOutput:
        channels = len(self.mean)
        expected = (self.image_size, self.image_size, channels)
        if images_BxHxWxC.ndim != 4 or tuple(images_BxHxWxC.shape[1:]) != expected:
            raise ValueError(f"images must have shape (batch, {expected[0]}, {expected[1]}, {expected[2]}) "
                             f"(image_size={self.image_size}, NHWC); got {images_BxHxWxC.shape}")
        batch = images_BxHxWxC.shape[0]
        if self.num_extra_tokens:
            want = (batch, self.num_extra_tokens, self.width)
            if extra_tokens_BxKxD is None or tuple(extra_tokens_BxKxD.shape) != want:
                got = None if extra_tokens_BxKxD is None else tuple(extra_tokens_BxKxD.shape)
                raise ValueError(f"extra_tokens must have shape {want} (num_extra_tokens={self.num_extra_tokens}); "
                                 f"got {got}")
        elif extra_tokens_BxKxD is not None:
            raise ValueError(f"extra_tokens given (shape {extra_tokens_BxKxD.shape}) but num_extra_tokens=0")

        x = (images_BxHxWxC.astype(jnp.float32) - jnp.asarray(self.mean, jnp.float32)) / jnp.asarray(self.std,
                                                                                                    jnp.float32)
        x = x.astype(self.dtype)
        p = self.patch_size
        patches_BxGxGxD = nn.Conv(self.width, (p, p), strides=(p, p), padding="VALID", dtype=self.dtype,
                                  param_dtype=self.param_dtype, name="patch_embed")(x)
        patches_BxNxD = patches_BxGxGxD.reshape(batch, -1, self.width)

        cls_1x1xD = self.param("cls_token", nn.initializers.zeros, (1, 1, self.width), self.param_dtype)
        parts = [jnp.broadcast_to(cls_1x1xD, (batch, 1, self.width)).astype(self.dtype)]
        if self.num_extra_tokens:
            parts.append(extra_tokens_BxKxD.astype(self.dtype))
        parts.append(patches_BxNxD)
        x_BxTxD = jnp.concatenate(parts, axis=1)
        num_tokens = 1 + self.num_extra_tokens + self.num_patches
        pos_1xTxD = self.param("pos_embed", nn.initializers.normal(0.02), (1, num_tokens, self.width),
                               self.param_dtype)
        x_BxTxD = x_BxTxD + pos_1xTxD.astype(self.dtype)
        x_BxTxD = nn.Dropout(self.dropout_rate, deterministic=not train)(x_BxTxD)

        for i in range(self.depth):
            x_BxTxD = EncoderBlock(self.num_heads, self.mlp_dim, self.dropout_rate, self.layer_norm_eps,
                                   dtype=self.dtype, param_dtype=self.param_dtype, name=f"block_{i}")(x_BxTxD, train)
        x_BxTxD = nn.LayerNorm(epsilon=self.layer_norm_eps, dtype=self.dtype, param_dtype=self.param_dtype,
                               name="ln_final")(x_BxTxD)
        features_BxD = x_BxTxD[:, 0]
        logits = None
        if self.num_classes:
            logits = nn.Dense(self.num_classes, kernel_init=nn.initializers.zeros, dtype=self.dtype,
                              param_dtype=self.param_dtype, name="head")(features_BxD).astype(jnp.float32)
        return ViTOutput(logits=logits, features=features_BxD.astype(jnp.float32))


def vit(size: str, num_classes: int, image_size: int = 224, patch_size: int | None = None, **kwargs) -> ViT:
    """A preset ViT: size 'Ti', 'S' or 'B'; patch 4 at 32x32 and 16 at 224x224 unless `patch_size` is given."""
    if size not in VIT_SIZES:
        raise ValueError(f"size={size!r} is not allowed; allowed: {sorted(VIT_SIZES)}")
    if patch_size is None:
        if image_size not in DEFAULT_PATCH_SIZE:
            raise ValueError(f"image_size={image_size!r} has no default patch size (known: {DEFAULT_PATCH_SIZE}); "
                             "pass patch_size")
        patch_size = DEFAULT_PATCH_SIZE[image_size]
    return ViT(num_classes=num_classes, image_size=image_size, patch_size=patch_size,
               **{**VIT_SIZES[size], **kwargs})


def vit_tiny(num_classes: int, image_size: int = 224, patch_size: int | None = None, **kwargs) -> ViT:
    return vit("Ti", num_classes, image_size, patch_size, **kwargs)


def vit_small(num_classes: int, image_size: int = 224, patch_size: int | None = None, **kwargs) -> ViT:
    return vit("S", num_classes, image_size, patch_size, **kwargs)


def vit_base(num_classes: int, image_size: int = 224, patch_size: int | None = None, **kwargs) -> ViT:
    return vit("B", num_classes, image_size, patch_size, **kwargs)
