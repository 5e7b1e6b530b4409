"""The randomized-smoothing study: smoothed classifiers built by several methods on the same data, certified through
the same path, compared.

Methods (config.methods), each trained through core.train on the config's training split:
  gaussian              per sigma, the config's classifier trained on noisy copies (Cohen, Rosenfeld & Kolter 2019)
  gaussian_consistency  the same with consistency regularisation (Jeong & Shin 2020)
  denoised              diffusion-denoised smoothing as the paper has it (Carlini et al. 2023): a diffusion denoiser
                        and an off-the-shelf classifier trained on clean images: denoiser + classifier per noise sample
  denoised_finetuned    the same classifier fine-tuned per sigma on denoised noisy images (a stronger baseline)
  rrcm                  rRCM pretraining, then fine-tuning per sigma (Lei et al.): one ViT forward per noise sample
  rrcm_scratch          the ablation: rRCM's fine-tuning from a random init, without the pretraining
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
noisy_test_accuracy[method]["sigma=<s>"], inference_flops_per_sample[method], certified_examples, and
units["certified_radius/sigma=<s>"]: per certified test image (ids: its index in the test split) and method, the
certified radius when the certified class is the true label, else -1 (wrong or abstained), the units the claims are
judged on (core/verdicts.py has the contract; every method is certified on the same images with the same noise).
"""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh

from robust_jax.core import checks
from robust_jax.core import mesh as mesh_lib
from robust_jax.core.evaluate import evaluate
from robust_jax.core.train import drive, train
from robust_jax.smoothing.classifiers import (  # noqa: F401  (re-exported: the study's public names)
    LR_SCHEDULES,
    MODELS,
    OPTIMIZERS,
    CertifiableClassifier,
    Classifier,
    build_classifier,
    make_optimizer,
    sigma_name,
)
from robust_jax.smoothing.methods import METHODS
from robust_jax.smoothing.comparison import comparison_table, write_comparison
from robust_jax.smoothing.dataset import certify_dataset, load_certification_results
from robust_jax.smoothing.inference_cost import flops_per_sample, seconds_per_sample
from robust_jax.smoothing.report import ENVELOPE, CertificationResults, write_report
from robust_jax.smoothing.study_data import DATASETS, TFDS_TEST_SPLITS, dataset_shape, load_data  # noqa: F401



def unit_set_name(sigma: float) -> str:
    return f"certified_radius/{sigma_name(sigma)}"


# The per-image value of a wrong or abstained certification: below every radius, so "certified at radius r" is
# value >= r for every r >= 0.
NOT_CERTIFIED = -1.0


def paired_units(results: dict[str, dict[float, CertificationResults]], certify_every: int) -> dict:
    """{unit_set_name(sigma): unit set} (core/verdicts.py's contract): per certified test image, each method's
    certified radius where its certified class is the true label, else NOT_CERTIFIED. Image k of a certification
    is test image k * certify_every (certify_dataset certifies every certify_every-th image, in index order)."""
    units = {}
    for sigma in sorted({sigma for by_sigma in results.values() for sigma in by_sigma}):
        by_method = {method: by_sigma[sigma] for method, by_sigma in results.items() if sigma in by_sigma}
        counts = {method: len(r.labels) for method, r in by_method.items()}
        if len(set(counts.values())) != 1:
            raise ValueError(f"the methods certified different numbers of images at sigma={sigma:g}: {counts}")
        count = next(iter(counts.values()))
        units[unit_set_name(sigma)] = {
            "unit": "certified test image",
            "ids": [str(k * certify_every) for k in range(count)],
            "values": {method: np.where((r.predictions == r.labels) & (r.predictions >= 0), r.radii,
                                        NOT_CERTIFIED).astype(float).tolist() for method, r in by_method.items()},
        }
    return units


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
    checks.check_int("config.max_translation", config.max_translation, minimum=0)
    checks.check_int("config.n0", config.n0, minimum=1)
    checks.check_int("config.n", config.n, minimum=1)
    checks.check_float("config.alpha", config.alpha, positive=True, below=1.0)
    checks.check_int("config.certify_batch_size", config.certify_batch_size, minimum=1)
    checks.check_int("config.certify_every", config.certify_every, minimum=1)
    checks.check_float("config.test_fraction", config.test_fraction, positive=True, below=1.0)
    methods = checks.check_nonempty_unique("config.methods", config.methods)
    for i, method in enumerate(methods):
        checks.check_choice(f"config.methods[{i}]", method, tuple(METHODS))
    for module in dict.fromkeys(METHODS[method] for method in methods):
        module.check(config, device_count)


def trainings(config: ml_collections.ConfigDict, workdir: str, data):
    """Every method's trainings, method by method (`core.train.Training`, named "<method>/..."; see each method's
    module). A training two methods declare under one name (denoised_finetuned starts from the denoised method's
    denoiser and clean classifier) is trained once: the second method is sent the first one's result."""
    del workdir
    done = {}
    for method in config.methods:
        declared = METHODS[method].trainings(config, data, method)
        try:
            training = next(declared)
            while True:
                if training.name not in done:
                    done[training.name] = yield training
                training = declared.send(done[training.name])
        except StopIteration:
            pass


def method_classifiers(method: str, config: ml_collections.ConfigDict, data, workdir: str,
                       trained: dict) -> dict[float, CertifiableClassifier]:
    """{sigma: the method's base classifier for certification} from the trained states ({name: TrainState})."""
    return METHODS[method].classifiers(config, data, method, trained, os.path.join(workdir, method))


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

    trained_states = {name: result.state for name, (_, result) in
                      drive(trainings(config, workdir, data), lambda t: train(t, workdir, mesh=mesh)).items()}
    results, noisy, flops, final_classifiers, certification_seconds = {}, {}, {}, {}, {}
    for method in config.methods:
        method_dir = os.path.join(workdir, method)
        trained = method_classifiers(method, config, data, workdir, trained_states)
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
            "units": paired_units(results, config.certify_every),
        }
    }
