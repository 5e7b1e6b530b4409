"""The clip_pretrain study: a small CLIP trained from scratch with InfoNCE on canonical views of the training objects
of the procedural multi-view set, then evaluated zero-shot (prompt ensemble over the 24 category names) on the
held-out objects' canonical and viewpoint-OOD views.

Writes to the workdir, besides what every run writes: `multiview_grid.png` (one object per category across its
canonical and viewpoint-OOD views), `vocab.json` (the word tokenizer, for later studies that load this model) and
`zero_shot_by_view.png`.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import Mesh

from robust_jax.clip_pretrain import captions as captions_lib
from robust_jax.core import checks
from robust_jax.core import mesh as mesh_lib
from robust_jax.core.config import loop_config
from robust_jax.core.train import train
from robust_jax.data import multiview
from robust_jax.data.array_batches import ArrayBatches
from robust_jax.models import clip as clip_lib
from robust_jax.models import zero_shot

MAX_LOG_LOGIT_SCALE = float(np.log(100.0))  # CLIP clamps the temperature at 100


def check_config(config: ml_collections.ConfigDict, device_count: int | None = None) -> None:
    device_count = jax.device_count() if device_count is None else device_count
    checks.check_int("config.num_objects_per_category", config.num_objects_per_category, minimum=2)
    checks.check_int("config.views_per_object", config.views_per_object, minimum=2)
    checks.check_int("config.image_size", config.image_size, minimum=8, maximum=64)
    checks.check_float("config.canonical_fraction", config.canonical_fraction, positive=True, below=1.0)
    checks.check_float("config.heldout_fraction", config.heldout_fraction, positive=True, below=1.0)
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
    checks.check_int("config.eval_batch_size", config.eval_batch_size, minimum=1)
    checks.check_int("config.warmup_steps", config.warmup_steps, minimum=0)
    if config.warmup_steps >= config.num_steps:
        checks.fail("config.warmup_steps", config.warmup_steps, f"must be < config.num_steps ({config.num_steps})")
    checks.check_float("config.weight_decay", config.weight_decay, non_negative=True)
    checks.check_float("config.drop_colour_probability", config.drop_colour_probability, non_negative=True,
                       at_most=1.0)
    checks.check_int("config.max_shift", config.max_shift, minimum=0, maximum=config.image_size // 4)
    if config.micro_batch_size:
        checks.fail("config.micro_batch_size", config.micro_batch_size,
                    "must be 0: the contrastive loss couples every example of a batch, so it cannot be accumulated "
                    "over micro-batches")
    if not isinstance(config.data_cache_dir, str):
        checks.fail("config.data_cache_dir", config.data_cache_dir, "expected a path string ('' for the default cache)")


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


def training_rows(data: dict[str, np.ndarray]) -> np.ndarray:
    """Only canonical views of training objects are ever trained on: no held-out object, no viewpoint-OOD view."""
    return ~data["heldout"] & (data["view_split"] == multiview.CANONICAL)


def load_data(config: ml_collections.ConfigDict) -> dict[str, np.ndarray]:
    return multiview.make_multiview_dataset(
        num_objects_per_category=config.num_objects_per_category, views_per_object=config.views_per_object,
        image_size=config.image_size, seed=config.seed, cache_dir=config.data_cache_dir or None,
        canonical_fraction=config.canonical_fraction, heldout_fraction=config.heldout_fraction, progress=True)


def contrastive_loss(image_emb_BxE: jax.Array, text_emb_BxE: jax.Array, log_logit_scale: jax.Array,
                     token_ids_BxL: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Symmetric InfoNCE over the image-text logit matrix; pairs whose captions are identical token for token count
    as positives of each other (a batch often holds several views of one object), with the target mass split evenly.
    Returns (loss, image-to-text accuracy)."""
    image_BxE = clip_lib.l2_normalize(image_emb_BxE.astype(jnp.float32))
    text_BxE = clip_lib.l2_normalize(text_emb_BxE.astype(jnp.float32))
    scale = jnp.exp(jnp.minimum(log_logit_scale, MAX_LOG_LOGIT_SCALE))
    logits_BxB = scale * image_BxE @ text_BxE.T
    same_caption_BxB = jnp.all(token_ids_BxL[:, None, :] == token_ids_BxL[None, :, :], axis=-1)
    targets_BxB = same_caption_BxB / same_caption_BxB.sum(axis=1, keepdims=True)  # symmetric mask: rows = columns
    loss_i2t = optax.softmax_cross_entropy(logits_BxB, targets_BxB).mean()
    loss_t2i = optax.softmax_cross_entropy(logits_BxB.T, targets_BxB).mean()
    hit = jnp.take_along_axis(same_caption_BxB, jnp.argmax(logits_BxB, axis=1)[:, None], axis=1)[:, 0]
    return 0.5 * (loss_i2t + loss_t2i), hit.mean()


def augment_images(images_BxHxWxC: jax.Array, key: jax.Array, max_shift: int) -> jax.Array:
    """Random horizontal flip and translation by up to `max_shift` pixels (edge padding), per example."""
    batch, height, width, _ = images_BxHxWxC.shape
    flip_key, shift_key = jax.random.split(key)
    flip_B = jax.random.bernoulli(flip_key, 0.5, (batch,))
    images_BxHxWxC = jnp.where(flip_B[:, None, None, None], images_BxHxWxC[:, :, ::-1], images_BxHxWxC)
    if max_shift == 0:
        return images_BxHxWxC
    padded = jnp.pad(images_BxHxWxC, ((0, 0), (max_shift, max_shift), (max_shift, max_shift), (0, 0)), mode="edge")
    offsets_Bx2 = jax.random.randint(shift_key, (batch, 2), 0, 2 * max_shift + 1)

    def crop(image, offset):
        return jax.lax.dynamic_slice(image, (offset[0], offset[1], 0), (height, width, image.shape[-1]))

    return jax.vmap(crop)(padded, offsets_Bx2)


def make_loss_fn(model: clip_lib.CLIP, caption_tokens_KxVxL: np.ndarray, drop_colour_probability: float,
                 max_shift: int):
    caption_tokens = jnp.asarray(caption_tokens_KxVxL)
    num_templates = caption_tokens.shape[1] // 2
    mean, std = jnp.asarray(zero_shot.CLIP_MEAN), jnp.asarray(zero_shot.CLIP_STD)

    def loss_fn(params, model_state, batch, key):
        template_key, colour_key, image_key = jax.random.split(key, 3)
        batch_size = batch["image"].shape[0]
        template_B = jax.random.randint(template_key, (batch_size,), 0, num_templates)
        drop_B = jax.random.bernoulli(colour_key, drop_colour_probability, (batch_size,))
        token_ids_BxL = caption_tokens[batch["caption_index"], template_B + num_templates * drop_B]
        images = (batch["image"].astype(jnp.float32) / 255.0 - mean) / std
        images = augment_images(images, image_key, max_shift)
        image_emb = model.apply(params, images, method=clip_lib.CLIP.encode_image)
        text_emb = model.apply(params, token_ids_BxL, method=clip_lib.CLIP.encode_text)
        loss, accuracy = contrastive_loss(image_emb, text_emb, params["params"]["logit_scale"], token_ids_BxL)
        return loss, ({"batch_accuracy": accuracy, "logit_scale": jnp.exp(params["params"]["logit_scale"])},
                      model_state)

    return loss_fn


def make_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
    schedule = optax.warmup_cosine_decay_schedule(0.0, config.learning_rate, config.warmup_steps, config.num_steps,
                                                  end_value=config.learning_rate * 0.01)
    # No weight decay on gains, biases, embeddings of one vector and the temperature, as in CLIP.
    decay_mask = lambda params: jax.tree.map(lambda p: p.ndim >= 2, params)  # noqa: E731
    return optax.chain(optax.clip_by_global_norm(1.0),
                       optax.adamw(schedule, b1=0.9, b2=0.98, eps=1e-6, weight_decay=config.weight_decay,
                                   mask=decay_mask))


def evaluate_zero_shot(model: clip_lib.CLIP, params, tokenizer, data: dict[str, np.ndarray],
                       batch_size: int) -> dict:
    """Zero-shot top-1/top-5 on held-out objects (canonical, viewpoint-OOD and each OOD kind) and, as a check of
    fit, on the training objects' canonical views."""
    encode_image, encode_text = clip_lib.jit_encoders(model)
    params = jax.device_get(params)  # evaluate on one device
    class_emb = zero_shot.class_text_embeddings(lambda ids: encode_text(params, ids), tokenizer,
                                                [str(n) for n in data["category_names"]])
    rows = data["heldout"] | (data["view_split"] == multiview.CANONICAL)
    images = zero_shot.normalise_images(data["image"][rows])
    image_emb = zero_shot.image_embeddings(lambda x: encode_image(params, x), images, batch_size)
    heldout, view_split, view_kind = data["heldout"][rows], data["view_split"][rows], data["view_kind"][rows]
    groups = {
        "canonical": heldout & (view_split == multiview.CANONICAL),
        "viewpoint_ood": heldout & (view_split == multiview.VIEWPOINT_OOD),
    }
    for kind_index, kind in enumerate(multiview.VIEW_KINDS):
        if kind != "canonical":
            groups[f"ood_{kind}"] = heldout & (view_kind == kind_index)
    groups["train_objects_canonical"] = ~heldout & (view_split == multiview.CANONICAL)
    return zero_shot.zero_shot_report(image_emb, class_emb, data["category"][rows], groups)


def _save_accuracy_plot(report: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n in report["zero_shot_top1"] if n != "train_objects_canonical"]
    fig, ax = plt.subplots(figsize=(7, 3.2))
    ax.bar(names, [100 * report["zero_shot_top1"][n] for n in names], color="tab:blue")
    ax.set_ylabel("zero-shot top-1 (%)")
    ax.set_ylim(0, 100)
    ax.set_title("held-out objects: canonical vs viewpoint-OOD views")
    ax.tick_params(axis="x", labelrotation=20)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def run(config: ml_collections.ConfigDict, workdir: str, *, mesh: Mesh | None = None) -> dict:
    """Generates (or loads) the multi-view set, trains (or resumes) the CLIP, evaluates zero-shot."""
    mesh = mesh_lib.make_data_mesh() if mesh is None else mesh
    data = load_data(config)
    category_names = [str(n) for n in data["category_names"]]
    colour_names = [str(n) for n in data["colour_names"]]
    summary = multiview.split_summary(data)
    tokenizer = captions_lib.build_tokenizer(category_names, colour_names, config.context_length)
    if jax.process_index() == 0:
        os.makedirs(workdir, exist_ok=True)
        first_object = [int(data["object_id"][np.argmax(data["category"] == c)]) for c in range(len(category_names))]
        num_canonical = summary["views_per_object"]["canonical"]
        views = list(range(min(4, num_canonical))) + list(range(num_canonical, config.views_per_object))[:8]
        multiview.save_grid_png(data, os.path.join(workdir, "multiview_grid.png"), objects=first_object, views=views)
        tokenizer.save(os.path.join(workdir, "vocab.json"))

    train_rows = training_rows(data)
    caption_index = data["category"] * len(colour_names) + data["colour"]
    train_arrays = {"image": data["image"][train_rows], "caption_index": caption_index[train_rows].astype(np.int32)}
    model = build_model(config, tokenizer.vocab_size)
    cfg = model.config

    def init_fn(key):
        images = jnp.zeros((1, cfg.vision.image_size, cfg.vision.image_size, 3), jnp.float32)
        return model.init(key, images, jnp.zeros((1, cfg.text.context_length), jnp.int32)), {}

    batches = ArrayBatches(train_arrays, batch_size=config.batch_size, seed=config.seed,
                           process_index=jax.process_index(), process_count=jax.process_count())
    state = train(
        workdir=workdir,
        init_fn=init_fn,
        loss_fn=make_loss_fn(model, captions_lib.caption_token_table(tokenizer, category_names, colour_names),
                             config.drop_colour_probability, config.max_shift),
        optimizer=make_optimizer(config),
        batches=batches,
        loop=loop_config(config),
        mesh=mesh,
        desc="clip_pretrain",
    ).state
    report = evaluate_zero_shot(model, state.params, tokenizer, data, config.eval_batch_size)
    if jax.process_index() == 0:
        _save_accuracy_plot(report, os.path.join(workdir, "zero_shot_by_view.png"))
    top1 = report["zero_shot_top1"]
    metrics = dict(report, viewpoint_ood_drop=top1["canonical"] - top1["viewpoint_ood"], splits=summary,
                   num_parameters=int(sum(np.size(p) for p in jax.tree.leaves(state.params))),
                   vocab_size=tokenizer.vocab_size)
    return {"metrics": metrics, "state": state, "tokenizer": tokenizer, "model": model}
