"""OpenAI CLIP (ViT image tower + causal text transformer) in Flax Linen.

The parameter tree follows OpenCLIP's names so that weight conversion stays readable:

    params/visual/{conv1, class_embedding, positional_embedding, ln_pre, transformer/resblocks_<i>, ln_post, proj}
    params/text/{token_embedding, positional_embedding, transformer/resblocks_<i>, ln_final, text_projection}
    params/logit_scale                      (log of the temperature, as in every CLIP checkpoint)

Each attention block keeps query, key and value in one fused `in_proj` Dense (width -> 3*width, q|k|v along the
output axis), the layout of OpenCLIP's `in_proj_weight`; LoRA on the fused qkv projection wraps exactly that kernel.

Inputs: images are NHWC float32 already normalised with the CLIP mean/std; token ids are integer arrays of shape
(batch, length) with length <= context_length. Both are checked in Python, because shapes are static under jit.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from robust_jax.core import checks
from robust_jax.core import streams as streams_lib

Dtype = Any

ACTIVATIONS = ("quick_gelu", "gelu", "gelu_tanh")


def quick_gelu(x_BxLxD: jax.Array) -> jax.Array:
    """x * sigmoid(1.702 x): the activation the OpenAI CLIP weights were trained with."""
    return x_BxLxD * jax.nn.sigmoid(1.702 * x_BxLxD)


def _activation_fn(name: str) -> Callable[[jax.Array], jax.Array]:
    if name == "quick_gelu":
        return quick_gelu
    if name == "gelu":  # torch.nn.GELU() and HF "gelu" use the exact erf form, not the tanh approximation
        return functools.partial(jax.nn.gelu, approximate=False)
    if name == "gelu_tanh":
        return functools.partial(jax.nn.gelu, approximate=True)
    raise ValueError(f"activation={name!r} is not supported; allowed: {ACTIVATIONS}")


# --------------------------------------------------------------------------------------------------- configuration


@dataclasses.dataclass(frozen=True)
class CLIPVisionConfig:
    image_size: int = 224
    patch_size: int = 32
    width: int = 768
    layers: int = 12
    heads: int = 12
    mlp_dim: int = 3072
    activation: str = "quick_gelu"
    layer_norm_eps: float = 1e-5

    @property
    def grid_size(self) -> int:
        return self.image_size // self.patch_size

    @property
    def num_tokens(self) -> int:
        return self.grid_size**2 + 1  # patches + class token


@dataclasses.dataclass(frozen=True)
class CLIPTextConfig:
    context_length: int = 77
    vocab_size: int = 49408
    width: int = 512
    layers: int = 12
    heads: int = 8
    mlp_dim: int = 2048
    activation: str = "quick_gelu"
    layer_norm_eps: float = 1e-5
    # None: pool at argmax(token_ids), the OpenAI/OpenCLIP convention (end-of-text has the largest id).
    # An int: pool at the first position holding this id (HF configs written after transformers PR #24773).
    eos_token_id: int | None = None


@dataclasses.dataclass(frozen=True)
class CLIPConfig:
    embed_dim: int = 512
    vision: CLIPVisionConfig = CLIPVisionConfig()
    text: CLIPTextConfig = CLIPTextConfig()

    def __post_init__(self):
        _check_positive("embed_dim", self.embed_dim)
        for tower_name, tower in (("vision", self.vision), ("text", self.text)):
            for field in dataclasses.fields(tower):
                value = getattr(tower, field.name)
                if field.name in ("layer_norm_eps",):
                    if not value > 0:
                        raise ValueError(f"{tower_name}.{field.name}={value!r} must be > 0")
                elif field.name not in ("activation", "eos_token_id"):
                    _check_positive(f"{tower_name}.{field.name}", value)
            if tower.activation not in ACTIVATIONS:
                raise ValueError(
                    f"{tower_name}.activation={tower.activation!r} is not supported; allowed: {ACTIVATIONS}")
            if tower.width % tower.heads:
                raise ValueError(
                    f"{tower_name}.width={tower.width} must be divisible by {tower_name}.heads={tower.heads}")
        if self.vision.image_size % self.vision.patch_size:
            raise ValueError(
                f"vision.image_size={self.vision.image_size} must be a multiple of "
                f"vision.patch_size={self.vision.patch_size}"
            )

    def replace(self, **changes) -> "CLIPConfig":
        return dataclasses.replace(self, **changes)


def _check_positive(name: str, value) -> None:
    checks.check_int(name, value, minimum=1)


def _openai_vit(embed_dim, image_size, patch_size, vision_width, vision_layers, text_width, text_heads, activation):
    return CLIPConfig(
        embed_dim=embed_dim,
        vision=CLIPVisionConfig(
            image_size=image_size,
            patch_size=patch_size,
            width=vision_width,
            layers=vision_layers,
            heads=vision_width // 64,
            mlp_dim=4 * vision_width,
            activation=activation,
        ),
        text=CLIPTextConfig(width=text_width, heads=text_heads, layers=12, mlp_dim=4 * text_width,
                            activation=activation),
    )


def _presets() -> dict[str, CLIPConfig]:
    sizes = {
        "ViT-B-32": dict(embed_dim=512, image_size=224, patch_size=32, vision_width=768, vision_layers=12,
                         text_width=512, text_heads=8),
        "ViT-B-16": dict(embed_dim=512, image_size=224, patch_size=16, vision_width=768, vision_layers=12,
                         text_width=512, text_heads=8),
        "ViT-L-14": dict(embed_dim=768, image_size=224, patch_size=14, vision_width=1024, vision_layers=24,
                         text_width=768, text_heads=12),
    }
    presets = {}
    for name, size in sizes.items():
        # OpenCLIP's plain names use nn.GELU; the "-quickgelu" names (and OpenAI's released weights) use QuickGELU.
        presets[name] = _openai_vit(**size, activation="gelu")
        presets[f"{name}-quickgelu"] = _openai_vit(**size, activation="quick_gelu")
    presets["tiny"] = CLIPConfig(
        embed_dim=32,
        vision=CLIPVisionConfig(image_size=32, patch_size=8, width=48, layers=2, heads=4, mlp_dim=96),
        text=CLIPTextConfig(context_length=77, vocab_size=512, width=40, layers=2, heads=4, mlp_dim=160),
    )
    return presets


PRESETS: dict[str, CLIPConfig] = _presets()


def get_config(name: str) -> CLIPConfig:
    """A preset by OpenCLIP model name ('ViT-B-32', 'ViT-B-16', 'ViT-L-14', each also '-quickgelu') or 'tiny'.

    OpenAI's released weights were trained with QuickGELU: load them with the '-quickgelu' names.
    """
    normalised = name.replace("/", "-")
    if normalised not in PRESETS:
        raise ValueError(f"model name {name!r} is unknown; allowed: {sorted(PRESETS)}")
    return PRESETS[normalised]


# OpenCLIP config fields that switch to architectures not implemented here, with the values that keep OpenAI's design.
_OPENCLIP_REQUIRED_VALUES = {
    "vision_cfg": {
        "timm_model_name": (None,), "attentional_pool": (False,), "no_ln_pre": (False,),
        "final_ln_after_pool": (False,), "pool_type": ("tok",), "ls_init_value": (None,),
        "pos_embed_type": ("learnable",), "act_kwargs": (None, {}), "norm_kwargs": (None, {}),
    },
    "text_cfg": {
        "hf_model_name": (None,), "ls_init_value": (None,), "pool_type": ("argmax",), "proj_type": ("linear",),
        "proj_bias": (False,), "no_causal_mask": (False,), "embed_cls": (False,), "act_kwargs": (None, {}),
        "norm_kwargs": (None, {}),
    },
}


def config_from_openclip_dict(model_cfg: dict, quick_gelu: bool | None = None) -> CLIPConfig:
    """A CLIPConfig from an OpenCLIP model-config dict ({"embed_dim", "vision_cfg", "text_cfg", "quick_gelu"?}).

    Uses OpenCLIP's defaults for missing fields (vision head width 64, MLP ratio 4, text heads 8, ...). Raises on
    fields that select an architecture this module does not implement (ResNet tower, HF text tower, attention pooling).
    """
    if quick_gelu is None:
        quick_gelu = bool(model_cfg.get("quick_gelu", False))
    activation = "quick_gelu" if quick_gelu else "gelu"
    vision_cfg = dict(model_cfg.get("vision_cfg", {}))
    text_cfg = dict(model_cfg.get("text_cfg", {}))
    if "embed_dim" not in model_cfg:
        raise ValueError(f"OpenCLIP config has no 'embed_dim'; keys present: {sorted(model_cfg)}")
    if isinstance(vision_cfg.get("layers", 12), (list, tuple)):
        raise ValueError("OpenCLIP config describes a ResNet image tower (vision_cfg.layers is a list); "
                         "only ViT is supported")
    for section_name, section in (("vision_cfg", vision_cfg), ("text_cfg", text_cfg)):
        for field, allowed in _OPENCLIP_REQUIRED_VALUES[section_name].items():
            if field in section and section[field] not in allowed:
                raise ValueError(
                    f"OpenCLIP config {section_name}.{field}={section[field]!r} selects an architecture this CLIP "
                    f"implementation does not support (allowed: {allowed}; OpenAI-style ViT + causal text transformer)"
                )
    vision_width = vision_cfg.get("width", 768)
    head_width = vision_cfg.get("head_width", 64)
    if vision_width % head_width:
        raise ValueError(f"OpenCLIP config vision_cfg.width={vision_width} is not a multiple of "
                         f"vision_cfg.head_width={head_width}")
    text_width = text_cfg.get("width", 512)
    return CLIPConfig(
        embed_dim=model_cfg["embed_dim"],
        vision=CLIPVisionConfig(
            image_size=_square(vision_cfg.get("image_size", 224), "vision_cfg.image_size"),
            patch_size=_square(vision_cfg.get("patch_size", 16), "vision_cfg.patch_size"),
            width=vision_width,
            layers=vision_cfg.get("layers", 12),
            heads=vision_width // head_width,
            mlp_dim=int(vision_width * vision_cfg.get("mlp_ratio", 4.0)),
            activation=activation,
        ),
        text=CLIPTextConfig(
            context_length=text_cfg.get("context_length", 77),
            vocab_size=text_cfg.get("vocab_size", 49408),
            width=text_width,
            layers=text_cfg.get("layers", 12),
            heads=text_cfg.get("heads", 8),
            mlp_dim=int(text_width * text_cfg.get("mlp_ratio", 4.0)),
            activation=activation,
        ),
    )


def _square(value, name: str) -> int:
    if isinstance(value, (list, tuple)):
        if len(value) != 2 or value[0] != value[1]:
            raise ValueError(f"{name}={value!r}: only square images and patches are supported")
        value = value[0]
    return int(value)


# --------------------------------------------------------------------------------------------------------- modules


def _reshape_tokens(x: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """Reshapes batch-major arrays, e.g. between (B, L, ...) and (B*L, ...). Under an explicitly sharded mesh the
    input's leading-axis sharding (the batch) is kept on the output's leading axis: JAX does not infer it when axes
    merge or split."""
    sharding = jax.typeof(x).sharding
    spec = getattr(sharding, "spec", None)
    if not spec or spec[0] is None or sharding.mesh.empty:
        return x.reshape(shape)
    out_spec = jax.sharding.PartitionSpec(spec[0], *([None] * (len(shape) - 1)))
    return jnp.reshape(x, shape, out_sharding=jax.sharding.NamedSharding(sharding.mesh, out_spec))


class MultiHeadSelfAttention(nn.Module):
    """Self-attention with a fused q|k|v input projection, as in torch.nn.MultiheadAttention."""

    heads: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    out_init_std: float | None = None

    @nn.compact
    def __call__(self, x_BxLxD: jax.Array, causal: bool, query_index_B: jax.Array | None = None) -> jax.Array:
        """(B, L, D) -> (B, L, D); with `query_index_B`, only the query at that position of each sequence is
        computed (keys and values still come from every position): (B, L, D) -> (B, 1, D)."""
        batch, length, width = x_BxLxD.shape
        head_dim = width // self.heads
        std = width**-0.5
        # Dense layers see (B*L, D) matrices: XLA's backward dots then need no transposed copies of the activations.
        qkv_NxD3 = nn.Dense(3 * width, dtype=self.dtype, param_dtype=self.param_dtype,
                            kernel_init=nn.initializers.normal(std), name="in_proj")(
            _reshape_tokens(x_BxLxD, (-1, width)))
        qkv_BxLx3xHxK = _reshape_tokens(qkv_NxD3, (batch, length, 3, self.heads, head_dim))
        q_BxQxHxK, k_BxLxHxK, v_BxLxHxK = (qkv_BxLx3xHxK[:, :, i] for i in range(3))
        # Default scale 1/sqrt(head_dim), the same as OpenCLIP (scaled logits) and HF (scaled queries).
        if query_index_B is None:
            out_BxQxHxK = jax.nn.dot_product_attention(q_BxQxHxK, k_BxLxHxK, v_BxLxHxK, is_causal=causal)
        else:
            q_BxQxHxK = jnp.take_along_axis(q_BxQxHxK, query_index_B[:, None, None, None], axis=1)
            # A causal query at position p sees keys 0..p: a key length of p + 1.
            kv_lengths_B = (query_index_B + 1).astype(jnp.int32) if causal else None
            out_BxQxHxK = jax.nn.dot_product_attention(q_BxQxHxK, k_BxLxHxK, v_BxLxHxK,
                                                       key_value_seq_lengths=kv_lengths_B)
        out_init_std = std if self.out_init_std is None else self.out_init_std
        out_NxD = nn.Dense(width, dtype=self.dtype, param_dtype=self.param_dtype,
                           kernel_init=nn.initializers.normal(out_init_std), name="out_proj")(
            _reshape_tokens(out_BxQxHxK, (-1, width)))
        return _reshape_tokens(out_NxD, (batch, out_BxQxHxK.shape[1], width))


class ResidualAttentionBlock(nn.Module):
    """Pre-LayerNorm transformer block: x + attn(ln_1(x)), then x + mlp(ln_2(x))."""

    heads: int
    mlp_dim: int
    activation: str
    layer_norm_eps: float
    num_layers: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x_BxLxD: jax.Array, causal: bool, query_index_B: jax.Array | None = None) -> jax.Array:
        """(B, L, D) -> (B, L, D), or (B, 1, D) at `query_index_B` only (see MultiHeadSelfAttention)."""
        width = x_BxLxD.shape[-1]
        layer_norm = functools.partial(nn.LayerNorm, epsilon=self.layer_norm_eps, dtype=self.dtype,
                                       param_dtype=self.param_dtype)
        residual_std = width**-0.5 * (2 * self.num_layers) ** -0.5  # OpenCLIP's init: residual branches start small
        attn = MultiHeadSelfAttention(self.heads, dtype=self.dtype, param_dtype=self.param_dtype,
                                      out_init_std=residual_std, name="attn")
        attended_BxQxD = attn(layer_norm(name="ln_1")(x_BxLxD), causal=causal, query_index_B=query_index_B)
        if query_index_B is not None:
            x_BxLxD = jnp.take_along_axis(x_BxLxD, query_index_B[:, None, None], axis=1)
        x_BxQxD = x_BxLxD + attended_BxQxD
        h_NxF = nn.Dense(self.mlp_dim, dtype=self.dtype, param_dtype=self.param_dtype,
                         kernel_init=nn.initializers.normal((2 * width) ** -0.5), name="c_fc")(
            _reshape_tokens(layer_norm(name="ln_2")(x_BxQxD), (-1, width)))
        h_NxF = _activation_fn(self.activation)(h_NxF)
        h_NxD = nn.Dense(width, dtype=self.dtype, param_dtype=self.param_dtype,
                         kernel_init=nn.initializers.normal(residual_std), name="c_proj")(h_NxF)
        return x_BxQxD + _reshape_tokens(h_NxD, x_BxQxD.shape)


class Transformer(nn.Module):
    layers: int
    heads: int
    mlp_dim: int
    activation: str
    layer_norm_eps: float
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x_BxLxD: jax.Array, causal: bool, pool_index_B: jax.Array | None = None) -> jax.Array:
        """Every position's output (B, L, D), or with `pool_index_B` only the output at that position of each
        sequence (B, D). Pooling inside the last block skips its query, attention output and MLP work at every other
        position (about 1/12 of a 12-layer tower's FLOPs, forward and backward); the result is the same."""
        for i in range(self.layers):
            last = i == self.layers - 1
            x_BxLxD = ResidualAttentionBlock(
                heads=self.heads, mlp_dim=self.mlp_dim, activation=self.activation,
                layer_norm_eps=self.layer_norm_eps, num_layers=self.layers, dtype=self.dtype,
                param_dtype=self.param_dtype, name=f"resblocks_{i}",
            )(x_BxLxD, causal=causal, query_index_B=pool_index_B if last else None)
        return x_BxLxD if pool_index_B is None else x_BxLxD[:, 0]


class PatchEmbedding(nn.Module):
    """The stride-p, p x p convolution without bias that embeds non-overlapping patches (OpenCLIP's `conv1`, kernel
    (p, p, 3, D) as a Flax Conv's), computed as one (B*N, p*p*3) @ (p*p*3, D) matmul: the same numbers, and about
    1.8x faster than XLA's CPU convolution. Output (B, N, D), patches row-major over the grid (torch's flatten(2))."""

    features: int
    patch_size: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, images_BxHxWxC: jax.Array) -> jax.Array:
        batch, height, width, channels = images_BxHxWxC.shape
        p = self.patch_size
        kernel_PxPxCxD = self.param("kernel", nn.initializers.lecun_normal(), (p, p, channels, self.features),
                                    self.param_dtype)
        grid_h, grid_w = height // p, width // p
        patches = _reshape_tokens(images_BxHxWxC, (batch, grid_h, p, grid_w, p, channels)).transpose(0, 1, 3, 2, 4, 5)
        patches_NxK = _reshape_tokens(patches.astype(self.dtype), (batch * grid_h * grid_w, p * p * channels))
        out_NxD = patches_NxK @ kernel_PxPxCxD.astype(self.dtype).reshape(p * p * channels, self.features)
        return _reshape_tokens(out_NxD, (batch, grid_h * grid_w, self.features))


class VisionTransformer(nn.Module):
    config: CLIPVisionConfig
    embed_dim: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, images_BxHxWxC: jax.Array) -> jax.Array:
        cfg = self.config
        width = cfg.width
        scale = width**-0.5
        batch = images_BxHxWxC.shape[0]
        patches_BxNxD = PatchEmbedding(width, cfg.patch_size, dtype=self.dtype, param_dtype=self.param_dtype,
                                       name="conv1")(images_BxHxWxC)
        class_embedding = self.param("class_embedding", nn.initializers.normal(scale), (width,), self.param_dtype)
        positional_embedding = self.param("positional_embedding", nn.initializers.normal(scale),
                                          (cfg.num_tokens, width), self.param_dtype)
        class_Bx1xD = jnp.broadcast_to(class_embedding.astype(self.dtype), (batch, 1, width))
        x_BxTxD = jnp.concatenate([class_Bx1xD, patches_BxNxD.astype(self.dtype)], axis=1)
        x_BxTxD = x_BxTxD + positional_embedding.astype(self.dtype)
        layer_norm = functools.partial(nn.LayerNorm, epsilon=cfg.layer_norm_eps, dtype=self.dtype,
                                       param_dtype=self.param_dtype)
        x_BxTxD = layer_norm(name="ln_pre")(x_BxTxD)
        class_token_B = jnp.zeros((batch,), jnp.int32)
        class_out_BxD = Transformer(cfg.layers, cfg.heads, cfg.mlp_dim, cfg.activation, cfg.layer_norm_eps,
                                    dtype=self.dtype, param_dtype=self.param_dtype, name="transformer")(
            x_BxTxD, causal=False, pool_index_B=class_token_B)
        pooled_BxD = layer_norm(name="ln_post")(class_out_BxD)
        proj = self.param("proj", nn.initializers.normal(scale), (width, self.embed_dim), self.param_dtype)
        return pooled_BxD @ proj.astype(self.dtype)


class TextTransformer(nn.Module):
    config: CLIPTextConfig
    embed_dim: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, token_ids_BxL: jax.Array) -> jax.Array:
        cfg = self.config
        length = token_ids_BxL.shape[1]
        x_BxLxD = nn.Embed(cfg.vocab_size, cfg.width, dtype=self.dtype, param_dtype=self.param_dtype,
                           embedding_init=nn.initializers.normal(0.02), name="token_embedding")(token_ids_BxL)
        positional_embedding = self.param("positional_embedding", nn.initializers.normal(0.01),
                                          (cfg.context_length, cfg.width), self.param_dtype)
        x_BxLxD = x_BxLxD + positional_embedding[:length].astype(self.dtype)
        if cfg.eos_token_id is None:
            eot_position_B = jnp.argmax(token_ids_BxL, axis=-1)
        else:
            eot_position_B = jnp.argmax(token_ids_BxL == cfg.eos_token_id, axis=-1)
        eot_out_BxD = Transformer(cfg.layers, cfg.heads, cfg.mlp_dim, cfg.activation, cfg.layer_norm_eps,
                                  dtype=self.dtype, param_dtype=self.param_dtype, name="transformer")(
            x_BxLxD, causal=True, pool_index_B=eot_position_B.astype(jnp.int32))
        pooled_BxD = nn.LayerNorm(epsilon=cfg.layer_norm_eps, dtype=self.dtype, param_dtype=self.param_dtype,
                                  name="ln_final")(eot_out_BxD)
        text_projection = self.param("text_projection", nn.initializers.normal(cfg.width**-0.5),
                                     (cfg.width, self.embed_dim), self.param_dtype)
        return pooled_BxD @ text_projection.astype(self.dtype)


class CLIP(nn.Module):
    """CLIP. `encode_image` / `encode_text` give projected embeddings before L2 normalisation.

    `__call__(images, token_ids)` returns (logits_per_image, logits_per_text) = exp(logit_scale) * cosine similarities,
    computed in float32 whatever `dtype` the towers run in.
    """

    config: CLIPConfig
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def setup(self):
        self.visual = VisionTransformer(self.config.vision, self.config.embed_dim, dtype=self.dtype,
                                        param_dtype=self.param_dtype)
        self.text = TextTransformer(self.config.text, self.config.embed_dim, dtype=self.dtype,
                                    param_dtype=self.param_dtype)
        self.logit_scale = self.param("logit_scale", nn.initializers.constant(math.log(1 / 0.07)), (), jnp.float32)

    def encode_image(self, images_BxHxWxC: jax.Array) -> jax.Array:
        check_images(images_BxHxWxC, self.config.vision)
        return self.visual(images_BxHxWxC)

    def encode_text(self, token_ids_BxL: jax.Array) -> jax.Array:
        check_token_ids(token_ids_BxL, self.config.text)
        return self.text(token_ids_BxL)

    def __call__(self, images_BxHxWxC: jax.Array, token_ids_TxL: jax.Array) -> tuple[jax.Array, jax.Array]:
        check_images(images_BxHxWxC, self.config.vision)  # both inputs before any work
        check_token_ids(token_ids_TxL, self.config.text)
        image_BxE = l2_normalize(self.encode_image(images_BxHxWxC).astype(jnp.float32))
        text_TxE = l2_normalize(self.encode_text(token_ids_TxL).astype(jnp.float32))
        logits_per_image_BxT = jnp.exp(self.logit_scale.astype(jnp.float32)) * image_BxE @ text_TxE.T
        return logits_per_image_BxT, logits_per_image_BxT.T


def l2_normalize(x_BxE: jax.Array, eps: float = 1e-12) -> jax.Array:
    return x_BxE / jnp.maximum(jnp.linalg.norm(x_BxE, axis=-1, keepdims=True), eps)


def check_images(images, config: CLIPVisionConfig) -> None:
    expected = (config.image_size, config.image_size, 3)
    if images.ndim != 4 or tuple(images.shape[1:]) != expected:
        raise ValueError(
            f"images have shape {tuple(images.shape)}; this CLIP expects NHWC (batch, {expected[0]}, {expected[1]}, 3) "
            f"images of size {config.image_size}x{config.image_size} "
            "(resize and normalise with the CLIP mean/std first)"
        )
    if not jnp.issubdtype(images.dtype, jnp.floating):
        raise ValueError(
            f"images have dtype {images.dtype}; expected floating point, normalised with the CLIP mean/std")


def check_token_ids(token_ids, config: CLIPTextConfig) -> None:
    if token_ids.ndim != 2:
        raise ValueError(f"token_ids have shape {tuple(token_ids.shape)}; expected (batch, length)")
    if token_ids.shape[1] > config.context_length:
        raise ValueError(
            f"token_ids have length {token_ids.shape[1]}, longer than the context length {config.context_length}; "
            f"tokenize with context_length={config.context_length} (the tokenizer truncates)"
        )
    if not jnp.issubdtype(token_ids.dtype, jnp.integer):
        raise ValueError(f"token_ids have dtype {token_ids.dtype}; expected an integer dtype")


def jit_encoders(model: CLIP, streams: int | None = None) -> tuple[Callable, Callable]:
    """Compiled (encode_image(params, images_NHWC), encode_text(params, token_ids)) -> numpy embeddings; each
    compiles once per shape.

    streams: shares of the batch run at once, each by a single-threaded program (`robust_jax.core.streams`); None
    is one per core on one CPU device, else 1 (one program with XLA's threads). The embeddings equal one program's
    up to float rounding (tests/core/test_streams.py).
    """
    encode_image = streams_lib.StreamedApply(functools.partial(model.apply, method=CLIP.encode_image), streams)
    encode_text = streams_lib.StreamedApply(functools.partial(model.apply, method=CLIP.encode_text), streams)
    return encode_image, encode_text


def init_params(model: CLIP, key: jax.Array, batch_size: int = 1) -> dict:
    """Random parameters {'params': ...} (OpenCLIP-style initialisation)."""
    cfg = model.config
    images = jnp.zeros((batch_size, cfg.vision.image_size, cfg.vision.image_size, 3), jnp.float32)
    token_ids = jnp.zeros((batch_size, cfg.text.context_length), jnp.int32)
    return jax.jit(model.init)(key, images, token_ids)
