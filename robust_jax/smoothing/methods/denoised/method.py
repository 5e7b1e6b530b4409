"""The "denoised" method, diffusion-denoised smoothing as Carlini et al. (2023) have it: a DDPM denoiser
(denoiser.TinyUNet, linear betas) trained on the training images and a classifier of config.model trained on clean
images, used as they are; and "denoised_finetuned": that classifier fine-tuned per sigma on one-step-denoised noisy
images (finetune_steps; the frozen denoiser is passed to the step as core.train `constants`). Certified through
denoiser.denoised_apply_fn: per noise sample one denoiser call at the timestep matching sigma, then the classifier.

Settings: config.denoised (configs/smoothing.py `denoised_block`). The trained denoiser is also written as
`denoiser.safetensors` in the method's folder ("/"-joined parameter paths, float32), which another run can load
through config.denoised.denoiser_checkpoint instead of training its own; its shapes are checked against the config's
denoiser before any work starts.

Trainings: `denoised/denoiser/` (unless loaded) and `denoised/classifier/` (clean training), shared by both methods;
`denoised_finetuned/sigma=<s>/` per sigma; `denoiser.safetensors` in each method's folder.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from robust_jax.core import checks
from robust_jax.core.config import loop_config
from robust_jax.core.train import Training, flax_variables
from robust_jax.smoothing.classifiers import CertifiableClassifier, build_classifier, make_optimizer, sigma_name
from robust_jax.smoothing.methods.denoised.denoiser import (
    TinyUNet,
    alphas_cumprod_from,
    denoised_apply_fn,
    denoising_timestep,
    linear_beta_schedule,
    make_denoiser_init_fn,
    make_denoiser_loss_fn,
    one_step_denoise,
)
from robust_jax.smoothing.study_data import StudyData, dataset_shape
from robust_jax.smoothing.training import make_noise_loss_fn

DENOISER_DIR = "denoiser"
CLASSIFIER_DIR = "classifier"
DENOISER_FILE = "denoiser.safetensors"


def alphas_cumprod() -> np.ndarray:
    return alphas_cumprod_from(linear_beta_schedule())


def denoiser_shapes(block: ml_collections.ConfigDict, image_shape: tuple) -> dict[str, tuple]:
    """{"/"-joined parameter path: shape} of the config's denoiser, without computing anything."""
    params, _ = jax.eval_shape(make_denoiser_init_fn(TinyUNet(block.denoiser_channels), image_shape),
                               jax.random.key(0))
    return {path: tuple(leaf.shape) for path, leaf in _flatten(params).items()}


def _flatten(tree, prefix: str = "") -> dict:
    if hasattr(tree, "items"):
        flat = {}
        for name, value in tree.items():
            flat.update(_flatten(value, f"{prefix}{name}/"))
        return flat
    return {prefix[:-1]: tree}


def _unflatten(flat: dict) -> dict:
    tree: dict = {}
    for path, value in flat.items():
        node = tree
        *parents, leaf = path.split("/")
        for name in parents:
            node = node.setdefault(name, {})
        node[leaf] = value
    return tree


def save_denoiser(params, path: str) -> None:
    from safetensors.numpy import save_file

    temporary = path + ".tmp"
    save_file({name: np.asarray(jax.device_get(leaf), np.float32) for name, leaf in _flatten(params).items()},
              temporary)
    os.replace(temporary, path)


def check_denoiser_file(path: str, expected: dict[str, tuple], name: str) -> None:
    """Fails (naming `name`) unless the safetensors file holds exactly the expected parameters and shapes; reads
    only the header."""
    from safetensors import safe_open

    if not os.path.isfile(path):
        checks.fail(name, path, "no such file (a denoiser.safetensors written by an earlier run)")
    try:
        with safe_open(path, framework="numpy") as file:
            found = {key: tuple(file.get_slice(key).get_shape()) for key in file.keys()}
    except Exception as error:  # a file that is not safetensors
        checks.fail(name, path, f"not a readable safetensors file ({error})")
    missing, extra = sorted(set(expected) - set(found)), sorted(set(found) - set(expected))
    if missing or extra:
        checks.fail(name, path, f"its parameters do not match the config's denoiser (missing {missing[:3]}, "
                                f"unexpected {extra[:3]}); check config.denoised.denoiser_channels")
    for key, shape in expected.items():
        if found[key] != shape:
            checks.fail(name, path, f"parameter {key} has shape {found[key]} but the config's denoiser "
                                    f"(denoiser_channels) needs {shape}")


def load_denoiser(path: str) -> dict:
    from safetensors.numpy import load_file

    return jax.tree.map(jnp.asarray, _unflatten(load_file(path)))


def check(config: ml_collections.ConfigDict, device_count: int) -> None:
    block = config.denoised
    checks.check_int("config.denoised.denoiser_channels", block.denoiser_channels, minimum=8)
    checks.check_divisible("config.denoised.denoiser_channels", block.denoiser_channels, 8,
                           "the GroupNorm group count")
    for name in ("denoiser_steps", "classifier_steps"):
        checks.check_int(f"config.denoised.{name}", block[name], minimum=1)
    checks.check_int("config.denoised.finetune_steps", block.finetune_steps,
                     minimum=1 if FINETUNED in config.methods else 0)
    checks.check_int("config.denoised.denoiser_batch_size", block.denoiser_batch_size, minimum=1)
    checks.check_divisible("config.denoised.denoiser_batch_size", block.denoiser_batch_size, device_count,
                           "the device count")
    if config.micro_batch_size:
        checks.check_divisible("config.denoised.denoiser_batch_size", block.denoiser_batch_size,
                               config.micro_batch_size, "config.micro_batch_size")
    for name in ("denoiser_learning_rate", "classifier_learning_rate", "finetune_learning_rate"):
        checks.check_float(f"config.denoised.{name}", block[name], positive=True)
    if not isinstance(block.denoiser_checkpoint, str):
        checks.fail("config.denoised.denoiser_checkpoint", block.denoiser_checkpoint, "expected a path or ''")
    _, image_shape = dataset_shape(config)
    if image_shape[0] % 2 or image_shape[1] % 2:
        raise checks.ConfigError(f"config.dataset={config.dataset!r} is not allowed with the denoised method: its "
                                 f"{image_shape} images need even sides for the denoiser")
    if block.denoiser_checkpoint:
        check_denoiser_file(block.denoiser_checkpoint, denoiser_shapes(block, image_shape),
                            "config.denoised.denoiser_checkpoint")
    schedule = alphas_cumprod()
    for i, sigma in enumerate(config.sigmas):
        try:
            denoising_timestep(float(sigma), schedule)
        except ValueError as error:
            raise checks.ConfigError(f"config.sigmas[{i}]={sigma!r} is not allowed with the denoised method: "
                                     f"{error}") from None


def make_denoised_finetune_loss_fn(classifier_apply_train, denoiser: TinyUNet, *, sigma: float, timestep: int,
                                   alpha_bar: float, consistency_lambda: float, consistency_eta: float, copies: int,
                                   max_translation: int):
    """loss_fn(params, model_state, batch, key, step, constants) for core.train: the noise loss of training.py with
    the classifier applied to one-step-denoised noisy images; constants = the frozen denoiser's variables."""

    def loss_fn(params, model_state, batch, key, step, constants):
        def apply_train(classifier_params, classifier_state, noisy_images):
            denoised = one_step_denoise(denoiser, constants, noisy_images, timestep, alpha_bar)
            return classifier_apply_train(classifier_params, classifier_state, jax.lax.stop_gradient(denoised))

        noise_loss = make_noise_loss_fn(apply_train, sigma=sigma, consistency_lambda=consistency_lambda,
                                        consistency_eta=consistency_eta, copies=copies,
                                        max_translation=max_translation)
        return noise_loss(params, model_state, batch, key, step, None)

    return loss_fn


SHARED = "denoised"  # the folder of the denoiser and the clean classifier, shared by both denoised methods
FINETUNED = "denoised_finetuned"


def trainings(config: ml_collections.ConfigDict, data: StudyData, method: str = "denoised"):
    """"denoised/denoiser" (unless config.denoised.denoiser_checkpoint loads one) and "denoised/classifier" on clean
    images, for both methods (the study trains them once); for "denoised_finetuned" then per sigma
    "denoised_finetuned/sigma=<s>": that classifier fine-tuned on one-step-denoised noisy images of each sigma,
    starting from the clean classifier's parameters, the frozen denoiser as constants."""
    block = config.denoised
    denoiser = TinyUNet(block.denoiser_channels)
    schedule = alphas_cumprod()
    if block.denoiser_checkpoint:
        denoiser_params = load_denoiser(block.denoiser_checkpoint)
    else:
        denoiser_params = (yield Training(
            name=f"{SHARED}/{DENOISER_DIR}", init_fn=make_denoiser_init_fn(denoiser, data.image_shape),
            loss_fn=make_denoiser_loss_fn(denoiser, schedule),
            optimizer=optax.adam(optax.cosine_decay_schedule(block.denoiser_learning_rate, block.denoiser_steps)),
            loop=loop_config(config, num_steps=block.denoiser_steps),
            batches=lambda: data.make_batches(block.denoiser_batch_size), desc="denoiser", model=denoiser,
            variables=flax_variables)).state.params
    classifier = build_classifier(config, data.num_classes, data.image_shape)
    clean = (yield Training(
        name=f"{SHARED}/{CLASSIFIER_DIR}", init_fn=classifier.init_fn,
        loss_fn=make_noise_loss_fn(classifier.apply_train, sigma=0.0, max_translation=config.max_translation),
        optimizer=make_optimizer(config, block.classifier_steps, block.classifier_learning_rate),
        loop=loop_config(config, num_steps=block.classifier_steps),
        batches=lambda: data.make_batches(config.batch_size), desc="denoised: clean classifier",
        model=classifier.apply_eval, variables=flax_variables)).state
    if method != FINETUNED:
        return
    for sigma in config.sigmas:
        timestep = denoising_timestep(sigma, schedule)
        yield Training(
            name=f"{method}/{sigma_name(sigma)}",
            init_fn=lambda key: (clean.params, clean.model_state),
            loss_fn=make_denoised_finetune_loss_fn(
                classifier.apply_train, denoiser, sigma=sigma, timestep=timestep,
                alpha_bar=float(schedule[timestep]), consistency_lambda=config.consistency_lambda,
                consistency_eta=config.consistency_eta, copies=config.consistency_copies,
                max_translation=config.max_translation),
            optimizer=make_optimizer(config, block.finetune_steps, block.finetune_learning_rate),
            loop=loop_config(config, num_steps=block.finetune_steps),
            batches=lambda: data.make_batches(config.batch_size), desc=f"{method}: fine-tune {sigma_name(sigma)}",
            constants={"params": denoiser_params}, model=classifier.apply_eval, variables=flax_variables)


def classifiers(config: ml_collections.ConfigDict, data: StudyData, method: str, trained: dict,
                method_dir: str) -> dict[float, CertifiableClassifier]:
    """{sigma: the denoise-then-classify classifier to certify} from the trained states ({training name:
    TrainState}); also writes the trained denoiser as `denoiser.safetensors` in method_dir, for other runs."""
    block = config.denoised
    denoiser = TinyUNet(block.denoiser_channels)
    schedule = alphas_cumprod()
    if block.denoiser_checkpoint:
        denoiser_params = load_denoiser(block.denoiser_checkpoint)
    else:
        denoiser_params = trained[f"{SHARED}/{DENOISER_DIR}"].params
        if jax.process_index() == 0:
            save_denoiser(denoiser_params, os.path.join(method_dir, DENOISER_FILE))
    classifier = build_classifier(config, data.num_classes, data.image_shape)
    out = {}
    for sigma in config.sigmas:
        state = trained[f"{method}/{sigma_name(sigma)}" if method == FINETUNED else f"{SHARED}/{CLASSIFIER_DIR}"]
        classifier_apply, classifier_params = classifier.for_certification({"params": state.params,
                                                                            **state.model_state})
        out[sigma] = CertifiableClassifier(denoised_apply_fn(denoiser, classifier_apply, sigma, schedule),
                                           {"denoiser": {"params": denoiser_params}, "classifier": classifier_params})
    return out
