"""The GPT-2 backbone against HuggingFace's GPT2Model (torch CPU, test-only), its init and its causality."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from robust_jax.models.transformer import CausalTransformer, params_from_huggingface_gpt2
from tests.requirements import require

SMALL = dict(n_positions=64, n_embd=32, n_layer=2, n_head=4)


def test_matches_huggingface_gpt2(key):
    torch = require("torch")
    transformers = require("transformers")
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        vocab_size=8, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, activation_function="gelu_new", **SMALL
    )
    reference = transformers.GPT2Model(config).eval()
    with torch.no_grad():  # non-trivial LayerNorm parameters and biases, so every copied tensor matters
        for name, tensor in reference.named_parameters():
            if name.endswith("bias") or ".ln_" in name or name.startswith("ln_f"):
                tensor.add_(0.1 * torch.randn_like(tensor))
    inputs_BxTxE = np.array(jax.random.normal(key, (3, 40, SMALL["n_embd"])), dtype=np.float32)
    with torch.no_grad():
        expected = reference(inputs_embeds=torch.from_numpy(inputs_BxTxE)).last_hidden_state.numpy()

    model = CausalTransformer(**SMALL)
    params = params_from_huggingface_gpt2(reference.state_dict(), SMALL["n_layer"])
    reference_shapes = jax.tree.map(jnp.shape, model.init(key, jnp.zeros((1, 4, SMALL["n_embd"]))))
    assert jax.tree.map(jnp.shape, params) == reference_shapes
    actual = np.asarray(model.apply(params, jnp.asarray(inputs_BxTxE)))
    np.testing.assert_allclose(actual, expected, atol=1e-5, rtol=1e-5)


def test_gpt2_initialisation(key):
    n_layer = 4
    model = CausalTransformer(n_positions=128, n_embd=128, n_layer=n_layer, n_head=4)
    params = model.init(key, jnp.zeros((1, 2, 128)))["params"]
    block = params["block_0"]
    assert np.std(np.asarray(block["attn"]["c_attn"]["kernel"])) == pytest.approx(0.02, rel=0.02)
    assert np.std(np.asarray(block["mlp"]["c_fc"]["kernel"])) == pytest.approx(0.02, rel=0.02)
    assert np.std(np.asarray(params["wpe"]["embedding"])) == pytest.approx(0.02, rel=0.03)
    residual_std = 0.02 / math.sqrt(2 * n_layer)
    assert np.std(np.asarray(block["attn"]["c_proj"]["kernel"])) == pytest.approx(residual_std, rel=0.03)
    assert np.std(np.asarray(block["mlp"]["c_proj"]["kernel"])) == pytest.approx(residual_std, rel=0.02)
    assert np.all(np.asarray(block["attn"]["c_attn"]["bias"]) == 0.0)
    assert np.all(np.asarray(block["ln_1"]["scale"]) == 1.0)


def test_causal_and_bf16_close_to_fp32(key):
    model = CausalTransformer(**SMALL)
    init_key, input_key, change_key = jax.random.split(key, 3)
    inputs_BxTxE = jax.random.normal(input_key, (2, 20, SMALL["n_embd"]))
    params = model.init(init_key, inputs_BxTxE)
    changed_BxTxE = inputs_BxTxE.at[:, 12:].set(jax.random.normal(change_key, (2, 8, SMALL["n_embd"])))
    out, changed_out = model.apply(params, inputs_BxTxE), model.apply(params, changed_BxTxE)
    np.testing.assert_array_equal(np.asarray(out[:, :12]), np.asarray(changed_out[:, :12]))
    assert np.abs(np.asarray(out[:, 12:] - changed_out[:, 12:])).max() > 1e-2

    bf16_out = CausalTransformer(**SMALL, dtype=jnp.bfloat16).apply(params, inputs_BxTxE)
    assert bf16_out.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(bf16_out), np.asarray(out), atol=5e-2)


@pytest.mark.parametrize("field, value", [("n_layer", 0), ("n_head", 5), ("n_positions", -1)])
def test_bad_config_names_the_field(field, value):
    config = dict(SMALL, **{field: value})
    with pytest.raises(ValueError, match=field):
        CausalTransformer(**config)


def test_too_long_sequence_is_rejected(key):
    model = CausalTransformer(**SMALL)
    with pytest.raises(ValueError, match="n_positions"):
        model.init(key, jnp.zeros((1, 65, SMALL["n_embd"])))


def test_output_positions_equal_slicing_the_full_output(key):
    model = CausalTransformer(**SMALL)
    init_key, input_key = jax.random.split(key)
    inputs_BxTxE = jax.random.normal(input_key, (2, 21, SMALL["n_embd"]))
    params = model.init(init_key, inputs_BxTxE)
    full = model.apply(params, inputs_BxTxE)
    for positions in (slice(1, None, 2), slice(5, 9)):
        selected = model.apply(params, inputs_BxTxE, output_positions=positions)
        np.testing.assert_allclose(np.asarray(selected), np.asarray(full[:, positions]), atol=1e-5)
