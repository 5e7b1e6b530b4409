"""The "gaussian" and "gaussian_consistency" methods: per sigma, the config's classifier trained on noisy copies of
the training images (Cohen et al.), the second with consistency regularisation (Jeong & Shin), through core.train.

Trainings (in the study's workdir): `<method>/sigma=<s>/` per sigma (checkpoints, metrics.jsonl).
"""

from __future__ import annotations

import ml_collections

from robust_jax.core import checks
from robust_jax.core.config import loop_config
from robust_jax.core.train import Training, flax_variables
from robust_jax.smoothing.classifiers import CertifiableClassifier, sigma_name, build_classifier, make_optimizer
from robust_jax.smoothing.study_data import StudyData
from robust_jax.smoothing.training import make_noise_loss_fn


def _loss_fn(config, classifier, sigma: float, consistency: bool):
    return make_noise_loss_fn(
        classifier.apply_train, sigma=sigma, consistency_lambda=config.consistency_lambda if consistency else 0.0,
        consistency_eta=config.consistency_eta, copies=config.consistency_copies,
        max_translation=config.max_translation)


def check(config: ml_collections.ConfigDict, device_count: int) -> None:
    """The consistency fields (the classifier's and the train block's fields are the study's)."""
    del device_count
    checks.check_float("config.consistency_lambda", config.consistency_lambda, non_negative=True)
    checks.check_float("config.consistency_eta", config.consistency_eta, non_negative=True)
    checks.check_int("config.consistency_copies", config.consistency_copies, minimum=1)
    if "gaussian_consistency" in config.methods and config.consistency_lambda <= 0:
        checks.fail("config.consistency_lambda", config.consistency_lambda,
                    "must be > 0 with the gaussian_consistency method (use the gaussian method for none)")


def trainings(config: ml_collections.ConfigDict, data: StudyData, method: str):
    """Per sigma, "<method>/sigma=<s>": the config's classifier on noisy training images (with consistency
    regularisation for gaussian_consistency)."""
    classifier = build_classifier(config, data.num_classes, data.image_shape)
    for sigma in config.sigmas:
        yield Training(
            name=f"{method}/{sigma_name(sigma)}",
            init_fn=classifier.init_fn,
            loss_fn=_loss_fn(config, classifier, sigma, method == "gaussian_consistency"),
            optimizer=make_optimizer(config),
            loop=loop_config(config),
            batches=lambda: data.make_batches(config.batch_size),
            desc=f"{method} {sigma_name(sigma)}",
            model=classifier.apply_eval,
            variables=flax_variables,
        )


def classifiers(config: ml_collections.ConfigDict, data: StudyData, method: str, trained: dict,
                method_dir: str) -> dict[float, CertifiableClassifier]:
    """{sigma: the base classifier to certify} from the trained states ({training name: TrainState})."""
    classifier = build_classifier(config, data.num_classes, data.image_shape)
    out = {}
    for sigma in config.sigmas:
        state = trained[f"{method}/{sigma_name(sigma)}"]
        out[sigma] = CertifiableClassifier(*classifier.for_certification({"params": state.params,
                                                                         **state.model_state}))
    return out
