"""The rRCM comparison end to end: the `tiny` preset with every method (results.json layout, certified accuracy
recounted from the TSVs, FLOPs of the two-network baseline as the sum of its parts, resumption), each kind of
method above chance by a margin once trained a little longer, and the `cifar10`
preset's ViT-B/4 (parameter count against the closed form; pretraining and fine-tuning steps on tfds mock data)."""

import csv
import json

import jax
import numpy as np
import pytest

from robust_jax.configs import rrcm
from robust_jax.core.run import run_study
from robust_jax.smoothing.methods.rrcm import method as rrcm_method
from robust_jax.smoothing.methods.denoised.method import TinyUNet, make_denoiser_init_fn
from robust_jax.smoothing.inference_cost import flops_per_sample
from tests.requirements import require

METHODS = ["gaussian", "gaussian_consistency", "denoised", "denoised_finetuned", "rrcm", "rrcm_scratch"]


def _recount(tsv_path, radius):
    """Certified accuracy at `radius` straight from a certification TSV: correct and radius >= r, in numpy."""
    rows = [line.split("\t") for line in open(tsv_path).read().splitlines()[1:]]
    correct = np.array([int(row[4]) for row in rows]) == 1
    radii = np.array([float(row[3]) for row in rows])
    return float(np.mean(correct & (radii >= radius)))


@pytest.mark.slow
def test_each_kind_of_method_learns_beyond_chance(tmp_path, one_device):
    """The tiny preset trained a little longer (150 steps per classifier, 100 denoiser steps, 30 pretraining steps):
    every method (Gaussian noise training with and without the consistency term, the paper's DDS with and without
    fine-tuning, rRCM with and without pretraining) classifies noisy test digits (sigma 0.25, one noise draw per
    digit, 360 digits) far above chance (0.1; one standard error about 0.016 there). Measured: gaussian 0.57,
    gaussian_consistency 0.59, denoised 0.68, denoised_finetuned 0.66, rrcm 0.25, rrcm_scratch 0.23; with each
    training image given the next image's label, every method scores 0.08-0.11. (A denoiser this short does not yet
    denoise: DDS scores the same without it, so the denoiser's objective is checked by its oracle test in
    test_rrcm_denoiser.py, not here.)"""
    config = rrcm.get_config("tiny")
    config.sigmas = (0.25,)
    config.num_steps = 150
    config.denoised.update(classifier_steps=150, denoiser_steps=100)
    config.rrcm.update(pretrain_steps=30, finetune_steps=150)
    config.checkpoint_every = 1000
    config.certify_every = 120
    accuracy = {method: value["sigma=0.25"]
                for method, value in run_study(config, str(tmp_path), mesh=one_device)["metrics"]["noisy_test_accuracy"].items()}
    assert list(accuracy) == METHODS
    margins = {"gaussian": 0.35, "gaussian_consistency": 0.35, "denoised": 0.4, "denoised_finetuned": 0.4,
               "rrcm": 0.17, "rrcm_scratch": 0.15}
    assert all(accuracy[method] > margin for method, margin in margins.items()), accuracy


@pytest.mark.slow
def test_tiny_preset_certifies_every_method_on_one_path_and_resumes(tmp_path, one_device):
    config = rrcm.get_config("tiny")
    config.sigmas = (0.5,)  # one sigma: the per-sigma paths are the same for each (several: tests/smoothing/test_study.py)
    results = run_study(config, str(tmp_path), mesh=one_device)
    metrics = results["metrics"]
    assert list(metrics["certified_accuracy"]) == METHODS
    examples = len(range(0, 360, config.certify_every))
    assert metrics["certified_examples"] == examples
    for method in METHODS:
        rows = metrics["certified_accuracy"][method]
        assert list(rows) == [f"sigma={s:g}" for s in config.sigmas] + ["best"]
        for sigma in config.sigmas:
            tsv = tmp_path / method / f"certify_sigma{sigma:g}.tsv"
            assert len(open(tsv).read().splitlines()) == 1 + examples
            for radius in config.radii:
                assert rows[f"sigma={sigma:g}"][f"r={radius:g}"] == pytest.approx(_recount(tsv, radius))
            # The same certification key per sigma for every method: the settings files agree.
            settings = json.loads((tmp_path / method / f"certify_sigma{sigma:g}.json").read_text())
            reference = json.loads((tmp_path / METHODS[0] / f"certify_sigma{sigma:g}.json").read_text())
            assert settings == reference
        for radius in config.radii:
            assert rows["best"][f"r={radius:g}"] == max(rows[f"sigma={s:g}"][f"r={radius:g}"] for s in config.sigmas)
        assert set(metrics["noisy_test_accuracy"][method]) == {f"sigma={s:g}" for s in config.sigmas}
    flops = metrics["inference_flops_per_sample"]
    assert list(flops) == METHODS and flops["gaussian"] == flops["gaussian_consistency"]
    # The denoised baseline runs the denoiser and then the classifier: its FLOPs are the sum of the two measured
    # separately (the clipping and rescaling in between are a few operations per pixel).
    denoiser = TinyUNet(config.denoised.denoiser_channels)
    denoiser_params, _ = make_denoiser_init_fn(denoiser, (8, 8, 1))(jax.random.key(0))
    denoiser_flops = flops_per_sample(lambda p, x: denoiser.apply({"params": p}, x, np.zeros(len(x), np.int32)),
                                      denoiser_params, (8, 8, 1), config.certify_batch_size)
    assert flops["denoised"] == pytest.approx(denoiser_flops + flops["gaussian"], rel=0.02)
    assert flops["denoised_finetuned"] == flops["denoised"] and flops["rrcm_scratch"] == flops["rrcm"]
    # denoised_finetuned reuses the denoised method's denoiser and clean classifier; rrcm_scratch has no pretraining
    trainings = sorted(str(p.parent.relative_to(tmp_path)) for p in tmp_path.glob("**/checkpoints"))
    assert trainings == ["denoised/classifier", "denoised/denoiser", "denoised_finetuned/sigma=0.5",
                         "gaussian/sigma=0.5", "gaussian_consistency/sigma=0.5", "rrcm/pretrain", "rrcm/sigma=0.5",
                         "rrcm_scratch/sigma=0.5"]

    with open(tmp_path / "certified_accuracy.csv") as file:
        csv_rows = list(csv.DictReader(file))
    assert {row["method"] for row in csv_rows} == set(METHODS)
    assert len(csv_rows) == len(METHODS) * (len(config.sigmas) + 1) * len(config.radii)
    cost = json.loads((tmp_path / "inference_cost.json").read_text())
    assert cost["flops_per_sample"] == flops and all(cost["seconds_per_sample"][m] > 0 for m in METHODS)
    for name in ("certified_accuracy.md", "certified_accuracy.png", "rrcm/pretrain/checkpoints",
                 "denoised/denoiser.safetensors", "denoised/classifier/checkpoints"):
        assert (tmp_path / name).exists()

    again = run_study(config, str(tmp_path), mesh=one_device)  # everything restored: the same metrics, no new TSV lines
    assert again["metrics"] == metrics


def _vit_parameter_count(width, depth, mlp, patch, channels, tokens, level_dim, projector_hidden, projection):
    """Closed form: patch embedding, CLS, position embedding, level-token projection, depth x (2 LayerNorms,
    qkv, attention output, MLP), final LayerNorm, and the projector (no biases before BatchNorm)."""
    embedding = patch * patch * channels * width + width + width + tokens * width + level_dim * width + width
    block = 2 * 2 * width + (width * 3 * width + 3 * width) + (width * width + width) + (width * mlp + mlp) + (
        mlp * width + width)
    projector = width * projector_hidden + 2 * projector_hidden + projector_hidden * projector_hidden + (
        2 * projector_hidden) + projector_hidden * projection
    return embedding + depth * block + 2 * width + projector


def test_cifar10_preset_builds_vit_b4_with_the_closed_form_parameter_count():
    config = rrcm.get_config("cifar10")
    network = rrcm_method.build_network(config.rrcm, 0, (32, 32, 3))
    from robust_jax.smoothing.methods.rrcm.losses import make_pretrain_init_fn

    params, model_state = jax.eval_shape(make_pretrain_init_fn(network, (32, 32, 3)), jax.random.key(0))
    count = sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(params))
    backbone = network.backbone
    assert (backbone.width, backbone.depth, backbone.num_heads, backbone.mlp_dim, backbone.patch_size) == (
        768, 12, 12, 3072, 4)
    expected = _vit_parameter_count(768, 12, 3072, 4, 3, 1 + 1 + 64, 256, 2048, 256)
    assert count == expected == 91_642_112  # ViT-B/4 encoder 85.1 M + level-token projection 0.2 M + projector 6.3 M
    assert jax.tree.structure(model_state["ema_params"]) == jax.tree.structure(params)


@pytest.mark.slow
def test_cifar10_preset_pretrains_and_fine_tunes_on_mock_tfds(tmp_path, one_device):
    """The cifar10 preset's rrcm path (tfds + grain stream, ViT-B/4 at 32x32, AdamW with clipping and layer-wise
    decay, certification of every k-th test image): two pretraining and two fine-tuning steps at batch 8. The
    encoder keeps the preset's width, heads, MLP and patches but one block instead of 12, so that a CPU runs it in
    seconds."""
    tfds = require("tensorflow_datasets")
    config = rrcm.get_config("cifar10")
    config.methods = ("rrcm",)
    config.sigmas = (0.25,)
    config.radii = (0.0, 0.25)
    config.rrcm.depth = 1
    config.rrcm.update(pretrain_steps=2, pretrain_batch_size=8, pretrain_warmup_steps=1, finetune_steps=2,
                       finetune_warmup_steps=1, finetune_batch_size=8)
    config.eval_batch_size = 8
    config.checkpoint_every = 2
    config.log_every = 1
    config.n0, config.n, config.certify_batch_size, config.certify_every = 8, 16, 16, 5
    with tfds.testing.mock_data(num_examples=10, policy=tfds.testing.MockPolicy.USE_CODE):
        results = run_study(config, str(tmp_path), mesh=one_device)
    history = [json.loads(line) for line in open(tmp_path / "rrcm" / "pretrain" / "metrics.jsonl")]
    assert [row["step"] for row in history] == [1, 2]
    assert all(np.isfinite(row["loss"]) for row in history)
    # Two pretraining steps: the curriculum's stage length is max(1, floor(2 / log2(5))) = 1 step, so step 0 uses
    # 21 levels and step 1 the doubled 41.
    assert [row["num_levels"] for row in history] == [21, 41]
    finetune = [json.loads(line) for line in open(tmp_path / "rrcm" / "sigma=0.25" / "metrics.jsonl")]
    assert [row["step"] for row in finetune] == [1, 2] and all(np.isfinite(row["loss"]) for row in finetune)
    assert results["metrics"]["certified_examples"] == 2  # test indices 0 and 5 of the 10 mock records
    assert results["metrics"]["inference_flops_per_sample"]["rrcm"] > 1e8
