"""Zero-shot evaluation of the base and tuned models on the held-out objects of the multi-view set (never seen in
pre-training or tuning): canonical views, viewpoint-OOD views (overall and per kind), and a 2D-OOD set made of the
canonical views under three corruptions (colour shift, blur, noise), each image corrupted once per kind with a
generator keyed by (seed, kind, image), so the set is the same in every run.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import numpy as np

from robust_jax.data import multiview
from robust_jax.omniview import zero_shot

CORRUPTIONS = ("colour_shift", "blur", "noise")
# Severity, in units of [0, 1] intensities and of the image size: strong enough to cost accuracy, mild enough that a
# person still names the object.
COLOUR_GAIN_RANGE = (0.6, 1.4)  # per-channel gain
COLOUR_OFFSET = 0.15  # per-channel offset in [-0.15, 0.15]
BLUR_SIGMA_FRACTION = 1.0 / 32  # Gaussian blur sigma = image size / 32 (1 pixel at 32 px)
NOISE_SIGMA = 0.08


def gaussian_blur(image_HxWxC: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur (kernel radius ceil(3 sigma), normalised), edges replicated; float in, float out."""
    radius = max(1, int(np.ceil(3 * sigma)))
    offsets = np.arange(-radius, radius + 1)
    kernel = np.exp(-0.5 * (offsets / sigma) ** 2)
    kernel /= kernel.sum()
    padded = np.pad(image_HxWxC, ((radius, radius), (radius, radius), (0, 0)), mode="edge")
    height, width = image_HxWxC.shape[:2]
    rows = sum(w * padded[radius + o: radius + o + height] for o, w in zip(offsets, kernel))[:, :, :]
    return sum(w * rows[:, radius + o: radius + o + width] for o, w in zip(offsets, kernel))


def corrupt(image_HxWxC: np.ndarray, kind: str, rng: np.random.Generator) -> np.ndarray:
    """One uint8 image corrupted by `kind` (one of CORRUPTIONS)."""
    x = np.asarray(image_HxWxC, np.float64) / 255.0
    if kind == "colour_shift":
        gain = rng.uniform(*COLOUR_GAIN_RANGE, size=3)
        offset = rng.uniform(-COLOUR_OFFSET, COLOUR_OFFSET, size=3)
        x = x * gain + offset
    elif kind == "blur":
        x = gaussian_blur(x, BLUR_SIGMA_FRACTION * x.shape[0])
    elif kind == "noise":
        x = x + NOISE_SIGMA * rng.normal(size=x.shape)
    else:
        raise ValueError(f"corruption {kind!r} is unknown; allowed: {CORRUPTIONS}")
    return np.round(np.clip(x, 0.0, 1.0) * 255).astype(np.uint8)


def evaluation_set(data: dict[str, np.ndarray], seed: int, headline_view_kinds: Sequence[str] | None = None) -> dict:
    """{'image' uint8 (M, S, S, 3), 'label' (M,), 'object' (M,) the object_id each image shows, 'groups': {split:
    (M,) bool}, 'class_names'}: the held-out objects' views, then their canonical views corrupted by each kind in
    turn. groups['viewpoint_ood'] holds the OOD views of headline_view_kinds (default: every OOD kind),
    'viewpoint_ood_all' those of every kind, 'ood_<kind>' each kind's."""
    ood_kinds = [k for k in multiview.VIEW_KINDS if k != "canonical"]
    headline = ood_kinds if headline_view_kinds is None else list(headline_view_kinds)
    unknown = sorted(set(headline) - set(ood_kinds))
    if unknown:
        raise ValueError(f"headline_view_kinds {unknown} are not OOD view kinds; allowed: {ood_kinds}")
    heldout = data["heldout"]
    views = np.flatnonzero(heldout)
    canonical = np.flatnonzero(heldout & (data["view_split"] == multiview.CANONICAL))
    corrupted = [np.stack([corrupt(data["image"][row], kind, np.random.default_rng([seed, k, int(row)]))
                           for row in canonical]) for k, kind in enumerate(CORRUPTIONS)]
    images = np.concatenate([data["image"][views], *corrupted])
    labels = np.concatenate([data["category"][views]] + [data["category"][canonical]] * len(CORRUPTIONS))
    num_views, num_canonical = len(views), len(canonical)
    source = np.concatenate([np.zeros(num_views, int)] + [np.full(num_canonical, k + 1) for k in range(3)])
    kind = np.concatenate([data["view_kind"][views], np.full(len(CORRUPTIONS) * num_canonical, -1)])
    split = np.concatenate([data["view_split"][views], np.full(len(CORRUPTIONS) * num_canonical, -1)])
    headline_index = [multiview.VIEW_KINDS.index(k) for k in headline]
    groups = {"canonical": (source == 0) & (split == multiview.CANONICAL),
              "viewpoint_ood": (source == 0) & np.isin(kind, headline_index),
              "viewpoint_ood_all": (source == 0) & (split == multiview.VIEWPOINT_OOD)}
    for kind_index, kind_name in enumerate(multiview.VIEW_KINDS):
        if kind_name != "canonical":
            groups[f"ood_{kind_name}"] = (source == 0) & (kind == kind_index)
    groups["corrupted"] = source > 0
    for k, name in enumerate(CORRUPTIONS):
        groups[f"corrupted_{name}"] = source == k + 1
    objects = np.concatenate([data["object_id"][views]] + [data["object_id"][canonical]] * len(CORRUPTIONS))
    return {"image": images, "label": labels, "object": objects, "groups": groups,
            "class_names": [str(n) for n in data["category_names"]]}


def zero_shot_top1(encode_image: Callable, encode_text: Callable, tokenize: Callable, eval_set: dict,
                   templates: Sequence[str], batch_size: int, normalise: Callable) -> dict:
    """{'zero_shot_top1': {split: accuracy}, 'zero_shot_top5': ..., 'zero_shot_count': ..., 'top1_correct': (M,)
    bool per image of the set} of one model.

    encode_image(images) / encode_text(token_ids) are the model's (jitted) encoders with parameters bound;
    normalise turns the set's uint8 images into model inputs."""
    class_emb = zero_shot.class_text_embeddings(encode_text, tokenize, eval_set["class_names"], templates)
    image_emb = zero_shot.image_embeddings(lambda x: encode_image(normalise(x)), eval_set["image"], batch_size)
    report = zero_shot.zero_shot_report(image_emb, class_emb, eval_set["label"], eval_set["groups"])
    # Per image as well: the paired claims are judged per held-out object (study.paired_units).
    report["top1_correct"] = zero_shot.top_k_correct(image_emb, class_emb, np.asarray(eval_set["label"]), (1,))[1]
    return report


def bound_encoders(encode_image_fn: Callable, encode_text_fn: Callable, params) -> tuple[Callable, Callable]:
    """Jitted encoders with `params` bound, on one device (evaluation sets are small)."""
    params = jax.device_get(params)
    image_jit, text_jit = jax.jit(encode_image_fn), jax.jit(encode_text_fn)
    return (lambda images: np.asarray(image_jit(params, images))), (lambda ids: np.asarray(text_jit(params, ids)))
