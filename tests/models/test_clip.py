"""CLIP model: shapes, input checks, causal masking, pooling, dtypes (parity with references: test_clip_import.py).

The tiny model uses the reference OpenCLIP weights from tests/testdata: loading them takes milliseconds, while compiling a
random initialisation takes ~10 s on a busy 2-core CPU.
"""

import dataclasses
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from robust_jax.models import clip, clip_import

DATA = Path(__file__).resolve().parent.parent / "testdata"


@pytest.fixture(scope="module")
def tiny():
    with open(DATA / "openclip_tiny_quickgelu.json") as f:
        reference = json.load(f)
    config = clip.config_from_openclip_dict(reference["open_clip_config"], quick_gelu=reference["quick_gelu"])
    assert config == clip.get_config("tiny")
    return clip_import.from_openclip(DATA / "openclip_tiny_quickgelu.safetensors", "tiny")


@pytest.fixture(scope="module")
def encoders(tiny):
    return clip.jit_encoders(tiny[0])


def _images(key, batch=8, size=32):  # one batch size everywhere: one compilation
    return jax.random.normal(key, (batch, size, size, 3), jnp.float32)


def _token_ids(lengths, context_length=77, eot=511):
    ids = np.zeros((len(lengths), context_length), np.int32)
    for row, length in enumerate(lengths):
        ids[row, 0] = 510
        ids[row, 1:length - 1] = np.arange(1, length - 1) % 500 + 3
        ids[row, length - 1] = eot
    return jnp.asarray(ids)


def test_presets_have_the_published_sizes():
    b32, l14 = clip.get_config("ViT-B-32"), clip.get_config("ViT-L/14")
    assert (b32.embed_dim, b32.vision.width, b32.vision.heads, b32.vision.grid_size) == (512, 768, 12, 7)
    assert (l14.embed_dim, l14.vision.layers, l14.vision.heads, l14.vision.num_tokens, l14.text.width) == (
        768, 24, 16, 257, 768)
    assert clip.get_config("ViT-B-16-quickgelu").vision.activation == "quick_gelu"
    assert clip.get_config("ViT-B-16").text.activation == "gelu"
    shapes = jax.eval_shape(clip.CLIP(b32).init, jax.random.key(0), jnp.zeros((1, 224, 224, 3)),
                            jnp.zeros((1, 77), jnp.int32))
    num_params = sum(np.prod(x.shape) for x in jax.tree.leaves(shapes))
    assert num_params == 151_277_313  # OpenCLIP / HF ViT-B-32 parameter count
    with pytest.raises(ValueError, match="ViT-H-99"):
        clip.get_config("ViT-H-99")


def test_shapes_and_logits_are_scaled_cosines(tiny, encoders, key):
    model, variables = tiny
    images, token_ids = _images(key), _token_ids([2, 10, 77, 30])
    image_emb, text_emb = encoders[0](variables, images), encoders[1](variables, token_ids)
    assert image_emb.shape == (8, 32) and text_emb.shape == (4, 32)
    logits_per_image, logits_per_text = jax.jit(model.apply)(variables, images, token_ids)
    cos = (image_emb / np.linalg.norm(image_emb, axis=1, keepdims=True)) @ (
        text_emb / np.linalg.norm(text_emb, axis=1, keepdims=True)).T
    np.testing.assert_allclose(logits_per_image, np.exp(variables["params"]["logit_scale"]) * cos, atol=1e-4)
    np.testing.assert_allclose(logits_per_text, logits_per_image.T)


def test_text_is_causal_and_pooled_at_end_token(tiny, encoders):
    variables, encode_text = tiny[1], encoders[1]
    token_ids = _token_ids([6, 6, 6, 6])
    changed = token_ids.at[1, 6:].set(77).at[2, 2].set(99)
    embeddings = encode_text(variables, changed)
    # Tokens after the end-of-text token must not change the embedding (causal mask + pooling at the end token) ...
    np.testing.assert_allclose(embeddings[1], embeddings[0], atol=1e-6)
    # ... while a token before it must.
    assert np.abs(embeddings[2] - embeddings[0]).max() > 1e-3
    # An unpadded sequence gives the same embedding: positions are sliced, not required in full.
    np.testing.assert_allclose(encode_text(variables, token_ids[:, :6]), embeddings[0][None].repeat(4, 0), atol=1e-5)


def test_eos_token_id_pooling_differs_from_argmax(tiny, encoders):
    model, variables = tiny
    eos_model = clip.CLIP(model.config.replace(text=dataclasses.replace(model.config.text, eos_token_id=300)))
    encode_by_eos = clip.jit_encoders(eos_model)[1]
    token_ids = jnp.asarray([[1, 5, 400, 300, 300, 2]], jnp.int32)  # the largest id (400) comes before eos (300)
    by_argmax = encoders[1](variables, token_ids)
    by_eos = encode_by_eos(variables, token_ids)
    # Causality: pooling at position p equals pooling at the last position of the sequence cut after p.
    np.testing.assert_allclose(by_argmax, encoders[1](variables, token_ids[:, :3]), atol=1e-5)
    # The first eos (position 3) is pooled, whatever follows it.
    np.testing.assert_allclose(by_eos, encode_by_eos(variables, token_ids[:, :4]), atol=1e-5)
    assert np.abs(by_argmax - by_eos).max() > 1e-3


@pytest.mark.parametrize("causal", [False, True])
def test_pooled_last_block_equals_full_output_at_pooled_positions(key, causal):
    """Transformer(pool_index_B=...) computes only the pooled query in its last block; values and gradients must
    equal those of the full (B, L, D) output indexed afterwards."""
    transformer = clip.Transformer(layers=2, heads=4, mlp_dim=64, activation="quick_gelu", layer_norm_eps=1e-5)
    x = jax.random.normal(key, (5, 9, 32))
    index = jnp.asarray([0, 8, 3, 3, 5], jnp.int32)
    variables = transformer.init(jax.random.key(1), x, causal=causal)

    def full(v, x):
        return jnp.take_along_axis(transformer.apply(v, x, causal=causal), index[:, None, None], axis=1)[:, 0]

    def pooled(v, x):
        return transformer.apply(v, x, causal=causal, pool_index_B=index)

    np.testing.assert_allclose(pooled(variables, x), full(variables, x), atol=1e-5)
    weights = jax.random.normal(jax.random.key(2), (5, 32))
    grads = [jax.grad(lambda v, x: jnp.sum(f(v, x) * weights), argnums=(0, 1))(variables, x) for f in (full, pooled)]
    for a, b in zip(jax.tree.leaves(grads[0]), jax.tree.leaves(grads[1])):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_bad_inputs_raise_clear_errors(tiny, encoders):
    model, variables = tiny
    encode_image, encode_text = encoders
    with pytest.raises(ValueError, match=r"\(2, 64, 64, 3\).*32x32"):
        encode_image(variables, jnp.zeros((2, 64, 64, 3)))
    with pytest.raises(ValueError, match="NHWC"):
        encode_image(variables, jnp.zeros((2, 3, 32, 32)))  # NCHW by mistake
    with pytest.raises(ValueError, match="length 78, longer than the context length 77"):
        encode_text(variables, jnp.zeros((1, 78), jnp.int32))
    with pytest.raises(ValueError, match="integer"):
        encode_text(variables, jnp.zeros((1, 77), jnp.float32))
    with pytest.raises(ValueError, match="context length 77"):
        model.apply(variables, jnp.zeros((1, 32, 32, 3)), jnp.zeros((1, 80), jnp.int32))


def test_config_validation():
    tiny = clip.get_config("tiny")
    with pytest.raises(ValueError, match="vision.width=48 must be divisible by vision.heads=5"):
        tiny.replace(vision=dataclasses.replace(tiny.vision, heads=5))
    with pytest.raises(ValueError, match="multiple of vision.patch_size"):
        tiny.replace(vision=dataclasses.replace(tiny.vision, image_size=30))
    with pytest.raises(ValueError, match="text.activation='relu'"):
        tiny.replace(text=dataclasses.replace(tiny.text, activation="relu"))
    with pytest.raises(ValueError, match="embed_dim=0"):
        tiny.replace(embed_dim=0)
    with pytest.raises(ValueError, match="ResNet"):
        clip.config_from_openclip_dict({"embed_dim": 1024, "vision_cfg": {"layers": [3, 4, 6, 3]}})
    with pytest.raises(ValueError, match="text_cfg.hf_model_name"):
        clip.config_from_openclip_dict({"embed_dim": 512, "text_cfg": {"hf_model_name": "roberta-base"}})


def test_bfloat16_compute_is_close_to_float32(tiny, encoders, key):
    model, variables = tiny
    images = _images(key)
    reference = encoders[0](variables, images)
    bf16_model = clip.CLIP(model.config, dtype=jnp.bfloat16, param_dtype=jnp.bfloat16)
    bf16_variables = jax.tree.map(lambda x: x.astype(jnp.bfloat16), variables)
    low = clip.jit_encoders(bf16_model)[0](bf16_variables, images)
    assert low.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(low, np.float32), reference, atol=0.05 * np.abs(reference).max())
    shapes = jax.eval_shape(bf16_model.init, key, images, _token_ids([3]))["params"]
    assert shapes["visual"]["transformer"]["resblocks_0"]["attn"]["in_proj"]["kernel"].dtype == jnp.bfloat16
    assert shapes["logit_scale"].dtype == jnp.float32  # the temperature stays float32


def test_batch_sharded_over_devices_matches_single_device(tiny, encoders, key):
    variables = tiny[1]
    mesh = jax.make_mesh((jax.device_count(),), ("data",))
    images = _images(key)
    sharded = jax.device_put(images, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data")))
    np.testing.assert_allclose(encoders[0](variables, sharded), encoders[0](variables, images), atol=1e-5)


@pytest.mark.slow  # compiling a random initialisation takes ~10 s on a busy 2-core CPU
def test_random_init_has_openclip_scales(key):
    model = clip.CLIP(clip.get_config("tiny"))
    params = clip.init_params(model, key)["params"]
    block = params["visual"]["transformer"]["resblocks_0"]
    np.testing.assert_allclose(np.std(block["attn"]["in_proj"]["kernel"]), 48**-0.5, rtol=0.1)
    np.testing.assert_allclose(np.std(block["c_proj"]["kernel"]), 48**-0.5 * 4**-0.5, rtol=0.1)
    np.testing.assert_allclose(np.std(params["text"]["token_embedding"]["embedding"]), 0.02, rtol=0.05)
    assert float(params["logit_scale"]) == pytest.approx(np.log(1 / 0.07))
    assert np.all(block["ln_1"]["scale"] == 1) and np.all(block["attn"]["in_proj"]["bias"] == 0)
