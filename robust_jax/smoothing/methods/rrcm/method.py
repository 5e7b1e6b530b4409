"""The "rrcm" method (Lei et al.): one rRCM pretraining (trajectory consistency + instance discrimination with an
EMA target), then per sigma a fine-tuning of a linear head and the backbone on noisy images, through core.train;
certified through rrcm_apply_fn (one ViT forward per noise sample, told the level nearest 2 sigma). The ablation
"rrcm_scratch" is the same fine-tuning from a random init, without the pretraining.

Settings: config.rrcm (configs/smoothing.py `rrcm_block`). The certification level uses the curriculum's final
discretisation (curriculum_end_levels), the same levels fine-tuning tells the model.

Optimizers: pretraining AdamW with linear warm-up to the peak learning rate, then cosine decay to 0, after clipping
the gradient's global norm at gradient_clip (from the first step; the paper starts clipping after warm-up).
Fine-tuning AdamW with linear warm-up (finetune_warmup_steps), cosine decay and layer-wise learning-rate decay: a
parameter of layer l (0: the embeddings and the level token's projection, i: encoder block i - 1, depth + 1: the
final LayerNorm and the head) gets the learning rate times layer_decay^(depth + 1 - l); the head is drawn with std
head_init_std and trained, or (finetune_head = "frozen") left at its init as the official consistency fine-tuning
does. Differences from the official code kept: the schedules step per step, not per epoch; the presets train the
head (behind our ViT's final LayerNorm a frozen 2e-5 head keeps the logits near 0 and the softmax uniform, so
the consistency terms have nothing to act on; measured in docs/results/rrcm.md); the `cpu` preset fine-tunes its
4-block ViT for 500 steps without the official warm-up and layer decay 0.75 (with them rRCM certified 0.067 less at
sigma 0.25, r = 0.5 from the same pretraining, McNemar p = 0.008).

Trainings (in the method's folder): `pretrain/` (checkpoints, metrics.jsonl; model_state holds the EMA target; not
for rrcm_scratch), `sigma=<s>/` per sigma (fine-tuning).
"""

from __future__ import annotations

import re

import jax
import ml_collections
import optax

from robust_jax.core import checks
from robust_jax.core.config import loop_config
from robust_jax.core.train import Training
from robust_jax.models.vit import VIT_SIZES
from robust_jax.smoothing.classifiers import CertifiableClassifier, sigma_name
from robust_jax.smoothing.methods.rrcm.contrastive import EmaRateSchedule, tied_ema_end
from robust_jax.smoothing.methods.rrcm.views import MIN_BLUR_SIGMA, ViewAugmentation, translation_views
from robust_jax.smoothing.methods.rrcm.noise_schedule import SIGMA_MAX, SIGMA_MIN, DiscretisationCurriculum
from robust_jax.smoothing.methods.rrcm.apply import rrcm_apply_fn
from robust_jax.smoothing.methods.rrcm.losses import (
    make_finetune_init_fn,
    make_finetune_loss_fn,
    make_pretrain_init_fn,
    make_pretrain_loss_fn,
)
from robust_jax.smoothing.methods.rrcm.model import RRCMNet, rrcm_net
from robust_jax.smoothing.study_data import StudyData, dataset_shape

PRETRAIN_DIR = "pretrain"
VIEWS = ("augment", "translate")
FINETUNE_HEADS = ("trained", "frozen")
_VIT_OVERRIDES = ("width", "depth", "num_heads", "mlp_dim")


def build_network(block: ml_collections.ConfigDict, num_classes: int, image_shape: tuple) -> RRCMNet:
    """The rRCM network of config.rrcm: num_classes = 0 for pretraining (projector, no head), > 0 for fine-tuning."""
    overrides = {name: block[name] for name in _VIT_OVERRIDES if block[name]}
    return rrcm_net(block.backbone, num_classes=num_classes, image_size=image_shape[0], channels=image_shape[2],
                    patch_size=block.patch_size or None, projection_dim=block.projection_dim,
                    projector_hidden_dim=block.projector_hidden_dim, level_embedding_dim=block.level_embedding_dim,
                    **overrides)


def check(config: ml_collections.ConfigDict, device_count: int) -> None:
    """config.rrcm's fields, the network they build on the dataset's images, and every sigma against the noise
    schedule; ConfigError naming the field."""
    block = config.rrcm
    checks.check_choice("config.rrcm.backbone", block.backbone, sorted(VIT_SIZES))
    for name in ("patch_size", *_VIT_OVERRIDES):
        checks.check_int(f"config.rrcm.{name}", block[name], minimum=0)
    for name in ("projection_dim", "projector_hidden_dim", "level_embedding_dim", "pretrain_steps",
                 "finetune_steps"):
        checks.check_int(f"config.rrcm.{name}", block[name], minimum=1)
    for name in ("pretrain_batch_size", "finetune_batch_size"):
        checks.check_int(f"config.rrcm.{name}", block[name], minimum=2)
        checks.check_divisible(f"config.rrcm.{name}", block[name], device_count, "the device count")
        if config.micro_batch_size:
            checks.check_divisible(f"config.rrcm.{name}", block[name], config.micro_batch_size,
                                   "config.micro_batch_size")
    checks.check_int("config.rrcm.curriculum_start_levels", block.curriculum_start_levels, minimum=2)
    checks.check_int("config.rrcm.curriculum_end_levels", block.curriculum_end_levels, minimum=2)
    if block.curriculum_end_levels < block.curriculum_start_levels:
        checks.fail("config.rrcm.curriculum_end_levels", block.curriculum_end_levels,
                    f"must be >= config.rrcm.curriculum_start_levels={block.curriculum_start_levels!r}: the "
                    "curriculum only refines the discretisation")
    checks.check_int("config.rrcm.pretrain_warmup_steps", block.pretrain_warmup_steps, minimum=0,
                     maximum=block.pretrain_steps)
    for name in ("temperature", "pretrain_learning_rate", "finetune_learning_rate"):
        checks.check_float(f"config.rrcm.{name}", block[name], positive=True)
    for name in ("pretrain_weight_decay", "finetune_weight_decay", "gradient_clip"):
        checks.check_float(f"config.rrcm.{name}", block[name], non_negative=True)
    checks.check_float("config.rrcm.layer_decay", block.layer_decay, positive=True, at_most=1.0)
    checks.check_float("config.rrcm.ema_start", block.ema_start, non_negative=True, below=1.0)
    checks.check_float("config.rrcm.ema_end", block.ema_end, non_negative=True, below=1.0)
    if block.ema_end and block.ema_end < block.ema_start:
        checks.fail("config.rrcm.ema_end", block.ema_end,
                    f"must be >= config.rrcm.ema_start={block.ema_start!r} (or 0: tied to the run)")
    checks.check_float("config.rrcm.ema_end_horizon", block.ema_end_horizon, positive=True, at_most=1.0)
    checks.check_float("config.rrcm.ema_shape", block.ema_shape, positive=True)
    checks.check_choice("config.rrcm.views", block.views, VIEWS)
    checks.check_float("config.rrcm.crop_min_area", block.crop_min_area, positive=True, at_most=1.0)
    checks.check_float("config.rrcm.jitter", block.jitter, non_negative=True, below=1.0)
    checks.check_float("config.rrcm.blur_max_sigma", block.blur_max_sigma, positive=True)
    if block.blur_max_sigma < MIN_BLUR_SIGMA:
        checks.fail("config.rrcm.blur_max_sigma", block.blur_max_sigma, f"must be >= {MIN_BLUR_SIGMA}")
    checks.check_choice("config.rrcm.finetune_head", block.finetune_head, FINETUNE_HEADS)
    checks.check_float("config.rrcm.head_init_std", block.head_init_std, non_negative=True)
    checks.check_int("config.rrcm.finetune_warmup_steps", block.finetune_warmup_steps, minimum=0,
                     maximum=block.finetune_steps)
    if block.finetune_head == "frozen" and not block.head_init_std:
        checks.fail("config.rrcm.finetune_head", block.finetune_head,
                    "a frozen head needs config.rrcm.head_init_std > 0 (a frozen zero head gives zero logits)")
    if block.level_embedding_dim % 2:
        checks.fail("config.rrcm.level_embedding_dim", block.level_embedding_dim, "must be even")
    num_classes, image_shape = dataset_shape(config)
    try:
        build_network(block, num_classes, image_shape)
    except ValueError as error:
        raise checks.ConfigError(f"config.rrcm does not build a network for {image_shape} images: {error}") from None
    low, high = SIGMA_MIN / 2, SIGMA_MAX / 2
    for i, sigma in enumerate(config.sigmas):
        if not low <= sigma <= high:
            checks.fail(f"config.sigmas[{i}]", sigma,
                        f"the rrcm method's noise schedule covers sigma in [{low:g}, {high:g}] (level 2 sigma on "
                        f"[-1, 1] data in [{SIGMA_MIN:g}, {SIGMA_MAX:g}])")


def pretrain_optimizer(block: ml_collections.ConfigDict) -> optax.GradientTransformation:
    schedule = optax.warmup_cosine_decay_schedule(0.0, block.pretrain_learning_rate, block.pretrain_warmup_steps,
                                                  block.pretrain_steps)
    adamw = optax.adamw(schedule, weight_decay=block.pretrain_weight_decay)
    if block.gradient_clip > 0:
        return optax.chain(optax.clip_by_global_norm(block.gradient_clip), adamw)
    return adamw


def layer_index(path: tuple, depth: int) -> int:
    """The layer of a fine-tuning parameter for layer-wise decay (see the module docstring)."""
    names = [str(getattr(entry, "key", entry)) for entry in path]
    for name in names:
        match = re.fullmatch(r"block_(\d+)", name)
        if match:
            return int(match.group(1)) + 1
    if "ln_final" in names or "head" in names:
        return depth + 1
    return 0


def scale_by_layer(depth: int, layer_decay: float) -> optax.GradientTransformation:
    """Multiplies each parameter's update by layer_decay^(depth + 1 - layer_index)."""

    def update(updates, state, params=None):
        del params
        scaled = jax.tree_util.tree_map_with_path(
            lambda path, u: u * layer_decay ** (depth + 1 - layer_index(path, depth)), updates)
        return scaled, state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def freeze_head() -> optax.GradientTransformation:
    """Zeroes the updates of the classification head (the official consistency fine-tuning leaves it at its init)."""

    def update(updates, state, params=None):
        del params
        frozen = jax.tree_util.tree_map_with_path(
            lambda path, u: u * 0 if "head" in [str(getattr(entry, "key", entry)) for entry in path] else u, updates)
        return frozen, state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def finetune_optimizer(block: ml_collections.ConfigDict, depth: int) -> optax.GradientTransformation:
    """AdamW, linear warm-up over finetune_warmup_steps then cosine decay to 0 (per step; the official steps it per
    epoch), layer-wise decay, and with finetune_head = "frozen" no update of the head."""
    schedule = optax.warmup_cosine_decay_schedule(0.0, block.finetune_learning_rate, block.finetune_warmup_steps,
                                                  block.finetune_steps) if block.finetune_warmup_steps else \
        optax.cosine_decay_schedule(block.finetune_learning_rate, block.finetune_steps)
    parts = [optax.adamw(schedule, weight_decay=block.finetune_weight_decay)]
    if block.layer_decay < 1.0:
        parts.append(scale_by_layer(depth, block.layer_decay))
    if block.finetune_head == "frozen":
        parts.append(freeze_head())
    return parts[0] if len(parts) == 1 else optax.chain(*parts)


def _finetune_loss(config, network, sigma):
    return make_finetune_loss_fn(network, sigma=sigma, num_levels=config.rrcm.curriculum_end_levels,
                                 consistency_lambda=config.consistency_lambda, consistency_eta=config.consistency_eta,
                                 copies=config.consistency_copies, max_translation=config.max_translation)


def ema_end(block: ml_collections.ConfigDict) -> float:
    """config.rrcm.ema_end, or (0) the end rate tied to the run: horizon ema_end_horizon of pretrain_steps."""
    if block.ema_end:
        return float(block.ema_end)
    return tied_ema_end(block.pretrain_steps, block.ema_end_horizon, block.ema_start)


def pretrain_views(block: ml_collections.ConfigDict, image_shape: tuple):
    if block.views == "translate":
        return translation_views(max(1, image_shape[0] // 8))
    return ViewAugmentation(crop_min_area=block.crop_min_area, jitter=block.jitter,
                            blur_max_sigma=block.blur_max_sigma)


def pretrain_functions(block: ml_collections.ConfigDict, image_shape: tuple) -> tuple:
    """(init_fn, loss_fn, optimizer) of the pretraining of config.rrcm on `image_shape` images, for core.train."""
    network = build_network(block, 0, image_shape)
    steps = block.pretrain_steps
    loss_fn = make_pretrain_loss_fn(
        network,
        curriculum=DiscretisationCurriculum(steps, block.curriculum_start_levels, block.curriculum_end_levels),
        ema_schedule=EmaRateSchedule(steps, block.ema_start, ema_end(block), block.ema_shape),
        temperature=block.temperature,
        views=pretrain_views(block, image_shape),
    )
    return make_pretrain_init_fn(network, image_shape), loss_fn, pretrain_optimizer(block)


SCRATCH = "rrcm_scratch"


def trainings(config: ml_collections.ConfigDict, data: StudyData, method: str = "rrcm"):
    """"<method>/pretrain", then per sigma "<method>/sigma=<s>": the fine-tuning, started from the pretrained
    backbone. The ablation "rrcm_scratch" skips the pretraining: its fine-tuning starts from a random init."""
    block = config.rrcm
    pretrained_params = None
    if method != SCRATCH:
        init_fn, loss_fn, optimizer = pretrain_functions(block, data.image_shape)
        pretrained_params = (yield Training(
            name=f"{method}/{PRETRAIN_DIR}", init_fn=init_fn, loss_fn=loss_fn, optimizer=optimizer,
            loop=loop_config(config, num_steps=block.pretrain_steps),
            batches=lambda: data.make_batches(block.pretrain_batch_size), desc="rrcm pretrain",
            model=build_network(block, 0, data.image_shape), variables=pretrain_variables)).state.params
    network = build_network(block, data.num_classes, data.image_shape)
    for sigma in config.sigmas:
        yield Training(
            name=f"{method}/{sigma_name(sigma)}",
            init_fn=make_finetune_init_fn(network, data.image_shape, pretrained_params, block.head_init_std),
            loss_fn=_finetune_loss(config, network, sigma),
            optimizer=finetune_optimizer(block, network.backbone.depth),
            loop=loop_config(config, num_steps=block.finetune_steps),
            batches=lambda: data.make_batches(block.finetune_batch_size),
            desc=f"{method} fine-tune {sigma_name(sigma)}",
            model=rrcm_apply_fn(network, sigma, block.curriculum_end_levels),
            variables=params_collection,
        )


def pretrain_variables(params, model_state) -> dict:
    """The pretrained network's variables (its EMA target is `model_state["ema_params"]`)."""
    return {"params": params, "batch_stats": model_state["batch_stats"]}


def params_collection(params, model_state) -> dict:
    del model_state
    return {"params": params}


def classifiers(config: ml_collections.ConfigDict, data: StudyData, method: str, trained: dict,
                method_dir: str) -> dict[float, CertifiableClassifier]:
    """{sigma: the fine-tuned classifier to certify} from the trained states ({training name: TrainState})."""
    block = config.rrcm
    network = build_network(block, data.num_classes, data.image_shape)
    return {sigma: CertifiableClassifier(rrcm_apply_fn(network, sigma, block.curriculum_end_levels),
                                         {"params": trained[f"{method}/{sigma_name(sigma)}"].params})
            for sigma in config.sigmas}
