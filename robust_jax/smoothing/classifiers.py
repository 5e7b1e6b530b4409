"""Base classifiers of the smoothing study: the CNN / ResNet built from the config, its optimizer, and the form every
method hands to certification.

`CertifiableClassifier(apply_fn, params)`: apply_fn(params, inputs) -> logits for inputs x + delta on the [0, 1]
scale, the one function `certify_dataset` (and the inference-cost measurement) evaluates per noise sample. Every
method ends in one of these per sigma: a noise-trained CNN, a denoiser followed by a classifier, an rRCM ViT.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax.numpy as jnp
import ml_collections
import optax

MODELS = ("small_cnn", "resnet20", "resnet110", "resnet50")
OPTIMIZERS = ("adam", "sgd")
LR_SCHEDULES = ("cosine", "step")



def sigma_name(sigma: float) -> str:
    """The name of a noise level in folders and results: "sigma=0.25"."""
    return f"sigma={sigma:g}"

@dataclasses.dataclass(frozen=True)
class CertifiableClassifier:
    """A base classifier ready for certification: apply_fn(params, inputs in [0, 1] + noise) -> (batch, C) logits."""

    apply_fn: Callable
    params: Any


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


def make_optimizer(config: ml_collections.ConfigDict, num_steps: int | None = None,
                   learning_rate: float | None = None) -> optax.GradientTransformation:
    """Adam or SGD with momentum and weight decay (config.optimizer); cosine decay, or Cohen's step decay (x0.1 after
    1/3 and 2/3). num_steps / learning_rate: this training's (default the train block's)."""
    num_steps = config.num_steps if num_steps is None else num_steps
    learning_rate = config.learning_rate if learning_rate is None else learning_rate
    if config.lr_schedule == "cosine":
        schedule = optax.cosine_decay_schedule(learning_rate, num_steps)
    else:
        third = max(1, num_steps // 3)
        schedule = optax.piecewise_constant_schedule(learning_rate, {third: 0.1, 2 * third: 0.1})
    if config.optimizer == "adam":
        return optax.adam(schedule)
    return optax.chain(optax.add_decayed_weights(config.weight_decay),
                       optax.sgd(schedule, momentum=config.momentum))
