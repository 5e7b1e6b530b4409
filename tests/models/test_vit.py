"""Tests for robust_jax/models/vit.py.

Independent checks: the standard parameter counts (timm ViT-B/16 86,567,656, ViT-S/16 22,050,664, ViT-Ti/16
5,717,416 at 224 with 1000 classes); one encoder block against torch's own nn.TransformerEncoderLayer (pre-LN,
exact GELU); permutation equivariance of attention (with position embeddings zeroed, permuting patches leaves the
CLS output unchanged, and it does change once position embeddings are on).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from robust_jax.models import vit
from tests.requirements import require

SMALL = dict(num_classes=5, image_size=16, patch_size=4, width=32, depth=2, num_heads=4, mlp_dim=64)


def _param_count(model, image_size):
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, image_size, image_size, 3))))
    return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(variables["params"]))


def _random_params(model, *inputs, seed=0, scale=0.3):
    """Random values for every parameter (built from `jax.eval_shape`, filled by numpy: no jitted init to pay for).

    Kernels get fan-in scaled normals; everything else (biases, LayerNorm scales, CLS, position embeddings) gets
    offsets of size `scale`, so zero-initialised heads and unit LayerNorm scales are not special cases.
    """
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), *inputs))["params"]
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        name = path[-1].key
        if name == "kernel":
            fan_in = int(np.prod(leaf.shape[:-1]))
            value = rng.normal(0.0, 1.0 / np.sqrt(fan_in), leaf.shape)
        elif name == "scale":
            value = 1.0 + rng.normal(0.0, scale, leaf.shape)
        else:
            value = rng.normal(0.0, scale, leaf.shape)
        return jnp.asarray(value, jnp.float32)

    return jax.tree_util.tree_map_with_path(fill, shapes)


def _np_normal(seed, shape):
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


def _images(seed, batch, size):
    return jnp.asarray(np.random.default_rng(seed).uniform(0, 1, (batch, size, size, 3)), jnp.float32)


def test_parameter_counts_match_standard_figures():
    assert _param_count(vit.vit_base(1000, image_size=224), 224) == 86_567_656
    assert _param_count(vit.vit_small(1000, image_size=224), 224) == 22_050_664
    assert _param_count(vit.vit_tiny(1000, image_size=224), 224) == 5_717_416


def test_cifar_presets_use_patch_4():
    model = vit.vit_base(10, image_size=32)
    assert model.patch_size == 4 and model.num_patches == 64
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3))))["params"]
    assert shapes["patch_embed"]["kernel"].shape == (4, 4, 3, 768)
    assert shapes["pos_embed"].shape == (1, 65, 768)
    assert vit.vit_small(10, image_size=224).patch_size == 16
    with pytest.raises(ValueError, match="image_size=64"):
        vit.vit_tiny(10, image_size=64)


def test_shapes_with_extra_tokens():
    model = vit.ViT(num_extra_tokens=2, **SMALL)
    images, extra = _images(0, 3, 16), _np_normal(1, (3, 2, 32))
    params = _random_params(model, images, extra)
    assert params["pos_embed"].shape == (1, 1 + 2 + 16, 32)
    variables = {"params": params}
    apply = jax.jit(model.apply)
    out = apply(variables, images, extra)
    assert out.logits.shape == (3, 5) and out.features.shape == (3, 32)
    assert out.logits.dtype == jnp.float32 and out.features.dtype == jnp.float32
    # The extra tokens reach the CLS output through attention.
    assert float(jnp.abs(apply(variables, images, 2 * extra).features - out.features).max()) > 1e-3
    with pytest.raises(ValueError, match="extra_tokens must have shape"):
        apply(variables, images, extra[:, :1])
    with pytest.raises(ValueError, match="extra_tokens must have shape"):
        apply(variables, images)
    with pytest.raises(ValueError, match=r"images must have shape \(batch, 16, 16, 3\)"):
        apply(variables, _images(2, 3, 32), extra)


def test_no_head_returns_features_only():
    model = vit.ViT(**{**SMALL, "num_classes": 0})
    images = _images(0, 2, 16)
    params = _random_params(model, images)
    assert "head" not in params
    out = jax.jit(model.apply)({"params": params}, images)
    assert out.logits is None and out.features.shape == (2, 32)


def test_bad_configuration_is_rejected_with_the_field_name():
    with pytest.raises(ValueError, match="patch_size=5"):
        vit.ViT(**{**SMALL, "patch_size": 5})
    with pytest.raises(ValueError, match="num_heads=5"):
        vit.ViT(**{**SMALL, "num_heads": 5})
    with pytest.raises(ValueError, match="size='L'"):
        vit.vit("L", 10)


def _permute_patches(images_BxHxWxC, permutation, patch):
    b, h, w, c = images_BxHxWxC.shape
    g = h // patch
    blocks = images_BxHxWxC.reshape(b, g, patch, g, patch, c).transpose(0, 1, 3, 2, 4, 5).reshape(b, g * g, patch,
                                                                                                   patch, c)
    blocks = blocks[:, permutation]
    return blocks.reshape(b, g, g, patch, patch, c).transpose(0, 1, 3, 2, 4, 5).reshape(b, h, w, c)


def test_cls_output_is_invariant_to_patch_permutation_without_position_embedding():
    model = vit.ViT(num_extra_tokens=1, **SMALL)
    images, extra = _images(3, 2, 16), _np_normal(4, (2, 1, 32))
    params = _random_params(model, images, extra, seed=5)
    permutation = np.random.default_rng(6).permutation(16)
    permuted = _permute_patches(images, permutation, 4)
    assert float(jnp.abs(permuted - images).max()) > 0.1

    no_position = {"params": {**params, "pos_embed": jnp.zeros_like(params["pos_embed"])}}
    apply = jax.jit(model.apply)
    out, out_permuted = apply(no_position, images, extra), apply(no_position, permuted, extra)
    np.testing.assert_allclose(out_permuted.features, out.features, atol=1e-5)
    np.testing.assert_allclose(out_permuted.logits, out.logits, atol=1e-5)
    # With position embeddings the order of the patches matters (so the check above can fail).
    with_position = {"params": params}
    diff = apply(with_position, permuted, extra).features - apply(with_position, images, extra).features
    assert float(jnp.abs(diff).max()) > 1e-2


def test_encoder_block_matches_torch_transformer_encoder_layer():
    torch = require("torch")
    width, heads, mlp_dim, tokens = 32, 4, 48, 7
    block = vit.EncoderBlock(num_heads=heads, mlp_dim=mlp_dim, layer_norm_eps=1e-6)
    x = _np_normal(7, (2, tokens, width))
    params = _random_params(block, x, seed=8, scale=0.2)
    ours = np.asarray(jax.jit(block.apply)({"params": params}, x))

    layer = torch.nn.TransformerEncoderLayer(width, heads, dim_feedforward=mlp_dim, dropout=0.0, activation="gelu",
                                             layer_norm_eps=1e-6, batch_first=True, norm_first=True)
    t = lambda a: torch.from_numpy(np.asarray(a, np.float32).copy())  # noqa: E731
    with torch.no_grad():
        layer.self_attn.in_proj_weight.copy_(t(params["attn"]["qkv"]["kernel"].T))
        layer.self_attn.in_proj_bias.copy_(t(params["attn"]["qkv"]["bias"]))
        layer.self_attn.out_proj.weight.copy_(t(params["attn"]["out"]["kernel"].T))
        layer.self_attn.out_proj.bias.copy_(t(params["attn"]["out"]["bias"]))
        layer.linear1.weight.copy_(t(params["mlp"]["fc1"]["kernel"].T))
        layer.linear1.bias.copy_(t(params["mlp"]["fc1"]["bias"]))
        layer.linear2.weight.copy_(t(params["mlp"]["fc2"]["kernel"].T))
        layer.linear2.bias.copy_(t(params["mlp"]["fc2"]["bias"]))
        for ours_name, norm in (("ln1", layer.norm1), ("ln2", layer.norm2)):
            norm.weight.copy_(t(params[ours_name]["scale"]))
            norm.bias.copy_(t(params[ours_name]["bias"]))
        theirs = layer.eval()(t(x)).numpy()
    np.testing.assert_allclose(ours, theirs, atol=2e-5, rtol=1e-5)


def test_normalisation_is_inside_the_model():
    mean, std = (0.3, 0.4, 0.5), (0.2, 0.25, 0.3)
    model = vit.ViT(mean=mean, std=std, **SMALL)
    plain = vit.ViT(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), **SMALL)
    images = _images(9, 2, 16)
    variables = {"params": _random_params(model, images, seed=10)}
    normalised = (images - jnp.asarray(mean)) / jnp.asarray(std)
    np.testing.assert_allclose(jax.jit(model.apply)(variables, images).logits,
                               jax.jit(plain.apply)(variables, normalised).logits, atol=1e-5)


def test_dropout_is_active_only_in_training(key):
    model = vit.ViT(dropout_rate=0.2, **SMALL)
    images = _images(11, 2, 16)
    variables = {"params": _random_params(model, images, seed=12)}
    apply = jax.jit(model.apply)
    eval_a, eval_b = apply(variables, images), apply(variables, images)
    np.testing.assert_array_equal(eval_a.features, eval_b.features)
    trained = jax.jit(functools.partial(model.apply, train=True))(variables, images, rngs={"dropout": key})
    assert float(jnp.abs(trained.features - eval_a.features).max()) > 1e-3


def test_bfloat16_runs_and_is_close_to_float32():
    model = vit.ViT(**SMALL)
    model_bf16 = vit.ViT(dtype=jnp.bfloat16, **SMALL)
    images = _images(13, 4, 16)
    variables = {"params": _random_params(model, images, seed=14, scale=0.1)}
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(
        jax.eval_shape(lambda: model_bf16.init(jax.random.key(0), images))))
    ref, out = jax.jit(model.apply)(variables, images), jax.jit(model_bf16.apply)(variables, images)
    assert out.features.dtype == jnp.float32 and out.logits.dtype == jnp.float32
    assert bool(jnp.all(jnp.isfinite(out.features)))
    error = jnp.abs(out.features - ref.features)
    assert float(error.max()) < 0.15 and float(error.mean()) < 0.03
    assert float(jnp.abs(ref.features).mean()) > 0.3  # the features are O(1), so the tolerance is loose, not vacuous
