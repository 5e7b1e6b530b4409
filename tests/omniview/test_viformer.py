"""VIFormer against a numpy forward pass written from the layer definitions, its 0.1 residual, and the trainable-
parameter count of the tuning setup against closed-form arithmetic."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from robust_jax.models import clip as clip_lib
from robust_jax.omniview.tuning_params import count_tuning_parameters, init_tuning_params
from robust_jax.omniview.viformer import VIFormer, viewpoint_invariant_embedding

EMBED_DIM, HEADS, MLP_DIM = 16, 4, 24


@pytest.fixture(scope="module")
def small_viformer():
    model = VIFormer(mlp_dim=MLP_DIM)
    variables = jax.jit(model.init)(jax.random.key(1), jnp.zeros((1, EMBED_DIM)))
    # Random LayerNorm scales and biases, so the reference must place them right (init has 1s and 0s).
    rng = np.random.default_rng(0)
    variables = jax.tree_util.tree_map_with_path(
        lambda path, x: x + 0.3 * rng.normal(size=x.shape).astype(np.float32)
        if "norm" in jax.tree_util.keystr(path) else x, variables)
    z = jax.random.normal(jax.random.key(2), (5, EMBED_DIM)) * 3.0
    return model, variables, np.asarray(z)


def _layer_norm(x, scale, bias, eps=1e-5):
    mean = x.mean(axis=-1, keepdims=True)
    variance = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    return (x - mean) / np.sqrt(variance + eps) * scale + bias


def _reference_viformer(params, z):
    """Post-norm encoder layers on a one-token sequence: attention over a single key has weight 1, so it returns
    the value projection (the last third of the fused q|k|v output) through out_proj."""
    x = np.asarray(z, np.float64)
    for i in range(2):
        layer = jax.tree.map(lambda a: np.asarray(a, np.float64), params[f"layers_{i}"])
        qkv = x @ layer["self_attn"]["in_proj"]["kernel"] + layer["self_attn"]["in_proj"]["bias"]
        value = qkv[:, 2 * EMBED_DIM:]
        attended = value @ layer["self_attn"]["out_proj"]["kernel"] + layer["self_attn"]["out_proj"]["bias"]
        x = _layer_norm(x + attended, layer["norm1"]["scale"], layer["norm1"]["bias"])
        hidden = np.maximum(x @ layer["linear1"]["kernel"] + layer["linear1"]["bias"], 0.0)
        x = _layer_norm(x + hidden @ layer["linear2"]["kernel"] + layer["linear2"]["bias"],
                        layer["norm2"]["scale"], layer["norm2"]["bias"])
    return x


def test_viformer_matches_numpy_post_norm_encoder(small_viformer):
    model, variables, z = small_viformer
    got = np.asarray(model.apply(variables, z))
    np.testing.assert_allclose(got, _reference_viformer(variables["params"], z), rtol=1e-4, atol=1e-5)


def test_residual_scale_is_one_tenth(small_viformer):
    model, variables, z = small_viformer
    assert model.residual_scale == 0.1
    branch = _reference_viformer(variables["params"], z)
    want = z + 0.1 * branch
    want /= np.linalg.norm(want, axis=1, keepdims=True)
    got = np.asarray(viewpoint_invariant_embedding(model, variables, z))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, rtol=1e-6)


def test_zero_output_layer_gives_normalised_input(small_viformer):
    model, variables, z = small_viformer
    zeroed = jax.tree_util.tree_map_with_path(
        lambda path, x: jnp.zeros_like(x) if "layers_1']['norm2" in jax.tree_util.keystr(path) else x, variables)
    assert not np.allclose(np.asarray(model.apply(variables, z)), 0.0)
    np.testing.assert_array_equal(np.asarray(model.apply(zeroed, z)), 0.0)
    got = np.asarray(viewpoint_invariant_embedding(model, zeroed, z))
    np.testing.assert_allclose(got, z / np.linalg.norm(z, axis=1, keepdims=True), rtol=1e-6)


def test_viformer_bad_input():
    with pytest.raises(ValueError, match="embed_dim=18 must be divisible by heads=4"):
        VIFormer(mlp_dim=8).init(jax.random.key(0), jnp.zeros((1, 18)))
    with pytest.raises(ValueError, match="expected \\(batch, embed_dim\\)"):
        VIFormer(mlp_dim=8).init(jax.random.key(0), jnp.zeros((1, 2, 16)))
    with pytest.raises(ValueError, match="activation='swish' is not supported"):
        VIFormer(mlp_dim=8, activation="swish").init(jax.random.key(0), jnp.zeros((1, 16)))


def _closed_form_counts(embed_dim, vision_width, vision_layers, mlp_dim=2048, viformer_layers=2, rank=8):
    d, f = embed_dim, mlp_dim
    attention = (d * 3 * d + 3 * d) + (d * d + d)   # fused q|k|v and output projection, with biases
    mlp = (d * f + f) + (f * d + d)
    layer_norms = 2 * (2 * d)
    viformer = viformer_layers * (attention + mlp + layer_norms)
    lora = vision_layers * (vision_width * rank + rank * 3 * vision_width)  # A: (W, r), B: (r, 3W) per block
    return viformer, lora


def test_vit_b32_trainable_parameter_count():
    config = clip_lib.get_config("ViT-B-32")
    assert (config.embed_dim, config.vision.width, config.vision.layers) == (512, 768, 12)
    viformer, lora = _closed_form_counts(512, 768, 12)
    counts = count_tuning_parameters("ViT-B-32")
    assert counts == {"viformer": viformer, "lora": lora, "logit_scale": 1, "total": viformer + lora + 1}
    assert counts["viformer"] == 6_304_768 and counts["lora"] == 294_912 and counts["total"] == 6_599_681
    # The paper: about 6.3M (VIFormer) + 0.29M (LoRA), about 6.6M in all.
    assert abs(counts["viformer"] - 6.3e6) < 0.05e6 and abs(counts["lora"] - 0.29e6) < 0.005e6
    assert abs(counts["total"] - 6.6e6) < 0.05e6


def test_vit_l14_trainable_parameter_count():
    viformer, lora = _closed_form_counts(768, 1024, 24)
    counts = count_tuning_parameters("ViT-L-14")
    assert counts["total"] == viformer + lora + 1
    assert abs(counts["total"] - 11.8e6) < 0.1e6  # the paper's figure for ViT-L/14


def test_tuning_params_initial_values():
    config = clip_lib.get_config("tiny")
    # LoRA reads only the kernels' shapes and dtypes: the CLIP's abstract variables are enough.
    variables = jax.eval_shape(lambda key: clip_lib.init_params(clip_lib.CLIP(config), key), jax.random.key(0))
    params = init_tuning_params(jax.random.key(1), variables, config.embed_dim, viformer=VIFormer(mlp_dim=MLP_DIM))
    np.testing.assert_allclose(float(params["logit_scale"]), np.log(1 / 0.07), rtol=1e-6)
    adapted = sorted("/".join(map(str, keys)) for keys in _adapter_paths(params["lora"]))
    assert adapted == [f"params/visual/transformer/resblocks_{i}/attn/in_proj/kernel" for i in range(2)]
    counts = count_tuning_parameters(config, viformer=VIFormer(mlp_dim=MLP_DIM))
    real = sum(np.size(leaf) for leaf in jax.tree.leaves(params))
    assert counts["total"] == real


def _adapter_paths(tree, prefix=()):
    if isinstance(tree, dict):
        for key, value in tree.items():
            yield from _adapter_paths(value, prefix + (key,))
    else:
        yield prefix
