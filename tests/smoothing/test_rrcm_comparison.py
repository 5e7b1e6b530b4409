"""The comparison's parts: the method table against a numpy count, XLA's FLOP count against closed forms, layer-wise
learning-rate decay against hand-computed factors, and the denoiser's safetensors round trip."""

import csv

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from robust_jax.smoothing.comparison import comparison_table, markdown_comparison, write_comparison
from robust_jax.smoothing.methods.denoised.method import denoiser_shapes, load_denoiser, save_denoiser
from robust_jax.smoothing.inference_cost import flops_per_sample, seconds_per_sample
from robust_jax.smoothing.report import CertificationResults
from robust_jax.smoothing.methods.rrcm.method import finetune_optimizer, layer_index

RADII = (0.0, 0.25, 0.5, 1.0)


def _random_results(rng, examples=40):
    labels = rng.integers(0, 3, examples)
    predictions = np.where(rng.random(examples) < 0.2, -1, np.where(rng.random(examples) < 0.8, labels, 0))
    radii = np.where(predictions >= 0, rng.random(examples) * 1.2, 0.0)
    return CertificationResults(labels, predictions, radii)


def test_comparison_table_counts_correct_certificates_per_method_and_sigma(tmp_path):
    rng = np.random.default_rng(0)
    results = {method: {sigma: _random_results(rng) for sigma in (0.25, 0.5)} for method in ("gaussian", "rrcm")}
    table = comparison_table(results, RADII)
    for method, by_sigma in results.items():
        for sigma, outcome in by_sigma.items():
            for j, radius in enumerate(RADII):
                count = sum(1 for label, prediction, r in zip(outcome.labels, outcome.predictions, outcome.radii)
                            if prediction == label and r >= radius)
                assert table[method][sigma][j] == pytest.approx(count / len(outcome.labels))
        np.testing.assert_allclose(table[method]["best"], np.maximum(table[method][0.25], table[method][0.5]))
    paths = write_comparison(results, str(tmp_path), RADII, cost={"gaussian": {"flops": 2e6, "seconds": 5e-5},
                                                                 "rrcm": {"flops": 1e6, "seconds": 2e-5}})
    with open(paths["csv"]) as file:
        rows = list(csv.DictReader(file))
    assert len(rows) == 2 * 3 * len(RADII)
    for row in rows:
        sigma = row["sigma"] if row["sigma"] == "best" else float(row["sigma"])
        assert float(row["certified_accuracy"]) == pytest.approx(
            table[row["method"]][sigma][RADII.index(float(row["radius"]))], abs=1e-6)
    markdown = open(paths["md"]).read()
    assert "| rrcm | 0.25 |" in markdown and "| rrcm | 1.000 | 20.0 |" in markdown
    assert markdown == markdown_comparison(table, RADII, {"gaussian": {"flops": 2e6, "seconds": 5e-5},
                                                          "rrcm": {"flops": 1e6, "seconds": 2e-5}})


def test_flops_per_sample_of_a_dense_layer_is_two_multiply_adds_per_weight():
    inputs, outputs = 48, 10
    weights = jnp.ones((inputs, outputs))
    flops = flops_per_sample(lambda w, x: x.reshape(x.shape[0], -1) @ w, weights, (4, 4, 3), batch_size=32)
    assert flops == pytest.approx(2 * inputs * outputs, rel=0.05)
    # Twice the layers, twice the cost; the measured time is positive for both.
    double = flops_per_sample(lambda w, x: (x.reshape(x.shape[0], -1) @ w) @ w.T @ w, weights, (4, 4, 3), 32)
    assert double == pytest.approx(3 * 2 * inputs * outputs, rel=0.05)
    seconds = seconds_per_sample({"one": (lambda w, x: x.reshape(x.shape[0], -1) @ w, weights)}, (4, 4, 3), 32,
                                 repeats=3)
    assert seconds["one"] > 0


def test_layer_wise_decay_scales_each_layer_by_its_depth_from_the_head():
    depth, decay, rate = 3, 0.5, 0.1
    params = {"level_projection": {"kernel": jnp.zeros(2)},
              "backbone": {"pos_embed": jnp.zeros(2), **{f"block_{i}": {"mlp": {"fc1": {"kernel": jnp.zeros(2)}}}
                                                         for i in range(depth)},
                           "ln_final": {"scale": jnp.zeros(2)}, "head": {"kernel": jnp.zeros(2)}}}
    block = type("Block", (), {})()
    block.finetune_learning_rate, block.finetune_steps, block.finetune_weight_decay = rate, 10, 0.0
    block.layer_decay, block.finetune_warmup_steps, block.finetune_head = decay, 0, "trained"
    optimizer = finetune_optimizer(block, depth)
    gradients = jax.tree.map(jnp.ones_like, params)
    updates, _ = optimizer.update(gradients, optimizer.init(params), params)
    # Adam's first step moves every coordinate by the learning rate (sign of the gradient); the decay multiplies it.
    plain, _ = optax.adamw(rate, weight_decay=0.0).update(gradients, optax.adamw(rate).init(params), params)
    expected_layers = {"level_projection": 0, "pos_embed": 0, "block_0": 1, "block_1": 2, "block_2": 3,
                       "ln_final": 4, "head": 4}
    for path, update in jax.tree_util.tree_leaves_with_path(updates):
        names = [entry.key for entry in path]
        layer = next(expected_layers[name] for name in names if name in expected_layers)
        assert layer_index(path, depth) == layer
        np.testing.assert_allclose(update, decay ** (depth + 1 - layer) * -rate * np.ones(2), rtol=1e-5)
    assert jax.tree.structure(plain) == jax.tree.structure(updates)


def test_frozen_head_and_warm_up_of_the_fine_tuning_optimizer():
    """A frozen head gets no update; the others move by the warm-up's rate: 0 at step 0, peak/4 at step 1 of 4."""
    params = {"backbone": {"block_0": {"kernel": jnp.zeros(2)}, "head": {"kernel": jnp.zeros(2)}}}
    block = type("Block", (), {})()
    block.finetune_learning_rate, block.finetune_steps, block.finetune_weight_decay = 0.1, 20, 0.0
    block.layer_decay, block.finetune_warmup_steps, block.finetune_head = 1.0, 4, "frozen"
    optimizer = finetune_optimizer(block, 1)
    gradients = jax.tree.map(jnp.ones_like, params)
    state = optimizer.init(params)
    first, state = optimizer.update(gradients, state, params)
    second, _ = optimizer.update(gradients, state, params)
    np.testing.assert_array_equal(first["backbone"]["block_0"]["kernel"], 0.0)
    np.testing.assert_allclose(second["backbone"]["block_0"]["kernel"], -0.1 / 4, rtol=1e-4)  # Adam eps aside
    np.testing.assert_array_equal(second["backbone"]["head"]["kernel"], 0.0)


def test_denoiser_file_round_trip(tmp_path):
    from robust_jax.configs.smoothing import denoised_block

    block = denoised_block()
    block.denoiser_channels = 8
    shapes = denoiser_shapes(block, (8, 8, 1))
    rng = np.random.default_rng(1)
    flat = {name: rng.standard_normal(shape).astype(np.float32) for name, shape in shapes.items()}
    tree = {}
    for name, value in flat.items():
        node = tree
        *parents, leaf = name.split("/")
        for parent in parents:
            node = node.setdefault(parent, {})
        node[leaf] = value
    path = str(tmp_path / "denoiser.safetensors")
    save_denoiser(tree, path)
    loaded = load_denoiser(path)
    for (path_a, a), (path_b, b) in zip(jax.tree_util.tree_leaves_with_path(tree),
                                        jax.tree_util.tree_leaves_with_path(loaded)):
        assert path_a == path_b
        np.testing.assert_array_equal(a, b)
