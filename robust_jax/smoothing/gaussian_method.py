"""The "gaussian" and "gaussian_consistency" methods: per sigma, the config's classifier trained on noisy copies of
the training images (Cohen et al.), the second with consistency regularisation (Jeong & Shin), through core.train.

Workdir (the method's folder): `sigma=<s>/` per sigma (checkpoints, metrics.jsonl).
"""

from __future__ import annotations

import os

import ml_collections
from jax.sharding import Mesh

from robust_jax.core.config import loop_config
from robust_jax.core.train import restore_latest_state, train
from robust_jax.smoothing.classifiers import CertifiableClassifier, build_classifier, make_optimizer
from robust_jax.smoothing.study_data import StudyData, dataset_shape
from robust_jax.smoothing.training import make_noise_loss_fn


def sigma_name(sigma: float) -> str:
    return f"sigma={sigma:g}"


def _loss_fn(config, classifier, sigma: float, consistency: bool):
    return make_noise_loss_fn(
        classifier.apply_train, sigma=sigma, consistency_lambda=config.consistency_lambda if consistency else 0.0,
        consistency_eta=config.consistency_eta, copies=config.consistency_copies,
        max_translation=config.max_translation)


def fit(config: ml_collections.ConfigDict, data: StudyData, method_dir: str, mesh: Mesh, *,
        consistency: bool) -> dict[float, CertifiableClassifier]:
    classifier = build_classifier(config, data.num_classes, data.image_shape)
    method = "gaussian_consistency" if consistency else "gaussian"
    trained = {}
    for sigma in config.sigmas:
        state = train(
            workdir=os.path.join(method_dir, sigma_name(sigma)),
            init_fn=classifier.init_fn,
            loss_fn=_loss_fn(config, classifier, sigma, consistency),
            optimizer=make_optimizer(config),
            batches=data.make_batches(config.batch_size),
            loop=loop_config(config),
            mesh=mesh,
            desc=f"{method} {sigma_name(sigma)}",
        ).state
        apply_fn, params = classifier.for_certification({"params": state.params, **state.model_state})
        trained[sigma] = CertifiableClassifier(apply_fn, params)
    return trained


def restore(config: ml_collections.ConfigDict, method_dir: str) -> dict[float, CertifiableClassifier]:
    """The trained classifiers found in `method_dir` (sigmas not trained yet are left out), in evaluation form
    (`apply_eval`, the unfolded network) for notebooks."""
    classifier = build_classifier(config, *dataset_shape(config))
    restored = {}
    for sigma in config.sigmas:
        sigma_dir = os.path.join(method_dir, sigma_name(sigma))
        if not os.path.isdir(os.path.join(sigma_dir, "checkpoints")):
            continue
        state = restore_latest_state(sigma_dir, classifier.init_fn, make_optimizer(config), config.seed)
        restored[sigma] = CertifiableClassifier(classifier.apply_eval, {"params": state.params, **state.model_state})
    return restored


def history_path(config: ml_collections.ConfigDict, method_dir: str) -> str:
    return os.path.join(method_dir, sigma_name(config.sigmas[0]), "metrics.jsonl")
