"""Stage 1 of the Omniview study when no pre-trained weights are used: a small CLIP trained from scratch with InfoNCE
on canonical views of the training objects of the procedural multi-view set (the stand-in for a web-scale CLIP,
whose weights cannot be downloaded here; like it, it has seen objects mostly from the front).

It trains through `core.train` in `<workdir>/base` with its own fields of the config (`pretrain_*`), and leaves the
word vocabulary in `<workdir>/base/vocab.json` so a later run can load the base from that workdir.
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
from robust_jax.core.checkpoint import restore_trained
from robust_jax.core.train import Training
from robust_jax.data import multiview
from robust_jax.data.array_batches import ArrayBatches
from robust_jax.models import clip as clip_lib
from robust_jax.models.word_tokenizer import WordTokenizer
from robust_jax.omniview import augment
from robust_jax.omniview import captions as captions_lib
from robust_jax.omniview import zero_shot

MAX_LOG_LOGIT_SCALE = float(np.log(100.0))  # CLIP clamps the temperature at 100
BASE_SUBDIR = "base"
CEILING_SUBDIR = "ceiling"  # the same CLIP pre-trained on every view of the training objects (a gate, not a base)
VOCAB_FILE = "vocab.json"
# The config fields that decide the from-scratch CLIP's architecture (a base loaded from another workdir must match).
ARCHITECTURE_FIELDS = ("image_size", "patch_size", "vision_width", "vision_layers", "vision_heads", "vision_mlp_ratio",
                       "text_width", "text_layers", "text_heads", "text_mlp_ratio", "embed_dim", "context_length")


def check_architecture_fields(config: ml_collections.ConfigDict) -> None:
    checks.check_int("config.patch_size", config.patch_size, minimum=1)
    checks.check_divisible("config.image_size", config.image_size, config.patch_size, "config.patch_size")
    for tower in ("vision", "text"):
        width = checks.check_int(f"config.{tower}_width", config[f"{tower}_width"], minimum=1)
        checks.check_int(f"config.{tower}_layers", config[f"{tower}_layers"], minimum=1)
        heads = checks.check_int(f"config.{tower}_heads", config[f"{tower}_heads"], minimum=1)
        checks.check_divisible(f"config.{tower}_width", width, heads, f"config.{tower}_heads")
        checks.check_int(f"config.{tower}_mlp_ratio", config[f"{tower}_mlp_ratio"], minimum=1)
    checks.check_int("config.embed_dim", config.embed_dim, minimum=1)
    checks.check_int("config.context_length", config.context_length, minimum=8, maximum=77)


def check_pretrain_fields(config: ml_collections.ConfigDict, device_count: int) -> None:
    """The `pretrain_*` fields (used when config.base_source == 'pretrain')."""
    checks.check_int("config.pretrain_num_steps", config.pretrain_num_steps, minimum=1)
    batch = checks.check_int("config.pretrain_batch_size", config.pretrain_batch_size, minimum=1)
    checks.check_divisible("config.pretrain_batch_size", batch, device_count, "the device count")
    checks.check_float("config.pretrain_learning_rate", config.pretrain_learning_rate, positive=True)
    checks.check_int("config.pretrain_warmup_steps", config.pretrain_warmup_steps, minimum=0)
    if config.pretrain_warmup_steps >= config.pretrain_num_steps:
        checks.fail("config.pretrain_warmup_steps", config.pretrain_warmup_steps,
                    f"must be < config.pretrain_num_steps ({config.pretrain_num_steps})")
    checks.check_int("config.ceiling_num_steps", config.ceiling_num_steps, minimum=0)
    if 0 < config.ceiling_num_steps <= config.pretrain_warmup_steps:
        checks.fail("config.ceiling_num_steps", config.ceiling_num_steps,
                    f"must be 0 (as many epochs as the base) or > config.pretrain_warmup_steps "
                    f"({config.pretrain_warmup_steps})")
    checks.check_float("config.pretrain_weight_decay", config.pretrain_weight_decay, non_negative=True)
    checks.check_float("config.drop_colour_probability", config.drop_colour_probability, non_negative=True,
                       at_most=1.0)
    checks.check_int("config.pretrain_max_shift", config.pretrain_max_shift, minimum=0,
                     maximum=config.image_size // 4)
    checks.check_float("config.pretrain_rotation_degrees", config.pretrain_rotation_degrees, non_negative=True,
                       at_most=180.0)


def build_model(config: ml_collections.ConfigDict, vocab_size: int) -> clip_lib.CLIP:
    return clip_lib.CLIP(clip_lib.CLIPConfig(
        embed_dim=config.embed_dim,
        vision=clip_lib.CLIPVisionConfig(
            image_size=config.image_size, patch_size=config.patch_size, width=config.vision_width,
            layers=config.vision_layers, heads=config.vision_heads,
            mlp_dim=config.vision_mlp_ratio * config.vision_width, activation="gelu"),
        text=clip_lib.CLIPTextConfig(
            context_length=config.context_length, vocab_size=vocab_size, width=config.text_width,
            layers=config.text_layers, heads=config.text_heads, mlp_dim=config.text_mlp_ratio * config.text_width,
            activation="gelu"),
    ))


def training_rows(data: dict[str, np.ndarray], every_view: bool = False) -> np.ndarray:
    """Only canonical views of training objects are pre-trained on: no held-out object, no viewpoint-OOD view. With
    every_view (the ceiling gate's model, `CEILING_SUBDIR`) every view of the training objects."""
    training = ~data["heldout"]
    return training if every_view else training & (data["view_split"] == multiview.CANONICAL)


def contrastive_loss(image_emb_BxE: jax.Array, text_emb_BxE: jax.Array, log_logit_scale: jax.Array,
                     token_ids_BxL: jax.Array, *, targets: str = "same_caption",
                     clamp_logit_scale: bool = True) -> tuple[jax.Array, jax.Array]:
    """Symmetric InfoNCE over the image-text logit matrix. Returns (loss, image-to-text accuracy).

    targets='same_caption': pairs whose captions are identical token for token count as positives of each other (a
    batch often holds several views of one object), with the target mass split evenly; 'diagonal': each image's
    own caption only (CLIP's and the official Omniview-Tuning code's targets). clamp_logit_scale: the temperature
    is capped at 100 (CLIP's rule); the official tuning code leaves it unclamped."""
    image_BxE = clip_lib.l2_normalize(image_emb_BxE.astype(jnp.float32))
    text_BxE = clip_lib.l2_normalize(text_emb_BxE.astype(jnp.float32))
    scale = jnp.exp(jnp.minimum(log_logit_scale, MAX_LOG_LOGIT_SCALE) if clamp_logit_scale else log_logit_scale)
    logits_BxB = scale * image_BxE @ text_BxE.T
    if targets == "same_caption":
        positive_BxB = same_caption_mask(token_ids_BxL)
    elif targets == "diagonal":
        positive_BxB = jnp.eye(logits_BxB.shape[0], dtype=bool)
    else:
        raise ValueError(f"targets={targets!r}: expected 'same_caption' or 'diagonal'")
    targets_BxB = positive_BxB / positive_BxB.sum(axis=1, keepdims=True)  # symmetric mask: rows = columns
    loss_i2t = optax.softmax_cross_entropy(logits_BxB, targets_BxB).mean()
    loss_t2i = optax.softmax_cross_entropy(logits_BxB.T, targets_BxB).mean()
    hit = jnp.take_along_axis(positive_BxB, jnp.argmax(logits_BxB, axis=1)[:, None], axis=1)[:, 0]
    return 0.5 * (loss_i2t + loss_t2i), hit.mean()


def same_caption_mask(token_ids_BxL: jax.Array) -> jax.Array:
    """(B, B) bool: captions i and j are identical token for token."""
    return jnp.all(token_ids_BxL[:, None, :] == token_ids_BxL[None, :, :], axis=-1)


def contrastive_floor(token_ids_BxL: jax.Array) -> jax.Array:
    """The lowest value `contrastive_loss` can take on a batch with these captions, under either target rule: the
    mean over captions of log(its copies in the batch, itself included). Identical captions have one text embedding,
    so no image can tell them apart: each of k copies gets at most 1/k of the probability."""
    copies_B = jnp.sum(same_caption_mask(token_ids_BxL), axis=1)
    return jnp.mean(jnp.log(copies_B.astype(jnp.float32)))


def augment_images(images_BxHxWxC: jax.Array, key: jax.Array, max_shift: int,
                   max_rotation_degrees: float = 0.0) -> jax.Array:
    """Random horizontal flip and translation by up to `max_shift` pixels (edge padding), per example; with
    max_rotation_degrees > 0 then a rotation by U(-max, max) degrees about the centre (`augment.affine_warp`, edges
    extended), the tuning stage's rotation."""
    batch = images_BxHxWxC.shape[0]
    flip_key, shift_key = jax.random.split(key)
    flip_B = jax.random.bernoulli(flip_key, 0.5, (batch,))
    images_BxHxWxC = jnp.where(flip_B[:, None, None, None], images_BxHxWxC[:, :, ::-1], images_BxHxWxC)
    images_BxHxWxC = _shift(images_BxHxWxC, shift_key, max_shift)
    if max_rotation_degrees == 0:
        return images_BxHxWxC
    # A key of its own (fold_in), so the flip and shift draws stay those of a run without rotation.
    angle_B = jax.random.uniform(jax.random.fold_in(key, 1), (batch,), minval=-max_rotation_degrees,
                                 maxval=max_rotation_degrees)
    return augment.affine_warp(images_BxHxWxC, angle_B, jnp.zeros((batch, 2), jnp.float32))


def _shift(images_BxHxWxC: jax.Array, shift_key: jax.Array, max_shift: int) -> jax.Array:
    batch, height, width, _ = images_BxHxWxC.shape
    if max_shift == 0:
        return images_BxHxWxC
    padded = jnp.pad(images_BxHxWxC, ((0, 0), (max_shift, max_shift), (max_shift, max_shift), (0, 0)), mode="edge")
    offsets_Bx2 = jax.random.randint(shift_key, (batch, 2), 0, 2 * max_shift + 1)

    def crop(image, offset):
        return jax.lax.dynamic_slice(image, (offset[0], offset[1], 0), (height, width, image.shape[-1]))

    return jax.vmap(crop)(padded, offsets_Bx2)


def sample_caption_tokens(caption_tokens_KxVxL: jax.Array, caption_index_B: jax.Array, key: jax.Array,
                          drop_colour_probability: float) -> jax.Array:
    """One caption per image: a random template, and with `drop_colour_probability` the variant without the colour
    word (rows of `captions.caption_token_table`)."""
    num_templates = caption_tokens_KxVxL.shape[1] // 2
    template_key, colour_key = jax.random.split(key)
    batch_size = caption_index_B.shape[0]
    template_B = jax.random.randint(template_key, (batch_size,), 0, num_templates)
    drop_B = jax.random.bernoulli(colour_key, drop_colour_probability, (batch_size,))
    return caption_tokens_KxVxL[caption_index_B, template_B + num_templates * drop_B]


def make_loss_fn(model: clip_lib.CLIP, caption_tokens_KxVxL: np.ndarray, drop_colour_probability: float,
                 max_shift: int, max_rotation_degrees: float = 0.0):
    caption_tokens = jnp.asarray(caption_tokens_KxVxL)
    mean, std = jnp.asarray(zero_shot.CLIP_MEAN), jnp.asarray(zero_shot.CLIP_STD)

    def loss_fn(params, model_state, batch, key, step, constants):
        del step, constants
        caption_key, image_key = jax.random.split(key)
        token_ids_BxL = sample_caption_tokens(caption_tokens, batch["caption_index"], caption_key,
                                              drop_colour_probability)
        images = (batch["image"].astype(jnp.float32) / 255.0 - mean) / std
        images = augment_images(images, image_key, max_shift, max_rotation_degrees)
        image_emb = model.apply(params, images, method=clip_lib.CLIP.encode_image)
        text_emb = model.apply(params, token_ids_BxL, method=clip_lib.CLIP.encode_text)
        loss, accuracy = contrastive_loss(image_emb, text_emb, params["params"]["logit_scale"], token_ids_BxL)
        return loss, ({"batch_accuracy": accuracy, "logit_scale": jnp.exp(params["params"]["logit_scale"])},
                      model_state)

    return loss_fn


def ceiling_num_steps(config: ml_collections.ConfigDict) -> int:
    """The ceiling's steps: config.ceiling_num_steps, or (0) as many epochs as the base: pretrain_num_steps times
    the views per object over the canonical views per object."""
    if config.ceiling_num_steps:
        return int(config.ceiling_num_steps)
    num_canonical = int(round(config.canonical_fraction * config.views_per_object))
    return int(round(config.pretrain_num_steps * config.views_per_object / max(num_canonical, 1)))


def make_optimizer(config: ml_collections.ConfigDict, num_steps: int | None = None) -> optax.GradientTransformation:
    """AdamW with a linear warm-up and a cosine to 1% over num_steps (default config.pretrain_num_steps)."""
    num_steps = config.pretrain_num_steps if num_steps is None else num_steps
    schedule = optax.warmup_cosine_decay_schedule(0.0, config.pretrain_learning_rate, config.pretrain_warmup_steps,
                                                  num_steps,
                                                  end_value=config.pretrain_learning_rate * 0.01)
    # No weight decay on gains, biases, embeddings of one vector and the temperature, as in CLIP.
    decay_mask = lambda params: jax.tree.map(lambda p: p.ndim >= 2, params)  # noqa: E731
    return optax.chain(optax.clip_by_global_norm(1.0),
                       optax.adamw(schedule, b1=0.9, b2=0.98, eps=1e-6, weight_decay=config.pretrain_weight_decay,
                                   mask=decay_mask))


def build_tokenizer(config: ml_collections.ConfigDict) -> WordTokenizer:
    """The words of the training captions and prompts; the category-free captions' noun too when tuning uses them
    (config.category_free_fraction > 0; otherwise the vocabulary, and so the initial weights, stay as before)."""
    return captions_lib.build_tokenizer(multiview.category_names(), multiview.COLOUR_NAMES, config.context_length,
                                        generic=config.category_free_fraction > 0)


def _init_fn(model: clip_lib.CLIP):
    cfg = model.config

    def init_fn(key):
        images = jnp.zeros((1, cfg.vision.image_size, cfg.vision.image_size, 3), jnp.float32)
        return model.init(key, images, jnp.zeros((1, cfg.text.context_length), jnp.int32)), {}

    return init_fn


def pretrain_training(config: ml_collections.ConfigDict, data: dict[str, np.ndarray] | None,
                      tokenizer: WordTokenizer, every_view: bool = False) -> Training:
    """The from-scratch CLIP's training ("base", `BASE_SUBDIR`) on the training objects' canonical views, each with
    its category-and-colour caption; with every_view, the ceiling's ("ceiling", `CEILING_SUBDIR`): the same on
    every view of the training objects, with the same settings and seed, for `ceiling_num_steps`. `data` is needed
    only to train (its batches are made then)."""
    model = build_model(config, tokenizer.vocab_size)
    num_steps = ceiling_num_steps(config) if every_view else config.pretrain_num_steps
    category_names, colour_names = multiview.category_names(), multiview.COLOUR_NAMES

    def batches():
        rows = training_rows(data, every_view)
        caption_index = data["category"] * len(colour_names) + data["colour"]
        arrays = {"image": data["image"][rows], "caption_index": caption_index[rows].astype(np.int32)}
        return ArrayBatches(arrays, batch_size=config.pretrain_batch_size, seed=config.seed,
                            process_index=jax.process_index(), process_count=jax.process_count())

    return Training(
        name=CEILING_SUBDIR if every_view else BASE_SUBDIR,
        init_fn=_init_fn(model),
        loss_fn=make_loss_fn(model, captions_lib.caption_token_table(tokenizer, list(category_names),
                                                                     list(colour_names)),
                             config.drop_colour_probability, config.pretrain_max_shift,
                             config.pretrain_rotation_degrees),
        optimizer=make_optimizer(config, num_steps),
        loop=loop_config(config, num_steps=num_steps),
        batches=batches,
        desc="omniview pre-train, every view (ceiling)" if every_view else "omniview pre-train",
        model=model,
    )


def save_vocabulary(tokenizer: WordTokenizer, base_dir: str) -> None:
    """The vocabulary beside the base's checkpoints, for notebooks and for runs that reuse this base."""
    if jax.process_index() == 0:
        os.makedirs(base_dir, exist_ok=True)
        tokenizer.save(os.path.join(base_dir, VOCAB_FILE))


def load_pretrained(config: ml_collections.ConfigDict, base_dir: str) -> tuple[clip_lib.CLIP, dict, WordTokenizer]:
    """The CLIP that another omniview run pre-trained in `base_dir` (its latest checkpoint's parameters) with its
    tokenizer; `config` must hold the pre-training's architecture fields."""
    tokenizer = WordTokenizer.load(os.path.join(base_dir, VOCAB_FILE))
    _, params, _, _ = restore_trained(os.path.join(base_dir, "checkpoints"))
    return build_model(config, tokenizer.vocab_size), params, tokenizer
