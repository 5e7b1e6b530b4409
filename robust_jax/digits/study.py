"""The digits study: a small CNN on scikit-learn's 8x8 digits, optionally with Gaussian-noise augmentation.

It exercises the whole foundation (config checks, sharded training, checkpoints, resumption, metrics, evaluation)
in seconds, and its noise-augmented model is the quickest base classifier for randomized smoothing.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import optax
from jax.sharding import Mesh

from robust_jax.core import checks
from robust_jax.core import mesh as mesh_lib
from robust_jax.core.evaluate import evaluate
from robust_jax.core.config import loop_config
from robust_jax.core.train import Training, drive, train
from robust_jax.data.array_batches import ArrayBatches
from robust_jax.data.digits import IMAGE_SHAPE, NUM_CLASSES, load_digits_splits
from robust_jax.models.cnn import SmallCNN


def check_config(config: ml_collections.ConfigDict, device_count: int | None = None) -> None:
    device_count = jax.device_count() if device_count is None else device_count
    checks.check_int("config.eval_batch_size", config.eval_batch_size, minimum=1)
    checks.check_divisible("config.eval_batch_size", config.eval_batch_size, device_count, "the device count")
    checks.check_float("config.noise_sigma", config.noise_sigma, non_negative=True)
    checks.check_float("config.test_fraction", config.test_fraction, positive=True, below=1.0)
    for i, width in enumerate(config.features):
        checks.check_int(f"config.features[{i}]", width, minimum=1)
    checks.check_int("config.hidden", config.hidden, minimum=1)


def build_model(config: ml_collections.ConfigDict) -> SmallCNN:
    return SmallCNN(num_classes=NUM_CLASSES, features=tuple(config.features), hidden=config.hidden)


def make_loss_fn(model: SmallCNN, noise_sigma: float):
    def loss_fn(params, model_state, batch, key, step, constants):
        del step, constants
        images = batch["image"]
        if noise_sigma > 0:
            # Drawn for the global batch inside the step: the same noise for any device or process count.
            images = images + noise_sigma * jax.random.normal(key, images.shape, images.dtype)
        logits = model.apply(params, images)
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean()
        accuracy = jnp.mean(jnp.argmax(logits, -1) == batch["label"])
        return loss, ({"accuracy": accuracy}, model_state)

    return loss_fn


def init_fn_for(model: SmallCNN):
    def init_fn(key):
        return model.init(key, jnp.zeros((1, *IMAGE_SHAPE), jnp.float32)), {}

    return init_fn


def load_data(config: ml_collections.ConfigDict) -> dict:
    return load_digits_splits(config.test_fraction, seed=config.seed)


def trainings(config: ml_collections.ConfigDict, workdir: str, splits: dict):
    """The study's one training, "classifier": the SmallCNN on the training split (`core.train.Training`)."""
    del workdir
    model = build_model(config)
    yield Training(
        name="classifier",
        init_fn=init_fn_for(model),
        loss_fn=make_loss_fn(model, config.noise_sigma),
        optimizer=optax.adam(config.learning_rate),
        loop=loop_config(config),
        batches=lambda: ArrayBatches(splits["train"], batch_size=config.batch_size, seed=config.seed,
                                     process_index=jax.process_index(), process_count=jax.process_count()),
        desc="digits",
        model=model,
    )


def run(config: ml_collections.ConfigDict, workdir: str, *, mesh: Mesh | None = None) -> dict:
    """Trains (or resumes) and evaluates; returns {"metrics": {...}} with the test accuracy and loss."""
    mesh = mesh_lib.make_data_mesh() if mesh is None else mesh
    splits = load_data(config)
    trained = drive(trainings(config, workdir, splits), lambda training: train(training, workdir, mesh=mesh))
    model, params = build_model(config), trained["classifier"][1].state.params

    def per_example(params, batch):
        logits = model.apply(params, batch["image"])
        return {
            "accuracy": (jnp.argmax(logits, -1) == batch["label"]).astype(jnp.float32),
            "loss": optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]),
        }

    test = evaluate(per_example, params, splits["test"], batch_size=config.eval_batch_size, mesh=mesh)
    train_metrics = evaluate(per_example, params, splits["train"], batch_size=config.eval_batch_size, mesh=mesh)
    return {
        "metrics": {
            "test_accuracy": test["accuracy"],
            "test_loss": test["loss"],
            "train_accuracy": train_metrics["accuracy"],
        },
    }
