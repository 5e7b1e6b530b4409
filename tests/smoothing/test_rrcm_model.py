"""robust_jax/smoothing/methods/rrcm/model.py: the level token's sinusoidal embedding against numpy, the network's wiring
(c_in scaling and level token after CLS) against the plain ViT fed by hand, dependence on sigma, shapes, errors, and
loading pretrained parameters into a fine-tuning model."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from robust_jax.models.vit import ViT
from robust_jax.smoothing.methods.rrcm.model import RRCMNet, level_embedding, load_pretrained, rrcm_net

from .rrcm_tiny_model import IMAGE_SHAPE, init_key, tiny_rrcm_net


def test_level_embedding_matches_numpy():
    sigmas = [0.002, 0.4927, 2.0, 80.0]
    dim = 16
    got = np.asarray(level_embedding(jnp.asarray(sigmas), dim))
    for row, sigma in enumerate(sigmas):
        value = 250.0 * math.log(sigma)
        angles = [value * 10000.0 ** (-k / 8) for k in range(8)]
        expected = [math.cos(a) for a in angles] + [math.sin(a) for a in angles]
        np.testing.assert_allclose(got[row], expected, atol=2e-3)


@pytest.fixture(scope="module")
def classifier():
    """(model, variables with a non-zero head, jitted eval-mode forward without projector)."""
    model = tiny_rrcm_net(num_classes=3)
    variables = jax.jit(lambda k: model.init(k, jnp.zeros((2, *IMAGE_SHAPE)), jnp.ones(2), project=True))(init_key())
    params = variables["params"]
    # The ViT head is zero-initialised; give it values so logits depend on the features.
    head = params["backbone"]["head"]
    head = {"kernel": jax.random.normal(jax.random.key(1), head["kernel"].shape), "bias": head["bias"]}
    params = {**params, "backbone": {**params["backbone"], "head": head}}
    forward = jax.jit(lambda p, x, s: model.apply({"params": p}, x, s, project=False))
    return model, {**variables, "params": params}, forward


def test_network_scales_input_by_c_in_and_puts_the_level_token_after_cls(classifier):
    _, variables, forward = classifier
    params = variables["params"]
    images = np.asarray(jax.random.uniform(jax.random.key(2), (4, *IMAGE_SHAPE), minval=-1, maxval=1))
    sigmas = np.array([0.002, 0.3, 1.0, 40.0], np.float32)
    out = forward(params, images, sigmas)

    # The same computation by hand: numpy level token, then the plain ViT with one extra token and no normalisation.
    projection = params["level_projection"]
    embedding = np.asarray(level_embedding(jnp.asarray(sigmas), 16))
    token = embedding @ np.asarray(projection["kernel"]) + np.asarray(projection["bias"])
    c_in = 1.0 / np.sqrt(sigmas.astype(np.float64) ** 2 + 0.25)
    backbone = ViT(num_classes=3, image_size=8, patch_size=4, width=16, depth=1, num_heads=2, mlp_dim=32,
                   num_extra_tokens=1, mean=(0.0,), std=(1.0,))
    expected = jax.jit(backbone.apply)({"params": params["backbone"]},
                                       (images * c_in[:, None, None, None]).astype(np.float32),
                                       token[:, None, :].astype(np.float32))
    np.testing.assert_allclose(out.features, expected.features, atol=1e-5)
    np.testing.assert_allclose(out.logits, expected.logits, atol=1e-5)
    assert out.projection is None


def test_output_depends_on_sigma_through_the_level_token(classifier):
    _, variables, forward = classifier
    zeros = jnp.zeros((4, *IMAGE_SHAPE))  # c_in scaling cannot matter for a zero input: only the token differs
    out = forward(variables["params"], zeros, jnp.array([0.1, 0.1, 1.0, 1.0]))
    np.testing.assert_allclose(out.features[0], out.features[1], atol=1e-6)
    assert float(jnp.max(jnp.abs(out.features[0] - out.features[2]))) > 1e-3
    assert float(jnp.max(jnp.abs(out.logits[0] - out.logits[2]))) > 1e-4


def test_shapes_with_projector_and_head(classifier):
    model, variables, _ = classifier
    out, _ = jax.jit(lambda v, x: model.apply(v, x, 0.5, train=True, mutable=["batch_stats"]))(
        variables, jnp.zeros((5, *IMAGE_SHAPE)))
    assert out.projection.shape == (5, 8) and out.features.shape == (5, 16) and out.logits.shape == (5, 3)
    assert set(variables["batch_stats"]["projector"]) == {"bn1", "bn2"}
    assert "bias" not in variables["params"]["projector"]["fc3"]


def test_unknown_backbone_and_unsuitable_vit_are_clear_errors():
    with pytest.raises(ValueError, match=r"backbone size='XL' is not allowed; allowed: \['B', 'S', 'Ti'\]"):
        rrcm_net("XL")
    with pytest.raises(ValueError, match="exactly 1 extra token"):
        RRCMNet(backbone=ViT(num_classes=0, image_size=8, patch_size=4, width=16, depth=1, num_heads=2, mlp_dim=32,
                             mean=(0.0,), std=(1.0,)))
    with pytest.raises(ValueError, match="must not normalise"):
        RRCMNet(backbone=ViT(num_classes=0, image_size=8, patch_size=4, width=16, depth=1, num_heads=2, mlp_dim=32,
                             num_extra_tokens=1, mean=(0.5,), std=(0.5,)))


def test_load_pretrained_keeps_the_new_head_and_drops_the_projector(classifier):
    finetune_params = classifier[1]["params"]
    pretrained = jax.tree.map(lambda x: x + 1.0, finetune_params)
    pretrained["backbone"] = {k: v for k, v in pretrained["backbone"].items() if k != "head"}
    finetune_params = {k: v for k, v in finetune_params.items() if k != "projector"}
    loaded = load_pretrained(finetune_params, pretrained)
    assert "projector" not in loaded
    np.testing.assert_array_equal(loaded["backbone"]["head"]["kernel"], finetune_params["backbone"]["head"]["kernel"])
    np.testing.assert_array_equal(loaded["backbone"]["pos_embed"], finetune_params["backbone"]["pos_embed"] + 1.0)
    np.testing.assert_array_equal(loaded["level_projection"]["kernel"],
                                  finetune_params["level_projection"]["kernel"] + 1.0)
    pretrained["backbone"]["cls_token"] = jnp.zeros((1, 1, 4))
    with pytest.raises(ValueError, match=r"parameter /backbone/cls_token has shape \(1, 1, 16\)"):
        load_pretrained(finetune_params, pretrained)
