"""The randomized-smoothing study: smoothed classifiers built by several methods on the same data, certified through
the same path, compared.

Methods (config.methods), each trained through core.train on the config's training split:
  gaussian              per sigma, the config's classifier trained on noisy copies (Cohen, Rosenfeld & Kolter 2019)
  gaussian_consistency  the same with consistency regularisation (Jeong & Shin 2020)
  denoised              a diffusion denoiser and a classifier on clean images, optionally fine-tuned on denoised ones
                        (Carlini et al. 2023): denoiser + classifier per noise sample
  rrcm                  rRCM pretraining, then fine-tuning per sigma (Lei et al.): one ViT forward per noise sample
Each method's base classifier at each sigma is certified by `certify_dataset` (CERTIFY on every k-th test example,
one resumable TSV line per example; the same certification key per sigma for every method, so every method sees the
same noise), and its accuracy on noisy test images is measured. Then per method the certified-accuracy report of its
sigmas, and for all methods one comparison table and plot with each method's inference cost per noise sample (XLA's
FLOP count in the metrics; the measured time beside them in inference_cost.json). Every stage resumes: trainings from
their checkpoints, certification from its TSV.

Workdir layout: `<method>/` per method (its trainings, see each method module; `certify_sigma<s>.tsv` and `.json`;
`certified_accuracy.{md,csv,png}` over its sigmas); `certified_accuracy.{md,csv,png}` the comparison;
`inference_cost.json` FLOPs and measured seconds per noise sample.

results.json metrics: certified_accuracy[method]["sigma=<s>" | "best"]["r=<radius>"],
noisy_test_accuracy[method]["sigma=<s>"], inference_flops_per_sample[method], certified_examples.
"""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import ml_collections
from jax.sharding import Mesh

from robust_jax.core import checks
from robust_jax.core import mesh as mesh_lib
from robust_jax.core.evaluate import evaluate
from robust_jax.smoothing import denoised_method, gaussian_method, rrcm_method
from robust_jax.smoothing.classifiers import (  # noqa: F401  (re-exported: the study's public names)
    LR_SCHEDULES,
    MODELS,
    OPTIMIZERS,
    CertifiableClassifier,
    Classifier,
    build_classifier,
    make_optimizer,
)
from robust_jax.smoothing.comparison import comparison_table, write_comparison
from robust_jax.smoothing.dataset import certify_dataset, load_certification_results
from robust_jax.smoothing.inference_cost import flops_per_sample, seconds_per_sample
from robust_jax.smoothing.report import ENVELOPE, write_report
from robust_jax.smoothing.study_data import DATASETS, TFDS_TEST_SPLITS, dataset_shape, load_data  # noqa: F401

METHODS = ("gaussian", "gaussian_consistency", "denoised", "rrcm")
_MODULES = {"gaussian": gaussian_method, "gaussian_consistency": gaussian_method, "denoised": denoised_method,
            "rrcm": rrcm_method}


def sigma_name(sigma: float) -> str:
    return f"sigma={sigma:g}"


def check_config(config: ml_collections.ConfigDict, device_count: int | None = None) -> None:
    device_count = jax.device_count() if device_count is None else device_count
    checks.check_choice("config.dataset", config.dataset, DATASETS)
    checks.check_choice("config.model", config.model, MODELS)
    checks.check_choice("config.optimizer", config.optimizer, OPTIMIZERS)
    checks.check_choice("config.lr_schedule", config.lr_schedule, LR_SCHEDULES)
    checks.check_float("config.momentum", config.momentum, non_negative=True)
    checks.check_float("config.weight_decay", config.weight_decay, non_negative=True)
    if config.dataset == "digits" and config.model != "small_cnn":
        raise checks.ConfigError(f"config.model={config.model!r} is not allowed with dataset='digits': "
                                 "the 8x8 digits use small_cnn")
    if len(config.sigmas) == 0:
        raise checks.ConfigError("config.sigmas=() is not allowed: give at least one noise level")
    for i, sigma in enumerate(config.sigmas):
        checks.check_float(f"config.sigmas[{i}]", sigma, positive=True)
    checks.check_nonempty_unique("config.sigmas", [f"{sigma:g}" for sigma in config.sigmas])
    for i, radius in enumerate(config.radii):
        checks.check_float(f"config.radii[{i}]", radius, non_negative=True)
    checks.check_int("config.eval_batch_size", config.eval_batch_size, minimum=1)
    checks.check_divisible("config.eval_batch_size", config.eval_batch_size, device_count, "the device count")
    checks.check_float("config.consistency_lambda", config.consistency_lambda, non_negative=True)
    checks.check_float("config.consistency_eta", config.consistency_eta, non_negative=True)
    checks.check_int("config.consistency_copies", config.consistency_copies, minimum=1)
    checks.check_int("config.max_translation", config.max_translation, minimum=0)
    checks.check_int("config.n0", config.n0, minimum=1)
    checks.check_int("config.n", config.n, minimum=1)
    checks.check_float("config.alpha", config.alpha, positive=True, below=1.0)
    checks.check_int("config.certify_batch_size", config.certify_batch_size, minimum=1)
    checks.check_int("config.certify_every", config.certify_every, minimum=1)
    checks.check_float("config.test_fraction", config.test_fraction, positive=True, below=1.0)
    methods = checks.check_nonempty_unique("config.methods", config.methods)
    for i, method in enumerate(methods):
        checks.check_choice(f"config.methods[{i}]", method, METHODS)
    if "gaussian_consistency" in methods and config.consistency_lambda <= 0:
        checks.fail("config.consistency_lambda", config.consistency_lambda,
                    "must be > 0 with the gaussian_consistency method (use the gaussian method for none)")
    if "rrcm" in methods:
        rrcm_method.check(config, device_count)
    if "denoised" in methods:
        denoised_method.check(config, device_count)


def fit_method(method: str, config: ml_collections.ConfigDict, data, method_dir: str,
               mesh: Mesh) -> dict[float, CertifiableClassifier]:
    """{sigma: the method's base classifier for certification}, trained (or restored when finished) in method_dir."""
    if method in ("gaussian", "gaussian_consistency"):
        return gaussian_method.fit(config, data, method_dir, mesh, consistency=method == "gaussian_consistency")
    return _MODULES[method].fit(config, data, method_dir, mesh)


def noisy_test_accuracy(classifier: CertifiableClassifier, sigma: float, test_split: dict, *, seed: int,
                        batch_size: int, mesh: Mesh) -> float:
    """Accuracy of the base classifier on test images with one Gaussian noise draw each (example i's noise from
    fold_in(key, i), so every method sees the same noisy images)."""
    noise_key = jax.random.key(seed + 2)

    def correct(params, batch):
        noise = jax.vmap(lambda i, x: jax.random.normal(jax.random.fold_in(noise_key, i), x.shape))(
            batch["index"], batch["image"])
        logits = classifier.apply_fn(params, batch["image"] + sigma * noise)
        return {"accuracy": (jnp.argmax(logits, -1) == batch["label"]).astype(jnp.float32)}

    return evaluate(correct, classifier.params, test_split, batch_size=batch_size, mesh=mesh)["accuracy"]


def restore(config: ml_collections.ConfigDict, workdir: str):
    """({method: {sigma name: apply_fn}}, {method: {sigma name: params}}, metrics.jsonl of the first method's first
    training), for `robust_jax.load_run`: `models[m][s](params[m][s], inputs in [0, 1])` gives logits. Methods and
    sigmas not trained yet are left out."""
    models, params = {}, {}
    for method in config.methods:
        restored = _MODULES[method].restore(config, os.path.join(workdir, method))
        if restored:
            models[method] = {sigma_name(s): c.apply_fn for s, c in restored.items()}
            params[method] = {sigma_name(s): c.params for s, c in restored.items()}
    first = config.methods[0]
    return models, params, _MODULES[first].history_path(config, os.path.join(workdir, first))


def _certification_seconds_per_sample(path: str, samples_per_example: int) -> float:
    with open(path) as file:
        seconds = [float(line.rsplit("\t", 1)[1]) for line in file.read().splitlines()[1:]]
    return sum(seconds) / max(1, len(seconds)) / samples_per_example


def run(config: ml_collections.ConfigDict, workdir: str, *, mesh: Mesh | None = None) -> dict:
    mesh = mesh_lib.make_data_mesh() if mesh is None else mesh
    data = load_data(config)
    certify_key = jax.random.key(config.seed + 1)
    radii = tuple(config.radii)
    show = jax.process_index() == 0

    results, noisy, flops, final_classifiers, certification_seconds = {}, {}, {}, {}, {}
    for method in config.methods:
        method_dir = os.path.join(workdir, method)
        trained = fit_method(method, config, data, method_dir, mesh)
        results[method], noisy[method], certification_seconds[method] = {}, {}, {}
        for sigma in config.sigmas:
            classifier = trained[sigma]
            noisy[method][sigma_name(sigma)] = noisy_test_accuracy(
                classifier, sigma, data.test_split, seed=config.seed, batch_size=config.eval_batch_size, mesh=mesh)
            path = certify_dataset(
                classifier.apply_fn, classifier.params, data.certify_images, data.certify_labels,
                sigma=sigma, n0=config.n0, n=config.n, alpha=config.alpha, batch_size=config.certify_batch_size,
                key=jax.random.fold_in(certify_key, int(round(sigma * 1e6))), workdir=method_dir,
                every=config.certify_every, mesh=mesh, show_progress=show,
            )
            results[method][sigma] = load_certification_results(path)
            certification_seconds[method][sigma_name(sigma)] = _certification_seconds_per_sample(
                path, config.n0 + config.n)
        if show:
            write_report(results[method], method_dir, radii)
        final_classifiers[method] = trained[config.sigmas[-1]]
        flops[method] = flops_per_sample(final_classifiers[method].apply_fn, final_classifiers[method].params,
                                         data.image_shape, config.certify_batch_size)

    seconds = seconds_per_sample({m: (c.apply_fn, c.params) for m, c in final_classifiers.items()},
                                 data.image_shape, config.certify_batch_size)
    cost = {method: {"flops": flops[method], "seconds": seconds[method]} for method in config.methods}
    if show:
        with open(os.path.join(workdir, "inference_cost.json"), "w") as file:
            json.dump({"flops_per_sample": flops, "seconds_per_sample": seconds,
                       "certification_seconds_per_sample": certification_seconds,
                       "batch_size": config.certify_batch_size, "device": str(jax.local_devices()[0].device_kind),
                       "note": f"measured at sigma={config.sigmas[-1]:g}; seconds depend on the machine's load"},
                      file, indent=2, sort_keys=True)
            file.write("\n")
        write_comparison(results, workdir, radii, cost)

    table = comparison_table(results, radii)
    certified = {
        method: {(ENVELOPE if row == ENVELOPE else sigma_name(row)): {
            f"r={radius:g}": float(value) for radius, value in zip(radii, accuracies)} for row, accuracies in
            rows.items()}
        for method, rows in table.items()
    }
    return {
        "metrics": {
            "certified_accuracy": certified,
            "noisy_test_accuracy": noisy,
            "inference_flops_per_sample": flops,
            "certified_examples": int(len(next(iter(results[config.methods[0]].values())).labels)),
        }
    }
