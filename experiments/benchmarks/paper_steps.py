"""Training steps of each study's paper-scale preset, timed on random inputs of the right shapes, and the full run's
projected training time (its total steps divided by the measured steps per second).

The presets (robust_jax/configs): icl:paper, smoothing:cifar10, rrcm:cifar10, sde:paper, omniview:paper. Each
training stage of a preset (a model trained by `core.train`) is one `Stage`: the study's own init_fn, loss_fn and
optimizer, built by the study's functions from the preset, and one fixed batch of random data of the shapes the
study feeds (nothing is downloaded: no CIFAR-10, MVCap or OpenCLIP weights are needed; the SDE series are aeon's
shipped files, which load offline). `total_steps` is the stage's share of the full run: all its sigmas, cells or
variants. What the projection leaves out is said in each stage's note (certification, evaluation, the omniview max
step, early stopping) and in the suite's output.

`--smoke` runs (experiments/benchmarks/suite.py) build the same stages from each config's 'tiny' preset.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np

PRESETS = ("icl:paper", "smoothing:cifar10", "rrcm:cifar10", "sde:paper", "omniview:paper")
SMOKE_PRESETS = ("icl:tiny", "smoothing:tiny", "rrcm:tiny", "sde:tiny", "omniview:tiny")


@dataclasses.dataclass(frozen=True)
class Stage:
    """One training stage of a preset. build() -> CoreStep (experiments/benchmarks/train_step.py). `same_step_as`:
    a key naming the step's computation (model, batch, loss); stages with the same key cost the same, so a suite times
    one of them. note: what the stage's projection assumes."""

    preset: str
    name: str
    total_steps: int
    build: Callable
    same_step_as: str = ""
    note: str = ""


def _images(rng, batch_size: int, image_shape: tuple) -> dict:
    return {"image": rng.uniform(0, 1, (batch_size, *image_shape)).astype(np.float32),
            "label": rng.integers(0, 10, batch_size).astype(np.int32)}


# ------------------------------------------------------------------------------------------------------------- icl


def icl_stages(config, preset: str) -> list[Stage]:
    """The LSA on the training covariance, the LSA on random diagonal covariances, and Garg et al.'s GPT-2."""
    import optax

    from experiments.benchmarks.train_step import CoreStep
    from robust_jax.icl import study
    from robust_jax.icl.tasks import PromptSpec

    covariance = np.diag(np.asarray(config.train_eigenvalues, np.float64))

    def lsa(covariance, steps, batch_size, learning_rate):
        def build():
            model, init_fn = study.lsa_model(config)
            spec = PromptSpec(dim=config.dim, n_context=config.n_context, covariance=covariance)
            return CoreStep(init_fn, study.lsa_loss_fn(model, spec), study.lsa_optimizer(steps, learning_rate),
                            {"index": np.arange(batch_size, dtype=np.int32)})
        return build

    def gpt2():
        _, init_fn, loss_fn = study.gpt2_setup(config, max(study.shift_prefixes(config)) + 1)
        return CoreStep(init_fn, loss_fn, optax.adam(config.learning_rate),
                        {"index": np.arange(config.batch_size, dtype=np.int32)},
                        micro_batch_size=config.micro_batch_size)

    stages = [
        Stage(preset, "lsa", config.lsa_steps,
              lsa(covariance, config.lsa_steps, config.lsa_batch_size, config.lsa_learning_rate)),
        Stage(preset, "lsa_varying", config.varying_steps,
              lsa("random_diagonal", config.varying_steps, config.varying_batch_size, config.varying_learning_rate)),
    ]
    if config.num_steps > 0:
        # Fixed shapes: the curriculum masks dimensions and points, so every step costs the same.
        stages.append(Stage(preset, f"gpt2_{config.gpt2_size}", config.num_steps, gpt2))
    return stages


# ------------------------------------------------------------------------------------------------------- smoothing


def smoothing_stages(config, preset: str) -> list[Stage]:
    """Per method of config.methods (smoothing and rrcm configs): the stages `robust_jax.smoothing.study` trains."""
    import jax
    import optax

    from experiments.benchmarks.train_step import CoreStep
    from robust_jax.smoothing.methods.denoised import method as denoised_method
    from robust_jax.smoothing.methods.gaussian import method as gaussian_method
    from robust_jax.smoothing.methods.rrcm import method as rrcm_method
    from robust_jax.smoothing.classifiers import build_classifier, make_optimizer
    from robust_jax.smoothing.methods.denoised.denoiser import (
        TinyUNet,
        denoising_timestep,
        make_denoiser_init_fn,
        make_denoiser_loss_fn,
    )
    from robust_jax.smoothing.study_data import dataset_shape
    from robust_jax.smoothing.training import make_noise_loss_fn

    num_classes, image_shape = dataset_shape(config)
    sigmas = tuple(config.sigmas)
    block_d, block_r = config.denoised, config.rrcm
    rng = np.random.default_rng(0)
    per_sigma = f"x {len(sigmas)} sigmas"

    def classifier():
        return build_classifier(config, num_classes, image_shape)

    def noise_trained(consistency: bool):
        def build():
            model = classifier()
            loss_fn = gaussian_method._loss_fn(config, model, sigmas[0], consistency)
            return CoreStep(model.init_fn, loss_fn, make_optimizer(config),
                            _images(rng, config.batch_size, image_shape))
        return build

    def denoiser():
        network = TinyUNet(block_d.denoiser_channels)
        optimizer = optax.adam(optax.cosine_decay_schedule(block_d.denoiser_learning_rate, block_d.denoiser_steps))
        return CoreStep(make_denoiser_init_fn(network, image_shape),
                        make_denoiser_loss_fn(network, denoised_method.alphas_cumprod()), optimizer,
                        {"image": _images(rng, block_d.denoiser_batch_size, image_shape)["image"]})

    def clean_classifier():
        model = classifier()
        loss_fn = make_noise_loss_fn(model.apply_train, sigma=0.0, max_translation=config.max_translation)
        optimizer = make_optimizer(config, block_d.classifier_steps, block_d.classifier_learning_rate)
        return CoreStep(model.init_fn, loss_fn, optimizer, _images(rng, config.batch_size, image_shape))

    def denoised_finetune():
        model, network = classifier(), TinyUNet(block_d.denoiser_channels)
        schedule = denoised_method.alphas_cumprod()
        timestep = denoising_timestep(sigmas[0], schedule)
        denoiser_params, _ = jax.jit(make_denoiser_init_fn(network, image_shape))(jax.random.key(1))
        loss_fn = denoised_method.make_denoised_finetune_loss_fn(
            model.apply_train, network, sigma=sigmas[0], timestep=timestep, alpha_bar=float(schedule[timestep]),
            consistency_lambda=config.consistency_lambda, consistency_eta=config.consistency_eta,
            copies=config.consistency_copies, max_translation=config.max_translation)
        optimizer = make_optimizer(config, block_d.finetune_steps, block_d.finetune_learning_rate)
        return CoreStep(model.init_fn, loss_fn, optimizer, _images(rng, config.batch_size, image_shape),
                        {"params": denoiser_params})

    def rrcm_pretrain():
        init_fn, loss_fn, optimizer = rrcm_method.pretrain_functions(block_r, image_shape)
        return CoreStep(init_fn, loss_fn, optimizer, _images(rng, block_r.pretrain_batch_size, image_shape))

    def rrcm_finetune():
        from robust_jax.smoothing.methods.rrcm.losses import make_finetune_init_fn

        network = rrcm_method.build_network(block_r, num_classes, image_shape)
        return CoreStep(make_finetune_init_fn(network, image_shape), rrcm_method._finetune_loss(config, network,
                                                                                               sigmas[0]),
                        rrcm_method.finetune_optimizer(block_r, network.backbone.depth),
                        _images(rng, block_r.finetune_batch_size, image_shape))

    def same(what: str, batch_size: int, copies: int) -> str:
        model = config.model
        if model == "small_cnn":
            model += f" {tuple(config.cnn_features)} {config.cnn_hidden}"
        return f"{what} {model} {image_shape} batch {batch_size} copies {copies} translation " \
               f"{config.max_translation} {config.optimizer}"

    copies = config.consistency_copies if config.consistency_lambda > 0 else 1
    stages = []
    for method in config.methods:
        if method in ("gaussian", "gaussian_consistency"):
            consistency = method == "gaussian_consistency"
            stages.append(Stage(preset, method, config.num_steps * len(sigmas), noise_trained(consistency),
                                same_step_as=same("noise-trained", config.batch_size, copies if consistency else 1),
                                note=per_sigma))
        elif method in ("denoised", "denoised_finetuned"):
            if not any(stage.name == "denoised_classifier" for stage in stages):  # both methods share these two
                if not block_d.denoiser_checkpoint:
                    stages.append(Stage(preset, "denoised_denoiser", block_d.denoiser_steps, denoiser))
                stages.append(Stage(preset, "denoised_classifier", block_d.classifier_steps, clean_classifier,
                                    same_step_as=same("noise-trained", config.batch_size, 1)))
            if method == "denoised_finetuned":
                stages.append(Stage(preset, "denoised_finetune", block_d.finetune_steps * len(sigmas),
                                    denoised_finetune, note=per_sigma))
        elif method in ("rrcm", "rrcm_scratch"):
            if method == "rrcm":
                stages.append(Stage(preset, "rrcm_pretrain", block_r.pretrain_steps, rrcm_pretrain))
            stages.append(Stage(preset, f"{method}_finetune", block_r.finetune_steps * len(sigmas), rrcm_finetune,
                                same_step_as=f"rrcm fine-tune batch {block_r.finetune_batch_size}", note=per_sigma))
        else:
            raise ValueError(f"config.methods holds {method!r}, which this benchmark does not know")
    return stages


# ------------------------------------------------------------------------------------------------------------- sde


def sde_stages(config, preset: str) -> list[Stage]:
    """One stage per dataset: the step of config.models[0] with the reference's batch rule on that dataset's series;
    total = epochs x steps per epoch x missing rates x models x seeds (every cell trains to the last epoch)."""

    from experiments.benchmarks.train_step import CoreStep
    from robust_jax.data.timeseries import prepare_timeseries
    from robust_jax.sde import study
    from robust_jax.sde.training import _split_arrays, cell_setup

    protocol = study.protocol_from(config)
    model_name = config.models[0]
    cells_per_dataset = len(config.missing_rates) * len(config.models) * len(config.seeds)
    stages = []
    for dataset in config.datasets:
        data = prepare_timeseries(dataset, config.missing_rates[0], config.seed, use_intensity=config.use_intensity,
                                  allow_download=config.allow_download)
        model = study.build_model(config, model_name, data.num_classes)
        batch_size, steps_per_epoch, fns = cell_setup(model, data, protocol)

        def build(data=data, batch_size=batch_size, fns=fns):
            train = _split_arrays(data, "train")
            batch = {name: array[:batch_size] for name, array in train.items()}
            return CoreStep(fns.init_fn, fns.loss_fn, fns.optimizer, batch, {"times": data.times},
                            micro_batch_size=protocol.micro_batch_size)

        stages.append(Stage(
            preset, f"{dataset}_{model_name}", config.epochs * steps_per_epoch * cells_per_dataset, build,
            note=f"{model_name}'s step for all {len(config.models)} models; every cell runs all {config.epochs} "
                 "epochs (early stopping ends many sooner): an upper bound"))
    return stages


# -------------------------------------------------------------------------------------------------------- omniview


def omniview_stages(config, preset: str) -> list[Stage]:
    """The min step of the 'ovt' variant at the preset's batch (multi-view + 2D pairs), for every variant."""
    from experiments.benchmarks.omniview_min_step import min_step_runner

    batch = config.batch_size + config.batch_size_2d

    def build():
        return min_step_runner(config, batch, config.batch_size, "ovt")

    left_out = "the max step (once per epoch)"
    if config.base_source == "pretrain":
        left_out += f" and the base CLIP's {config.pretrain_num_steps} pretraining steps"
    return [Stage(preset, "ovt_min_step", config.num_steps * len(config.variants), build,
                  note=f"ovt's step for all {len(config.variants)} variants; {left_out} not included")]


# ------------------------------------------------------------------------------------------------------------- all


STAGE_BUILDERS = {"icl": icl_stages, "smoothing": smoothing_stages, "rrcm": smoothing_stages, "sde": sde_stages,
                  "omniview": omniview_stages}


def preset_stages(preset: str) -> list[Stage]:
    """The stages of "<study>:<preset>" (e.g. "rrcm:cifar10"), from robust_jax.configs.<study>.get_config."""
    import importlib

    study, _, name = preset.partition(":")
    if study not in STAGE_BUILDERS or not name:
        raise ValueError(f"preset={preset!r} must be '<study>:<preset>' with study one of {sorted(STAGE_BUILDERS)}")
    config = importlib.import_module(f"robust_jax.configs.{study}").get_config(name)
    return STAGE_BUILDERS[study](config, preset)
