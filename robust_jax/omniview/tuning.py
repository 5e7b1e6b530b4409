"""Stage 2 of the Omniview study: Omniview-Tuning of a base CLIP, and its ablations.

The tuned model (`TunedCLIP`) is the base CLIP with LoRA adapters on the vision q|k|v projections folded in, followed
by the VIFormer. What a variant trains is exactly its parameter tree, {'lora', 'viformer', 'logit_scale'} for OVT
(full_ft: {'clip_delta', 'logit_scale'}, the change to every CLIP weight). The frozen base CLIP is not in it: it
reaches the compiled step through `core.train(constants=...)`, so it is an argument of the step (never baked into
the compiled program, never differentiated, never in the optimizer state or the tuning checkpoints). The model's
functions take one dict, the trainable tree plus {'clip': base variables}.

Training alternates, once per epoch, the two halves of the minimax objective, through ONE loop (`core.train`):
  * max step (`epoch_targets`, no gradient, sharded): embed every multi-view image of the tuning objects with the
    current model; each object's centre and its K hardest views, fixed for the epoch;
  * min steps (the jitted `loss_fn`, one per batch): L_ITC over a batch of multi-view pairs mixed with 2D pairs, plus
    lambda * L_VI over the batch's hard views against the fixed centres.
The targets reach the compiled step through `core.train(constants=...)` too, as two arrays, `targets_TxE` and
`target_slot_N` (the row of `targets_TxE` that multi-view row n is aligned to, -1 for none): arguments of the step, so
new targets each epoch cost no compilation. Epoch e is one call of `core.train` over the variant's workdir with
num_steps = the end of epoch e; its targets are computed from the parameters at the start of epoch e and saved to
`alignment/epoch_<e>.safetensors` before it trains, so a run killed mid-epoch resumes with the very same targets
(and bitwise the same result).

Variants (the paper's method and the ablations of its code and tables):
  ovt            LoRA + VIFormer + logit scale, L_ITC + lambda L_VI on hard views vs centres
  itc_only       the same parameters, L_ITC only (no max step)
  random_views   the same parameters; K random views per object, each aligned to a random other view of its object
  lora_only      LoRA + logit scale, full objective
  viformer_only  VIFormer + logit scale, full objective
  full_ft        every CLIP parameter (both towers) + logit scale, no LoRA or VIFormer, full objective. The weights
                 are trained as base + delta with delta starting at 0: the same gradients and Adam updates as
                 training them in place, except that weight decay pulls towards the base weights, not towards 0.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import Mesh
from safetensors.numpy import load_file, save_file

from robust_jax.core import mesh as mesh_lib
from robust_jax.core.config import loop_config
from robust_jax.core.train import TrainResult, Training, initial_state, restore, train
from robust_jax.data.array_batches import ArrayBatches
from robust_jax.data.mvcap import group_views
from robust_jax.models import clip as clip_lib
from robust_jax.models import lora as lora_lib
from robust_jax.omniview import alignment
from robust_jax.omniview.augment import AugmentedRows, random_rotate_translate
from robust_jax.omniview.pretrain import contrastive_floor, contrastive_loss, sample_caption_tokens
from robust_jax.omniview.tuning_params import init_tuning_params
from robust_jax.omniview.viformer import VIFormer, viewpoint_invariant_embedding
from robust_jax.omniview.zero_shot import CLIP_MEAN, CLIP_STD

HARD_CENTRES, RANDOM_VIEWS, NO_ALIGNMENT = "hard_centres", "random_views", "none"
MAX_STEP_AUGMENT_STREAM = 0x6D617875  # folded into the (seed, epoch) key for the max step's augmentation


@dataclasses.dataclass(frozen=True)
class Variant:
    name: str
    lora: bool
    viformer: bool
    train_clip: bool
    alignment: str

    @property
    def trained_parts(self) -> tuple[str, ...]:
        """The top-level entries of the variant's trainable tree."""
        parts = [name for name, used in (("lora", self.lora), ("viformer", self.viformer),
                                         ("clip_delta", self.train_clip)) if used]
        return (*parts, "logit_scale")


VARIANTS = {v.name: v for v in (
    Variant("ovt", lora=True, viformer=True, train_clip=False, alignment=HARD_CENTRES),
    Variant("itc_only", lora=True, viformer=True, train_clip=False, alignment=NO_ALIGNMENT),
    Variant("random_views", lora=True, viformer=True, train_clip=False, alignment=RANDOM_VIEWS),
    Variant("lora_only", lora=True, viformer=False, train_clip=False, alignment=HARD_CENTRES),
    Variant("viformer_only", lora=False, viformer=True, train_clip=False, alignment=HARD_CENTRES),
    Variant("full_ft", lora=False, viformer=False, train_clip=True, alignment=HARD_CENTRES),
)}


def normalise_images(images_BxHxWxC: jax.Array) -> jax.Array:
    """uint8 in [0, 255] or float in [0, 1] -> CLIP-normalised float32 (the dtype is static under jit)."""
    images = images_BxHxWxC.astype(jnp.float32)
    if images_BxHxWxC.dtype == jnp.uint8:
        images = images / 255.0
    return (images - jnp.asarray(CLIP_MEAN)) / jnp.asarray(CLIP_STD)


@dataclasses.dataclass(frozen=True)
class TunedCLIP:
    """A base CLIP with the tuning parts of a variant; `params` = the trainable tree plus {'clip': base variables}.
    encode_image gives unit-norm embeddings: normalise(z + 0.1 VIFormer(z)) with z from the (LoRA-adapted) image
    tower, or normalise(z) without VIFormer."""

    clip: clip_lib.CLIP
    viformer: VIFormer | None
    lora: bool

    def clip_variables(self, params):
        if "clip_delta" in params:
            return jax.tree.map(jnp.add, params["clip"], params["clip_delta"])
        return params["clip"]

    def encode_image(self, params, images_BxHxWxC: jax.Array) -> jax.Array:
        variables = self.clip_variables(params)
        if self.lora:
            variables = lora_lib.apply_lora(variables, params["lora"])
        z_BxE = self.clip.apply(variables, images_BxHxWxC, method=clip_lib.CLIP.encode_image)
        if self.viformer is None:
            return clip_lib.l2_normalize(z_BxE.astype(jnp.float32))
        return viewpoint_invariant_embedding(self.viformer, params["viformer"], z_BxE)

    def encode_text(self, params, token_ids_BxL: jax.Array) -> jax.Array:
        return self.clip.apply(self.clip_variables(params), token_ids_BxL, method=clip_lib.CLIP.encode_text)


def build_tuned_model(clip: clip_lib.CLIP, variant: Variant, config: ml_collections.ConfigDict) -> TunedCLIP:
    viformer = VIFormer(layers=config.viformer_layers, heads=config.viformer_heads,
                        mlp_dim=config.viformer_mlp_dim) if variant.viformer else None
    return TunedCLIP(clip=clip, viformer=viformer, lora=variant.lora)


def abstract_like(tree):
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(jnp.shape(x), jnp.result_type(x)), tree)


def make_init_fn(tuned: TunedCLIP, base_variables, variant: Variant, config: ml_collections.ConfigDict) -> Callable:
    """init_fn(key) -> (the variant's trainable tree, {}) for core.train. It sees only the base's shapes (LoRA needs
    the kernel shapes), so no weight is captured into the compiled initialiser."""
    base_shapes = abstract_like(base_variables)

    def init_fn(key):
        fresh = init_tuning_params(key, base_shapes, tuned.clip.config.embed_dim,
                                   viformer=tuned.viformer or VIFormer(), lora_rank=config.lora_rank,
                                   lora_alpha=config.lora_alpha, lora_targets=config.lora_targets)
        fresh["clip_delta"] = jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), base_shapes)
        return {part: fresh[part] for part in variant.trained_parts}, {}

    return init_fn


def learning_rate_schedule(config: ml_collections.ConfigDict, epoch_steps: int | None = None) -> optax.Schedule:
    """Cosine from learning_rate to end_learning_rate. lr_schedule_unit='step': over num_steps, a new rate every
    step; 'epoch' (the official code's CosineAnnealingLR(T_max=epochs), stepped once per epoch): over the
    ceil(num_steps / epoch_steps) epochs, the rate of epoch e held for all its steps (epoch_steps default:
    config.steps_per_epoch)."""
    alpha = config.end_learning_rate / config.learning_rate
    if config.lr_schedule_unit == "step":
        return optax.cosine_decay_schedule(config.learning_rate, config.num_steps, alpha=alpha)
    if config.lr_schedule_unit != "epoch":
        raise ValueError(f"config.lr_schedule_unit={config.lr_schedule_unit!r}: expected 'step' or 'epoch'")
    epoch_steps = epoch_steps or config.steps_per_epoch
    if not epoch_steps:
        raise ValueError("lr_schedule_unit='epoch' needs the steps per epoch (epoch_steps, or config.steps_per_epoch)")
    per_epoch = optax.cosine_decay_schedule(config.learning_rate, math.ceil(config.num_steps / epoch_steps),
                                            alpha=alpha)
    return lambda step: per_epoch(step // epoch_steps)


def make_optimizer(config: ml_collections.ConfigDict, epoch_steps: int | None = None) -> optax.GradientTransformation:
    """AdamW (betas 0.9/0.98, eps 1e-6) with `learning_rate_schedule`, after gradient-norm clipping; it updates every
    leaf of the trainable tree."""
    schedule = learning_rate_schedule(config, epoch_steps)
    # Gains, biases and the temperature are not decayed (CLIP's rule).
    decay_mask = lambda params: jax.tree.map(lambda p: p.ndim >= 2, params)  # noqa: E731
    return optax.chain(optax.clip_by_global_norm(config.gradient_clip_norm),
                       optax.adamw(schedule, b1=0.9, b2=0.98, eps=1e-6, weight_decay=config.weight_decay,
                                   mask=decay_mask))


def make_loss_fn(tuned: TunedCLIP, variant: Variant, config: ml_collections.ConfigDict,
                 caption_tokens_KxVxL: np.ndarray | None) -> Callable:
    """The min step's loss: L_ITC + lambda * L_VI (L_ITC alone for itc_only).

    The batch holds image (uint8 or float in [0, 1]), example_id (distinct per example: its augmentation key),
    row (the multi-view row, -1 for a 2D pair) and either caption_index (procedural captions, a random template per
    step) or token_ids. constants: {'clip': the base variables} and, for the aligning variants, the epoch's
    {'targets_TxE', 'target_slot_N'}."""
    caption_tokens = None if caption_tokens_KxVxL is None else jnp.asarray(caption_tokens_KxVxL)
    aligned = variant.alignment != NO_ALIGNMENT
    lam, margin = config.vi_weight, config.margin

    def loss_fn(params, model_state, batch, key, step, constants):
        del step
        augment_key, caption_key = jax.random.split(key)
        example_keys_B = jax.vmap(lambda i: jax.random.fold_in(augment_key, i))(batch["example_id"])
        images = batch["image"].astype(jnp.float32)
        if batch["image"].dtype == jnp.uint8:
            images = images / 255.0
        images = random_rotate_translate(images, example_keys_B, config.max_rotation_degrees,
                                         config.max_translation)
        params = {**params, "clip": constants["clip"]}
        z_BxE = tuned.encode_image(params, (images - jnp.asarray(CLIP_MEAN)) / jnp.asarray(CLIP_STD))
        if "token_ids" in batch:
            token_ids_BxL = batch["token_ids"]
        else:
            token_ids_BxL = sample_caption_tokens(caption_tokens, batch["caption_index"], caption_key,
                                                  config.drop_colour_probability)
        text_BxE = tuned.encode_text(params, token_ids_BxL)
        itc, accuracy = contrastive_loss(z_BxE, text_BxE, params["logit_scale"], token_ids_BxL,
                                         targets=config.itc_targets, clamp_logit_scale=config.clamp_logit_scale)
        metrics = {"itc": itc, "itc_floor": contrastive_floor(token_ids_BxL), "batch_accuracy": accuracy}
        loss = itc
        if aligned:
            row_B = batch["row"]
            slot_B = jnp.where(row_B >= 0, constants["target_slot_N"][jnp.maximum(row_B, 0)], -1)
            targets_BxE = constants["targets_TxE"][jnp.maximum(slot_B, 0)]
            l_vi = alignment.viewpoint_invariance_loss(z_BxE, targets_BxE, slot_B >= 0, margin)
            loss = itc + lam * l_vi
            metrics.update(l_vi=l_vi, aligned_views=jnp.sum(slot_B >= 0).astype(jnp.float32))
        return loss, (metrics, model_state)

    return loss_fn


# --------------------------------------------------------------------------------------------------- max step


def make_embed_fn(tuned: TunedCLIP) -> Callable:
    """embed_fn(params, raw images) for the max step: the tuned model in eval mode on the images it is given (it
    augments nothing itself; see `epoch_targets`); params with the base variables under 'clip'."""

    def embed_fn(params, images_BxHxWxC):
        return tuned.encode_image(params, normalise_images(images_BxHxWxC))

    return embed_fn


def max_step_augment_key(seed: int, epoch: int) -> jax.Array:
    """The key of epoch `epoch`'s max-step augmentation: a stream of its own (the min steps fold example ids into
    the step keys of the train loop; the random-views draws use fold_in(key(seed), epoch))."""
    return jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), epoch), MAX_STEP_AUGMENT_STREAM)


def epoch_targets(variant: Variant, embed_fn: Callable, params, images, object_ids, *, epoch: int,
                  config: ml_collections.ConfigDict, mesh: Mesh) -> dict[str, np.ndarray]:
    """{'targets_TxE', 'target_slot_N'} for one epoch, from the parameters at its start.

    hard_centres: the max step; T = objects, each object's K hardest views point at its centre.
    random_views: K views per object drawn at random, each pointing at the embedding of another view of its object
    drawn at random (T = objects x K); the draws depend only on (seed, epoch). With config.max_step_augment the
    images are embedded augmented as the min steps augment them (`augment.AugmentedRows`), a draw per view and
    epoch (`max_step_augment_key`), independent of the min steps' draws; otherwise as they are."""
    common = dict(mesh=mesh, batch_size=config.max_step_batch_size)
    if config.max_step_augment:  # the official code's max step reads its augmented training loader
        images = AugmentedRows(images, max_step_augment_key(config.seed, epoch), config.max_rotation_degrees,
                               config.max_translation)
    if variant.alignment == HARD_CENTRES:
        targets = alignment.max_step(embed_fn, params, images, object_ids, object_batch_size=mesh.size * 8,
                                     num_neighbours=config.num_neighbours, num_hard=config.num_hard_views,
                                     max_views_per_object=config.max_views_per_object, **common)
        slot_N = np.where(targets.is_hard_N, targets.object_index_N, -1).astype(np.int32)
        return {"targets_TxE": targets.centres_OxE.astype(np.float32), "target_slot_N": slot_N}
    if variant.alignment != RANDOM_VIEWS:
        raise ValueError(f"variant {variant.name!r} aligns nothing: it has no epoch targets")
    groups = group_views(list(object_ids), config.max_views_per_object)
    grouped_rows = groups.rows_OxV[groups.valid_OxV]
    grouped_NxE = alignment.embed_images(embed_fn, params, images, grouped_rows, **common)
    embeddings_NxE = np.zeros((len(object_ids), grouped_NxE.shape[1]), np.float32)
    embeddings_NxE[grouped_rows] = grouped_NxE
    key = jax.random.fold_in(jax.random.key(config.seed), epoch)
    choose_key, partner_key = jax.random.split(key)
    num_objects, num_hard = groups.valid_OxV.shape[0], config.num_hard_views
    # K distinct valid views per object: the K smallest of uniform scores (padding scores +inf).
    scores_OxV = np.where(groups.valid_OxV, np.asarray(jax.random.uniform(choose_key, groups.valid_OxV.shape)), np.inf)
    chosen_OxK = np.argsort(scores_OxV, axis=1, kind="stable")[:, :num_hard]
    partner_OxV = np.asarray(alignment.random_view_targets(partner_key, groups.valid_OxV))
    partner_rows_OxK = np.take_along_axis(groups.rows_OxV, np.take_along_axis(partner_OxV, chosen_OxK, 1), 1)
    chosen_rows_OxK = np.take_along_axis(groups.rows_OxV, chosen_OxK, 1)
    slot_N = np.full(len(object_ids), -1, np.int32)
    slot_N[chosen_rows_OxK.reshape(-1)] = np.arange(num_objects * num_hard, dtype=np.int32)
    return {"targets_TxE": embeddings_NxE[partner_rows_OxK.reshape(-1)], "target_slot_N": slot_N}


# ------------------------------------------------------------------------------------------------ batches


class MixedBatches:
    """Batches of `multiview` rows followed by `image_text` rows (2D pairs), each source shuffled by its own
    ArrayBatches; the position of both is saved with every checkpoint."""

    def __init__(self, multiview: ArrayBatches, image_text: ArrayBatches):
        self.multiview, self.image_text = multiview, image_text

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        first, second = next(self.multiview), next(self.image_text)
        return {name: np.concatenate([first[name], second[name]]) for name in first}

    def get_state(self) -> dict:
        return {"multiview": self.multiview.get_state(), "image_text": self.image_text.get_state()}

    def set_state(self, state: dict) -> None:
        self.multiview.set_state(state["multiview"])
        self.image_text.set_state(state["image_text"])


def mixed_batches(multiview_arrays: dict, image_text_arrays: dict, config: ml_collections.ConfigDict) -> MixedBatches:
    common = dict(process_index=jax.process_index(), process_count=jax.process_count())
    return MixedBatches(
        ArrayBatches(multiview_arrays, batch_size=config.batch_size, seed=config.seed, **common),
        ArrayBatches(image_text_arrays, batch_size=config.batch_size_2d, seed=config.seed + 1, **common))


def steps_per_epoch(num_multiview_rows: int, config: ml_collections.ConfigDict) -> int:
    """config.steps_per_epoch, or (0) one pass over the multi-view rows."""
    return config.steps_per_epoch or max(1, num_multiview_rows // config.batch_size)


# -------------------------------------------------------------------------------------------------- the loop


def _save_targets(path: str, targets: dict[str, np.ndarray]) -> None:
    if jax.process_index() != 0:
        return
    os.makedirs(os.path.dirname(path), exist_ok=True)
    temporary = f"{path}.{os.getpid()}.tmp"
    save_file({name: np.ascontiguousarray(value) for name, value in targets.items()}, temporary)
    os.replace(temporary, path)  # atomic: a resumed run never reads half a file


def _latest_step(run_dir: str) -> int:
    from robust_jax.core.checkpoint import Checkpointer

    directory = os.path.join(run_dir, "checkpoints")
    if not os.path.isdir(directory):
        return 0
    checkpointer = Checkpointer(directory, save_every=1, keep=1000)
    try:
        return checkpointer.latest_step() or 0
    finally:
        checkpointer.close()


@dataclasses.dataclass
class TuningSetup:
    """Everything one variant's training needs; built by `setup_variant`."""

    variant: Variant
    tuned: TunedCLIP
    init_fn: Callable
    optimizer: optax.GradientTransformation
    loss_fn: Callable
    embed_fn: Callable
    base_variables: Any


def setup_variant(variant: Variant, clip: clip_lib.CLIP, base_variables, config: ml_collections.ConfigDict,
                  caption_tokens_KxVxL: np.ndarray | None, epoch_steps: int | None = None) -> TuningSetup:
    """The variant's model, initialiser, optimizer, loss and max-step embedding (base_variables may be abstract,
    e.g. to count parameters with jax.eval_shape); epoch_steps (`steps_per_epoch`) for an epoch-stepped schedule."""
    tuned = build_tuned_model(clip, variant, config)
    return TuningSetup(variant=variant, tuned=tuned, init_fn=make_init_fn(tuned, base_variables, variant, config),
                       optimizer=make_optimizer(config, epoch_steps),
                       loss_fn=make_loss_fn(tuned, variant, config, caption_tokens_KxVxL),
                       embed_fn=make_embed_fn(tuned), base_variables=base_variables)


def with_base(setup: TuningSetup, trainable) -> dict:
    """The model's parameter dict: the trainable tree plus {'clip': base variables}."""
    return {**trainable, "clip": setup.base_variables}


@dataclasses.dataclass(frozen=True)
class VariantTraining(Training):
    """A variant's tuning: a `Training` whose constants (the max step's hard views and centres) are recomputed at
    every epoch from the parameters of the epoch's start (`tune`). setup: the variant's model and functions; base:
    the base CLIP it tunes (`base_model.Base`); tuning_set: its data (`tuning_data.TuningData`), whose multi-view
    rows the max step embeds; epoch_steps: steps per epoch; config: its config (`tune` defaults to it)."""

    setup: TuningSetup | None = None
    base: Any = None
    tuning_set: Any = None
    epoch_steps: int = 1
    config: Any = None  # the config it tunes with (its seed may be another than the study's: `seeded`)


def variant_training(setup: TuningSetup, name: str, base, tuning_set, config: ml_collections.ConfigDict
                     ) -> VariantTraining:
    """The variant's training in `<workdir>/<name>` to config.num_steps on `tuning_set` (`tuning_data.TuningData`);
    `load_run` gives its TunedCLIP with the trainable tree plus the base's variables."""
    return VariantTraining(
        name=name, init_fn=setup.init_fn, loss_fn=setup.loss_fn, optimizer=setup.optimizer,
        loop=loop_config(config),
        batches=lambda: mixed_batches(tuning_set.multiview, tuning_set.image_text, config),
        constants={"clip": setup.base_variables}, keys=tuple(jax.random.split(jax.random.key(config.seed))),
        desc=f"tune {setup.variant.name}", model=setup.tuned,
        variables=lambda params, model_state: with_base(setup, params), setup=setup, base=base,
        tuning_set=tuning_set, epoch_steps=steps_per_epoch(tuning_set.num_multiview_rows, config), config=config)


def seeded(config: ml_collections.ConfigDict, offset: int) -> ml_collections.ConfigDict:
    """The config of tuning seed `offset` (0: config itself): seed config.seed + offset, every other field the same.
    The seed decides the tuning's initialisation, batch order, step keys and max-step draws."""
    if offset == 0:
        return config
    other = config.copy_and_resolve_references()
    other.seed = config.seed + offset
    return other


def training_name(variant: str, offset: int) -> str:
    """The workdir subfolder of a variant's tuning with seed offset `offset`: tune_<variant>[_seed<offset>]."""
    return f"tune_{variant}" if offset == 0 else f"tune_{variant}_seed{offset}"


def tuning_runs(config: ml_collections.ConfigDict) -> list[tuple[int, str]]:
    """(seed offset, variant) of every tuning the study runs, in the order it runs them: every variant with seed
    offset 0, then with 1, ..."""
    return [(offset, name) for offset in range(config.tuning_seeds) for name in config.variants]


def tune(training: VariantTraining, workdir: str, config: ml_collections.ConfigDict | None = None, *,
         mesh: Mesh | None = None) -> TrainResult:
    """Trains (or resumes) one variant in `workdir/<training.name>`, epoch by epoch: at each epoch's start the max
    step picks its targets from the current parameters (saved, so a resumed epoch reuses them), then the epoch's
    steps train with them as constants. config: default training.config."""
    config = training.config if config is None else config
    mesh = mesh_lib.make_data_mesh() if mesh is None else mesh
    setup, run_dir, epoch_steps = training.setup, os.path.join(workdir, training.name), training.epoch_steps
    init_key, _ = training.keys
    num_epochs = math.ceil(config.num_steps / epoch_steps)
    latest = _latest_step(run_dir)
    result = None
    for epoch in range(num_epochs):
        start, end = epoch * epoch_steps, min((epoch + 1) * epoch_steps, config.num_steps)
        if latest >= end:
            continue
        constants = dict(training.constants)
        if setup.variant.alignment != NO_ALIGNMENT:
            path = os.path.join(run_dir, "alignment", f"epoch_{epoch:04d}.safetensors")
            if os.path.exists(path):
                targets = load_file(path)
            else:
                # The parameters at the epoch's start: those just trained, else initial or the checkpoint's.
                params = (result.state.params if result is not None
                          else initial_state(setup.init_fn, setup.optimizer, init_key, mesh)[0].params if start == 0
                          else restore(training, workdir).state.params)
                targets = epoch_targets(setup.variant, setup.embed_fn, with_base(setup, params),
                                        training.tuning_set.multiview["image"], training.tuning_set.object_ids,
                                        epoch=epoch, config=config, mesh=mesh)
                _save_targets(path, targets)
            constants.update(targets)
        result = train(dataclasses.replace(training, loop=loop_config(config, num_steps=end), constants=constants,
                                           desc=f"tune {setup.variant.name} epoch {epoch + 1}/{num_epochs}"),
                       workdir, mesh=mesh)
        latest = end
    return result if result is not None else restore(training, workdir)
