"""Tests for robust_jax/models/resnet.py.

Independent checks: exact parameter counts against the published figures (torchvision resnet50 25,557,032 and
resnet18 11,689,512; He et al. 0.27M / 1.7M for ResNet-20/110) and a hand count from the architecture; BN folding
against the unfolded model with random parameters and random running statistics; the ImageNet stem against torch's
own Conv2d/BatchNorm2d/MaxPool2d (padding conventions).
Parameters are built from `jax.eval_shape` and filled with numpy random numbers, so no test pays for a jitted init.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from robust_jax.models import resnet
from tests.requirements import require


def _param_count(model, image_size):
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, image_size, image_size, 3))))
    return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(variables["params"]))


def _random_variables(model, image_size, seed):
    """Random parameters and random running statistics (far from the identity initialisation)."""
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, image_size, image_size, 3))))
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        name = path[-1].key
        shape = leaf.shape
        if name == "kernel":
            fan_in = int(np.prod(shape[:-1]))
            return jnp.asarray(rng.normal(0.0, np.sqrt(2.0 / fan_in), shape), jnp.float32)
        if name == "scale":
            return jnp.asarray(rng.uniform(0.5, 1.5, shape), jnp.float32)
        if name in ("bias", "mean"):
            return jnp.asarray(rng.normal(0.0, 0.2, shape), jnp.float32)
        if name == "var":
            return jnp.asarray(rng.uniform(0.5, 2.0, shape), jnp.float32)
        raise AssertionError(f"unexpected leaf {path}")

    return jax.tree_util.tree_map_with_path(fill, shapes)


def _cifar_count_by_hand(depth, num_classes=10):
    """He et al. §4.2 with 1x1 conv + BN projection shortcuts where the shape changes; convs without bias."""
    n = (depth - 2) // 6
    conv = lambda k, c_in, c_out: k * k * c_in * c_out  # noqa: E731
    bn = lambda c: 2 * c  # noqa: E731
    total = conv(3, 3, 16) + bn(16)
    c_in = 16
    for width in (16, 32, 64):
        for _ in range(n):
            total += conv(3, c_in, width) + bn(width) + conv(3, width, width) + bn(width)
            if c_in != width:
                total += conv(1, c_in, width) + bn(width)
            c_in = width
    return total + 64 * num_classes + num_classes


def test_parameter_counts_match_published_figures():
    assert _cifar_count_by_hand(20) == 272_474
    assert _cifar_count_by_hand(110) == 1_730_714
    assert _param_count(resnet.resnet20(), 32) == 272_474  # He et al.: 0.27M
    assert _param_count(resnet.resnet110(), 32) == 1_730_714  # He et al.: 1.7M
    assert _param_count(resnet.CifarResNet(depth=56, num_classes=100), 32) == _cifar_count_by_hand(56, 100)
    assert _param_count(resnet.resnet50(), 64) == 25_557_032  # torchvision resnet50
    assert _param_count(resnet.resnet18(), 64) == 11_689_512  # torchvision resnet18


def test_bad_configuration_is_rejected_with_the_field_name():
    with pytest.raises(ValueError, match="depth=21"):
        resnet.CifarResNet(depth=21)
    with pytest.raises(ValueError, match="block='wide'"):
        resnet.ImageNetResNet(block="wide")


def test_resnet50_strides_sit_on_the_3x3_conv():
    """torchvision v1.5: in a down-sampling bottleneck the 1x1 reduce keeps the resolution, the 3x3 halves it."""
    model = resnet.resnet50(num_classes=10)
    x = jnp.zeros((1, 64, 64, 3))
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), x))
    _, state = jax.eval_shape(lambda v: model.apply(v, x, capture_intermediates=True, mutable=["intermediates"]),
                              variables)
    inter = state["intermediates"]
    assert inter["stem"]["__call__"][0].shape == (1, 16, 16, 64)
    block = inter["stage2_block1"]
    assert block["conv_bn1"]["__call__"][0].shape == (1, 16, 16, 128)
    assert block["conv_bn2"]["__call__"][0].shape == (1, 8, 8, 128)
    assert block["conv_bn3"]["__call__"][0].shape == (1, 8, 8, 512)
    assert inter["stage4_block3"]["__call__"][0].shape == (1, 2, 2, 2048)


@pytest.mark.parametrize("depth", [20])
def test_fold_batch_norm_cifar_matches_eval_mode(depth):
    model = resnet.CifarResNet(depth=depth)
    variables = _random_variables(model, 32, seed=depth)
    images = jnp.asarray(np.random.default_rng(1).uniform(0, 1, (3, 32, 32, 3)), jnp.float32)
    apply = jax.jit(model.apply)
    expected = apply(variables, images)
    folded_model, folded_variables = resnet.fold_batch_norm(model, variables)
    got = jax.jit(folded_model.apply)(folded_variables, images)
    scale = max(1.0, float(jnp.abs(expected).max()))
    np.testing.assert_allclose(got, expected, atol=1e-4 * scale, rtol=0)
    # The running statistics matter: with unit ones in their place the output is far off (the check can fail).
    unit_stats = jax.tree.map(jnp.ones_like, variables["batch_stats"])
    unit_output = apply({"params": variables["params"], "batch_stats": unit_stats}, images)
    assert float(jnp.abs(expected - unit_output).max()) > 1e-2


def test_fold_batch_norm_resnet50_matches_eval_mode():
    model = resnet.resnet50(num_classes=10)
    variables = _random_variables(model, 32, seed=50)
    images = jnp.asarray(np.random.default_rng(2).uniform(0, 1, (2, 32, 32, 3)), jnp.float32)
    expected = jax.jit(model.apply)(variables, images)
    folded_model, folded_variables = resnet.fold_batch_norm(model, variables)
    got = jax.jit(folded_model.apply)(folded_variables, images)
    scale = max(1.0, float(jnp.abs(expected).max()))
    np.testing.assert_allclose(got, expected, atol=1e-4 * scale, rtol=0)


def test_folded_model_is_conv_bias_only_and_inference_only():
    model = resnet.CifarResNet(depth=8)
    variables = _random_variables(model, 32, seed=8)
    folded_model, folded_variables = resnet.fold_batch_norm(model, variables)
    assert set(folded_variables) == {"params"}
    paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(folded_variables)]
    assert not any("bn" in p.split("'") for p in paths)
    assert folded_variables["params"]["stem"]["conv"]["bias"].shape == (16,)
    # Same parameter tree as a freshly initialised folded model.
    fresh = jax.eval_shape(lambda: folded_model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3))))
    assert jax.tree.structure(fresh) == jax.tree.structure(folded_variables)
    with pytest.raises(ValueError, match="train=True"):
        folded_model.apply(folded_variables, jnp.zeros((1, 32, 32, 3)), train=True)
    with pytest.raises(ValueError, match="batch_stats"):
        resnet.fold_batch_norm(model, {"params": variables["params"]})


def test_train_mode_updates_running_statistics_like_torch_momentum():
    model = resnet.CifarResNet(depth=8)
    variables = _random_variables(model, 32, seed=3)
    variables = {"params": variables["params"],
                 "batch_stats": jax.tree.map(lambda s: jnp.full_like(s, 0.5), variables["batch_stats"])}
    images = jnp.asarray(np.random.default_rng(3).uniform(0, 1, (4, 8, 8, 3)), jnp.float32)
    train_apply = functools.partial(model.apply, train=True, mutable=["batch_stats", "intermediates"],
                                    capture_intermediates=lambda mdl, _: mdl.name == "conv")
    logits, state = jax.jit(train_apply)(variables, images)
    assert logits.shape == (4, 10) and logits.dtype == jnp.float32
    conv_out = state["intermediates"]["stem"]["conv"]["__call__"][0]
    new_stats = state["batch_stats"]["stem"]["bn"]
    # torch momentum 0.1 == Flax momentum 0.9: running <- 0.9 running + 0.1 batch (biased variance in Flax).
    np.testing.assert_allclose(new_stats["mean"], 0.9 * 0.5 + 0.1 * conv_out.mean(axis=(0, 1, 2)), atol=1e-5)
    np.testing.assert_allclose(new_stats["var"], 0.9 * 0.5 + 0.1 * conv_out.var(axis=(0, 1, 2)), rtol=1e-4)
    # Training mode normalises with the batch statistics, so it differs from evaluation.
    assert float(jnp.abs(logits - jax.jit(model.apply)(variables, images)).max()) > 1e-3


def test_normalisation_is_the_first_layer():
    mean, std = (0.3, 0.4, 0.5), (0.2, 0.25, 0.3)
    model = resnet.CifarResNet(depth=8, mean=mean, std=std)
    plain = resnet.CifarResNet(depth=8, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    variables = _random_variables(model, 16, seed=4)
    images = jnp.asarray(np.random.default_rng(4).uniform(0, 1, (2, 16, 16, 3)), jnp.float32)
    normalised = (images - jnp.asarray(mean)) / jnp.asarray(std)
    np.testing.assert_allclose(jax.jit(model.apply)(variables, images), jax.jit(plain.apply)(variables, normalised),
                               atol=1e-5)
    assert resnet.resnet110().mean == resnet.CIFAR10_MEAN and resnet.resnet50().std == resnet.IMAGENET_STD


def test_bfloat16_compute_keeps_float32_params_and_is_close():
    model = resnet.CifarResNet(depth=8)
    model_bf16 = resnet.CifarResNet(depth=8, dtype=jnp.bfloat16)
    variables = _random_variables(model, 16, seed=5)
    shapes = jax.eval_shape(lambda: model_bf16.init(jax.random.key(0), jnp.zeros((1, 16, 16, 3))))
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(shapes))
    images = jnp.asarray(np.random.default_rng(5).uniform(0, 1, (2, 16, 16, 3)), jnp.float32)
    ref = jax.jit(model.apply)(variables, images)
    out = jax.jit(model_bf16.apply)(variables, images)
    assert out.dtype == jnp.float32
    assert float(jnp.abs(out - ref).max()) <= 0.05 * max(1.0, float(jnp.abs(ref).max()))


@pytest.mark.parametrize("image_size", [32, 33])
def test_imagenet_stem_matches_torch_layers(image_size):
    """Symmetric padding 3 for the 7x7/2 conv and -inf padding 1 for the 3x3/2 max pool, as torch does."""
    torch = require("torch")
    stem = resnet.ImageNetStem()
    rng = np.random.default_rng(image_size)
    x = rng.uniform(-1, 1, (2, image_size, image_size, 3)).astype(np.float32)
    shapes = jax.eval_shape(lambda: stem.init(jax.random.key(0), jnp.zeros((1, image_size, image_size, 3)), False))
    kernel = rng.normal(0, 0.1, shapes["params"]["conv_bn"]["conv"]["kernel"].shape).astype(np.float32)
    scale, bias = rng.uniform(0.5, 1.5, 64).astype(np.float32), rng.normal(0, 0.2, 64).astype(np.float32)
    mean, var = rng.normal(0, 0.2, 64).astype(np.float32), rng.uniform(0.5, 2, 64).astype(np.float32)
    variables = {"params": {"conv_bn": {"conv": {"kernel": kernel}, "bn": {"scale": scale, "bias": bias}}},
                 "batch_stats": {"conv_bn": {"bn": {"mean": mean, "var": var}}}}
    ours = np.asarray(stem.apply(variables, jnp.asarray(x), False))

    conv = torch.nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
    bn = torch.nn.BatchNorm2d(64, eps=1e-5)
    with torch.no_grad():
        conv.weight.copy_(torch.from_numpy(kernel.transpose(3, 2, 0, 1)))
        bn.weight.copy_(torch.from_numpy(scale))
        bn.bias.copy_(torch.from_numpy(bias))
        bn.running_mean.copy_(torch.from_numpy(mean))
        bn.running_var.copy_(torch.from_numpy(var))
        reference = torch.nn.Sequential(conv, bn, torch.nn.ReLU(), torch.nn.MaxPool2d(3, 2, 1)).eval()
        theirs = reference(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy().transpose(0, 2, 3, 1)
    assert ours.shape == theirs.shape
    np.testing.assert_allclose(ours, theirs, atol=1e-4)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_fast_inference_matches_eval_mode(dtype):
    model = resnet.CifarResNet(depth=8)
    variables = _random_variables(model, 16, seed=6)
    images = jnp.asarray(np.random.default_rng(6).uniform(0, 1, (8, 16, 16, 3)), jnp.float32)
    expected = jax.jit(model.apply)(variables, images)
    apply_fn, params = resnet.fast_inference(model, variables, dtype=dtype)
    assert set(params) == {"params"} and "bn" not in params["params"]["stem"]
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(params))
    got = jax.jit(apply_fn)(params, images)
    assert got.dtype == jnp.float32 and got.shape == expected.shape
    scale = max(1.0, float(jnp.abs(expected).max()))
    # bfloat16 keeps 8 bits of mantissa: the logits move by a few parts in a thousand of their scale, not more.
    tolerance = 1e-4 if dtype == jnp.float32 else 0.05
    np.testing.assert_allclose(got, expected, atol=tolerance * scale, rtol=0)
    if dtype == jnp.bfloat16:
        assert float(jnp.abs(got - expected).max()) > 1e-6 * scale  # it really computes in bfloat16


def test_fast_inference_rejects_other_dtypes():
    model = resnet.CifarResNet(depth=8)
    variables = _random_variables(model, 16, seed=7)
    with pytest.raises(ValueError, match="dtype='float16'"):
        resnet.fast_inference(model, variables, dtype=jnp.float16)


@pytest.mark.parametrize("batch_chunk", [3, 4, 7])
def test_fast_inference_in_chunks_computes_the_same_function(batch_chunk):
    """Slices of at most batch_chunk rows (13 rows: padded slices of 3 or 4, and one slice of 7 + padding)."""
    model = resnet.CifarResNet(depth=8)
    variables = _random_variables(model, 16, seed=8)
    images = jnp.asarray(np.random.default_rng(8).uniform(0, 1, (13, 16, 16, 3)), jnp.float32)
    whole_fn, params = resnet.fast_inference(model, variables, batch_chunk=None)
    chunked_fn, _ = resnet.fast_inference(model, variables, batch_chunk=batch_chunk)
    expected = jax.jit(whole_fn)(params, images)
    got = jax.jit(chunked_fn)(params, images)
    assert got.shape == expected.shape == (13, 10)
    np.testing.assert_allclose(got, expected, atol=1e-5 * max(1.0, float(jnp.abs(expected).max())), rtol=0)
    # Rows stay in place: a permuted batch gives the permuted logits.
    order = np.random.default_rng(9).permutation(13)
    np.testing.assert_allclose(jax.jit(chunked_fn)(params, images[order]), expected[order], atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="batch_chunk=0"):
        resnet.fast_inference(model, variables, batch_chunk=0)
