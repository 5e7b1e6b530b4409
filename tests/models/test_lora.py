"""LoRA: exact identity at init, frozen base under the optimiser mask, merge/unmerge, DenseGeneral kernels, errors."""

from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from robust_jax.models import clip_import, lora

DATA = Path(__file__).resolve().parent.parent / "testdata"
VISION_QKV = r"visual/.*attn/in_proj"


@pytest.fixture(scope="module")
def tiny_clip():
    return clip_import.from_openclip(DATA / "openclip_tiny_quickgelu.safetensors", "tiny")


class SmallMLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.gelu(nn.Dense(16, name="mlp_in")(x))
        x = nn.gelu(nn.Dense(16, name="mlp_out")(x))
        return nn.Dense(3, name="head")(x)


class GeneralAttentionLike(nn.Module):
    """DenseGeneral kernels of rank 3 on both sides: (D, H, K) in, (H, K, D) out."""

    @nn.compact
    def __call__(self, x):
        h = nn.DenseGeneral((2, 3), name="query")(x)
        return nn.DenseGeneral(x.shape[-1], axis=(-2, -1), name="out")(jnp.tanh(h))


def _randomise_b(lora_params, key):
    """Adapters as they would be after training (B = 0 would make every check below trivial)."""
    rng = np.random.default_rng(int(jax.random.randint(key, (), 0, 2**30)))  # numpy: no per-shape compiles
    leaves, treedef = jax.tree.flatten(lora_params)
    return jax.tree.unflatten(treedef, [jnp.asarray(0.3 * rng.standard_normal(x.shape), x.dtype) for x in leaves])


def test_adapted_clip_equals_base_at_init_and_merge_matches(tiny_clip, key):
    model, variables = tiny_clip
    adapters = lora.lora_init(variables, VISION_QKV, rank=4, alpha=8.0, key=key)
    cfg = model.config.vision
    assert sorted(lora.matching_kernels(variables, VISION_QKV)) == [
        f"params/visual/transformer/resblocks_{i}/attn/in_proj/kernel" for i in range(cfg.layers)]
    assert lora.num_lora_parameters(adapters) == cfg.layers * 4 * (cfg.width + 3 * cfg.width)
    images = jax.random.normal(jax.random.fold_in(key, 1), (4, 32, 32, 3), jnp.float32)

    @jax.jit
    def adapted_forward(adapters, variables, images):
        return model.apply(lora.apply_lora(variables, adapters), images, method=model.encode_image)

    base_forward = jax.jit(lambda v, x: model.apply(v, x, method=model.encode_image))
    base = base_forward(variables, images)
    np.testing.assert_array_equal(adapted_forward(adapters, variables, images), base)  # exact: W + 0 == W

    trained = _randomise_b(adapters, jax.random.fold_in(key, 2))
    adapted = adapted_forward(trained, variables, images)
    assert np.max(np.abs(adapted - base)) > 1e-2  # the adapters do change the output
    merged_output = base_forward(lora.merge(variables, trained), images)
    np.testing.assert_allclose(merged_output, adapted, atol=1e-5)


def test_dense_adapter_matches_the_low_rank_formula(key):
    model = SmallMLP()
    x = jax.random.normal(key, (5, 7))
    variables = jax.jit(model.init)(jax.random.fold_in(key, 1), x)
    adapters = _randomise_b(lora.lora_init(variables, r"mlp_in", rank=2, alpha=3.0, key=key), key)
    adapter = adapters["params"]["mlp_in"]["kernel"]
    assert adapter.a.shape == (7, 2) and adapter.b.shape == (2, 16) and adapter.scaling == 1.5
    merged = lora.apply_lora(variables, adapters)
    p = variables["params"]["mlp_in"]
    expected = x @ p["kernel"] + p["bias"] + 1.5 * (x @ adapter.a) @ adapter.b  # h = xW + s (xA) B
    got = x @ merged["params"]["mlp_in"]["kernel"] + merged["params"]["mlp_in"]["bias"]
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    # every other leaf is passed through untouched
    np.testing.assert_array_equal(merged["params"]["mlp_out"]["kernel"], variables["params"]["mlp_out"]["kernel"])


def test_dense_general_kernels_reshape_to_in_out_groups(key):
    model = GeneralAttentionLike()
    x = jax.random.normal(key, (4, 6))
    variables = jax.jit(model.init)(key, x)
    assert variables["params"]["query"]["kernel"].shape == (6, 2, 3)
    assert variables["params"]["out"]["kernel"].shape == (2, 3, 6)
    split = lambda path, shape: 2 if "/out/" in path else 1  # noqa: E731
    adapters = _randomise_b(lora.lora_init(variables, r"query|out", rank=2, alpha=2.0, key=key,
                                           num_in_axes=split), key)
    q, o = adapters["params"]["query"]["kernel"], adapters["params"]["out"]["kernel"]
    assert (q.a.shape, q.b.shape, o.a.shape, o.b.shape) == ((6, 2), (2, 6), (6, 2), (2, 6))
    p = variables["params"]
    kernel_q = p["query"]["kernel"] + (q.a @ q.b).reshape(6, 2, 3)
    kernel_o = p["out"]["kernel"] + (o.a @ o.b).reshape(2, 3, 6)
    h = jnp.tanh(jnp.einsum("bd,dhk->bhk", x, kernel_q) + p["query"]["bias"])
    expected = jnp.einsum("bhk,hkd->bd", h, kernel_o) + p["out"]["bias"]
    np.testing.assert_allclose(model.apply(lora.apply_lora(variables, adapters), x), expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="num_in_axes=3"):
        lora.lora_init(variables, r"query", rank=2, alpha=2.0, key=key, num_in_axes=3)


def test_training_changes_only_adapters_and_head(key):
    model = SmallMLP()
    x = jax.random.normal(key, (32, 7))
    targets = jax.random.randint(jax.random.fold_in(key, 1), (32,), 0, 3)
    variables = jax.jit(model.init)(jax.random.fold_in(key, 2), x)
    head = {"head": variables["params"]["head"]}
    tree = {"base": variables, "lora": lora.lora_init(variables, r"mlp_(in|out)", 4, 4.0, key), "head": head}
    mask = lora.trainable_mask(tree, [r"^lora/", r"^head/"])
    assert sum(jax.tree.leaves(mask)) == 4 + 2  # (a, b) x 2 layers + head kernel and bias
    optimizer = lora.freeze_optimizer(optax.adamw(1e-2, weight_decay=0.1), mask)

    def loss_fn(tree):
        params = lora.apply_lora(tree["base"], tree["lora"])
        params = {"params": {**params["params"], **tree["head"]}}
        logits = model.apply(params, x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()

    @jax.jit
    def step(tree, opt_state):
        loss, grads = jax.value_and_grad(loss_fn)(tree)  # gradients reach the base too; the mask must stop them
        updates, opt_state = optimizer.update(grads, opt_state, tree)
        return optax.apply_updates(tree, updates), opt_state, loss, grads

    opt_state = optimizer.init(tree)
    new_tree, losses = tree, []
    for _ in range(5):
        new_tree, opt_state, loss, grads = step(new_tree, opt_state)
        losses.append(float(loss))
    assert losses[-1] < losses[0]
    assert np.abs(grads["base"]["params"]["mlp_in"]["kernel"]).max() > 0
    for before, after in zip(jax.tree.leaves(tree["base"]), jax.tree.leaves(new_tree["base"])):
        np.testing.assert_array_equal(before, after)  # bitwise
    for name in ("lora", "head"):
        for before, after in zip(jax.tree.leaves(tree[name]), jax.tree.leaves(new_tree[name])):
            assert np.abs(before - after).max() > 0


def test_merge_then_unmerge_restores_base(tiny_clip, key):
    variables = tiny_clip[1]
    adapters = _randomise_b(lora.lora_init(variables, r"attn/(in_proj|out_proj)|c_fc", 8, 16.0, key), key)
    merged = lora.merge(variables, adapters)
    restored = lora.unmerge(merged, adapters)
    kernel = "params/visual/transformer/resblocks_0/attn/in_proj/kernel"
    flat_base, flat_merged = lora._flat_dict(variables), lora._flat_dict(merged)
    assert np.abs(flat_merged[kernel] - flat_base[kernel]).max() > 1e-2
    for (path, before), after in zip(flat_base.items(), jax.tree.leaves(restored)):
        np.testing.assert_allclose(after, before, atol=1e-6, rtol=0, err_msg=path)


def test_bad_patterns_and_arguments_raise(tiny_clip, key):
    variables = tiny_clip[1]
    with pytest.raises(ValueError, match=r"pattern='.\*mlp.\*' matches no kernel"):
        lora.lora_init(variables, r".*mlp.*", 4, 4.0, key)
    with pytest.raises(ValueError, match="rank=0"):
        lora.lora_init(variables, VISION_QKV, 0, 4.0, key)
    with pytest.raises(ValueError, match="alpha"):
        lora.lora_init(variables, VISION_QKV, 4, -1.0, key)
    with pytest.raises(ValueError, match="rank=64 exceeds"):
        lora.lora_init(variables, VISION_QKV, 64, 4.0, key)
    with pytest.raises(ValueError, match="matches no leaf"):
        lora.trainable_mask({"base": variables}, [r"^lora/"])
