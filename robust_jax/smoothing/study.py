"""The randomized-smoothing study (Cohen, Rosenfeld & Kolter 2019).

For each sigma: train a base classifier with Gaussian-noise augmentation at that sigma (optionally with consistency
regularisation), then CERTIFY every k-th test example, one TSV line per example as it finishes. Then certified
accuracy at radii, per sigma and best over sigma, as a markdown table, CSV and PNG plot. Every stage resumes:
training from its checkpoints, certification from its TSV.

Workdir layout: `sigma=<s>/` holds that sigma's training run (checkpoints, metrics.jsonl, TensorBoard);
`certify_sigma<s>.tsv` the certification log; `certified_accuracy.{md,csv,png}` the report.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
import optax
from jax.sharding import Mesh

from robust_jax.core import checks
from robust_jax.core import mesh as mesh_lib
from robust_jax.core.config import loop_config
from robust_jax.core.evaluate import evaluate
from robust_jax.core.train import restore_latest_state, train
from robust_jax.data.array_batches import ArrayBatches
from robust_jax.smoothing.dataset import certify_dataset, load_certification_results
from robust_jax.smoothing.report import accuracy_table, write_report
from robust_jax.smoothing.training import make_noise_loss_fn

DATASETS = ("digits", "cifar10", "imagenet2012")
TFDS_TEST_SPLITS = {"cifar10": "test", "imagenet2012": "validation"}
MODELS = ("small_cnn", "resnet20", "resnet110", "resnet50")
OPTIMIZERS = ("adam", "sgd")
LR_SCHEDULES = ("cosine", "step")


@dataclasses.dataclass(frozen=True)
class Classifier:
    """A base classifier in the forms the study needs."""

    init_fn: Callable  # key -> (params, model_state)
    apply_train: Callable  # (params, model_state, images) -> (logits, new_model_state)
    apply_eval: Callable  # (variables, images) -> logits; hashable, so certification compiles once
    # variables -> (apply_fn, params) for certification: the ResNets fold BatchNorm (resnet.fast_inference).
    for_certification: Callable


def build_classifier(config: ml_collections.ConfigDict, num_classes: int, image_shape: tuple) -> Classifier:
    from robust_jax.models import resnet

    if config.model == "small_cnn":
        from robust_jax.models.cnn import SmallCNN

        model = SmallCNN(num_classes=num_classes, features=tuple(config.cnn_features), hidden=config.cnn_hidden)
    elif config.model in ("resnet20", "resnet110", "resnet50"):
        model = getattr(resnet, config.model)(num_classes=num_classes)
    else:
        raise ValueError(f"model={config.model!r} is not supported; one of {MODELS}")
    has_batch_norm = config.model != "small_cnn"

    def init_fn(key):
        variables = model.init(key, jnp.zeros((1, *image_shape), jnp.float32))
        params = variables.pop("params") if hasattr(variables, "pop") else variables["params"]
        return params, dict(variables)

    def apply_train(params, model_state, images):
        if has_batch_norm:
            logits, updates = model.apply({"params": params, **model_state}, images, train=True,
                                          mutable=["batch_stats"])
            return logits, {**model_state, **updates}
        return model.apply({"params": params, **model_state}, images), model_state

    def for_certification(variables):
        if has_batch_norm:
            return resnet.fast_inference(model, variables)
        return model.apply, variables

    return Classifier(init_fn=init_fn, apply_train=apply_train, apply_eval=model.apply,
                      for_certification=for_certification)


def dataset_shape(config: ml_collections.ConfigDict) -> tuple[int, tuple]:
    """(number of classes, image shape) of the config's dataset, without reading it."""
    if config.dataset == "digits":
        from robust_jax.data.digits import IMAGE_SHAPE, NUM_CLASSES

        return NUM_CLASSES, IMAGE_SHAPE
    from robust_jax.data import tfds_images

    spec = tfds_images.SUPPORTED_DATASETS[config.dataset]
    return spec.num_classes, (spec.default_image_size, spec.default_image_size, 3)


def load_data(config: ml_collections.ConfigDict) -> tuple[Callable, dict, tuple, int, tuple]:
    """(make_batches(), the test examples to evaluate, (images, labels) to certify, num_classes, image shape).

    digits: the whole split in memory. cifar10 / imagenet2012: tfds prepared in array_record format under
    `config.data_dir` (nothing is downloaded); training streams through grain with the loaders' augmentation, and
    only every `certify_every`-th test example is loaded (the ones certified and scored)."""
    if config.dataset == "digits":
        from robust_jax.data.digits import IMAGE_SHAPE, NUM_CLASSES, load_digits_splits

        splits = load_digits_splits(config.test_fraction, seed=config.seed)
        train_split, test_split = splits["train"], splits["test"]

        def make_batches():
            return ArrayBatches(train_split, batch_size=config.batch_size, seed=config.seed,
                                process_index=jax.process_index(), process_count=jax.process_count())

        return make_batches, test_split, (test_split["image"], test_split["label"]), NUM_CLASSES, IMAGE_SHAPE
    if config.dataset in TFDS_TEST_SPLITS:
        from robust_jax.data import tfds_images

        def make_loader():
            return tfds_images.make_image_loader(
                config.dataset, "train", batch_size=config.batch_size // jax.process_count(), train=True,
                data_dir=config.data_dir or None, seed=config.seed)

        num_classes, image_shape = dataset_shape(config)
        subset, all_labels, lazy_images = tfds_images.every_kth_example(
            config.dataset, TFDS_TEST_SPLITS[config.dataset], config.certify_every,
            batch_size=config.eval_batch_size, data_dir=config.data_dir or None)
        return (lambda: tfds_images.TrainBatches(make_loader()), subset, (lazy_images, all_labels), num_classes,
                image_shape)
    raise ValueError(f"dataset={config.dataset!r} is not supported; one of {DATASETS}")


def make_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
    """Adam or SGD with momentum and weight decay; cosine decay, or Cohen's step decay (x0.1 after 1/3 and 2/3)."""
    if config.lr_schedule == "cosine":
        schedule = optax.cosine_decay_schedule(config.learning_rate, config.num_steps)
    else:
        third = max(1, config.num_steps // 3)
        schedule = optax.piecewise_constant_schedule(config.learning_rate, {third: 0.1, 2 * third: 0.1})
    if config.optimizer == "adam":
        return optax.adam(schedule)
    return optax.chain(optax.add_decayed_weights(config.weight_decay),
                       optax.sgd(schedule, momentum=config.momentum))


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


def sigma_name(sigma: float) -> str:
    return f"sigma={sigma:g}"


def restore(config: ml_collections.ConfigDict, workdir: str):
    """({sigma name: base classifier}, {sigma name: its variables}, metrics.jsonl of the first sigma's training) of
    a smoothing run, for `robust_jax.load_run`; the variables are what `classifier.apply_eval` takes."""
    classifier = build_classifier(config, *dataset_shape(config))
    models, variables = {}, {}
    for sigma in config.sigmas:
        sigma_dir = os.path.join(workdir, sigma_name(sigma))
        if not os.path.isdir(os.path.join(sigma_dir, "checkpoints")):
            continue  # not trained yet (an interrupted run)
        state = restore_latest_state(sigma_dir, classifier.init_fn, make_optimizer(config), config.seed)
        models[sigma_name(sigma)] = classifier
        variables[sigma_name(sigma)] = {"params": state.params, **state.model_state}
    first = os.path.join(workdir, sigma_name(config.sigmas[0]), "metrics.jsonl")
    return models, variables, first


def run(config: ml_collections.ConfigDict, workdir: str, *, mesh: Mesh | None = None) -> dict:
    mesh = mesh_lib.make_data_mesh() if mesh is None else mesh
    make_batches, test_split, (certify_images, certify_labels), num_classes, image_shape = load_data(config)
    classifier = build_classifier(config, num_classes, image_shape)
    certify_key = jax.random.key(config.seed + 1)

    results_by_sigma = {}
    base_accuracy = {}
    for sigma in config.sigmas:
        sigma_dir = os.path.join(workdir, sigma_name(sigma))
        state = train(
            workdir=sigma_dir,
            init_fn=classifier.init_fn,
            loss_fn=make_noise_loss_fn(
                classifier.apply_train, sigma=sigma, consistency_lambda=config.consistency_lambda,
                consistency_eta=config.consistency_eta, copies=config.consistency_copies,
                max_translation=config.max_translation,
            ),
            optimizer=make_optimizer(config),
            batches=make_batches(),
            loop=loop_config(config),
            mesh=mesh,
            desc=f"train {sigma_name(sigma)}",
        ).state
        variables = {"params": state.params, **state.model_state}

        def noisy_accuracy(variables, batch, sigma=sigma):
            noise_key = jax.random.key(config.seed + 2)
            noise = jax.vmap(lambda i, x: jax.random.normal(jax.random.fold_in(noise_key, i), x.shape))(
                batch["index"], batch["image"])
            noisy = batch["image"] + sigma * noise
            logits = classifier.apply_eval(variables, noisy)
            return {"accuracy": (jnp.argmax(logits, -1) == batch["label"]).astype(jnp.float32)}

        base_accuracy[sigma_name(sigma)] = evaluate(
            noisy_accuracy, variables, test_split, batch_size=config.eval_batch_size, mesh=mesh
        )["accuracy"]
        certify_fn, certify_params = classifier.for_certification(variables)
        path = certify_dataset(
            certify_fn, certify_params, certify_images, certify_labels,
            sigma=sigma, n0=config.n0, n=config.n, alpha=config.alpha, batch_size=config.certify_batch_size,
            key=jax.random.fold_in(certify_key, int(round(sigma * 1e6))), workdir=workdir,
            every=config.certify_every, mesh=mesh, show_progress=jax.process_index() == 0,
        )
        results_by_sigma[sigma] = load_certification_results(path)

    radii = tuple(config.radii)
    table = accuracy_table(results_by_sigma, radii)
    if jax.process_index() == 0:
        write_report(results_by_sigma, workdir, radii)
    certified = {
        (sigma_name(row) if row in results_by_sigma else str(row)): {
            f"r={radius:g}": float(value) for radius, value in zip(radii, accuracies)
        }
        for row, accuracies in table.items()
    }
    return {
        "metrics": {
            "certified_accuracy": certified,
            "noisy_test_accuracy": base_accuracy,
            "certified_examples": int(len(next(iter(results_by_sigma.values())).labels)),
        }
    }
