"""The multi-view dataset: generation, the on-disk cache (.npz, no pickle), selecting rows and summarising splits."""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from robust_jax.data.multiview import render
from robust_jax.data.multiview.catalogue import COLOUR_NAMES, category_names, make_object
from robust_jax.data.multiview.views import VIEW_KINDS, VIEW_SPLITS, backgrounds, sample_views

GENERATOR_VERSION = 1  # bump when rendering or objects change: it is part of the cache key


def _check_settings(num_objects_per_category, views_per_object, image_size, canonical_fraction, heldout_fraction):
    for name, value, low in (("num_objects_per_category", num_objects_per_category, 1),
                             ("views_per_object", views_per_object, 1), ("image_size", image_size, 8)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < low:
            raise ValueError(f"{name}={value!r} must be an integer >= {low}")
    if image_size > 256:
        raise ValueError(f"image_size={image_size} must be <= 256 (renders at 32-64 px are the intended use)")
    if not 0.0 <= canonical_fraction <= 1.0:
        raise ValueError(f"canonical_fraction={canonical_fraction!r} must be in [0, 1]")
    if not 0.0 <= heldout_fraction < 1.0:
        raise ValueError(f"heldout_fraction={heldout_fraction!r} must be in [0, 1)")


def default_cache_dir() -> Path:
    return Path(os.environ.get("ROBUST_JAX_CACHE", Path.home() / ".cache" / "robust_jax")) / "multiview"


def make_multiview_dataset(num_objects_per_category: int = 10, views_per_object: int = 24, image_size: int = 32,
                           seed: int = 0, cache_dir: str | os.PathLike | None = None, *,
                           canonical_fraction: float = 0.5, heldout_fraction: float = 0.2, use_cache: bool = True,
                           progress: bool = False) -> dict[str, np.ndarray]:
    """The multi-view set as a dict of arrays, one row per image (N = categories x objects x views):

    image uint8 (N, S, S, 3); category, object_id (unique over the set), view_index, colour (index into
    `colour_names`) int32; azimuth, elevation, roll, distance float32 (degrees / object radii); view_split int8
    (0 canonical, 1 viewpoint-OOD); view_kind int8 (index into `view_kinds`); heldout bool (object held out);
    caption str. Also the name tables category_names, colour_names, view_kinds, view_splits.

    Cached as `<cache_dir>/multiview_<settings hash>.npz` (default ~/.cache/robust_jax/multiview, or
    $ROBUST_JAX_CACHE/multiview); a cache hit returns exactly the arrays generated before.
    """
    _check_settings(num_objects_per_category, views_per_object, image_size, canonical_fraction, heldout_fraction)
    settings = dict(num_objects_per_category=int(num_objects_per_category), views_per_object=int(views_per_object),
                    image_size=int(image_size), seed=int(seed), canonical_fraction=float(canonical_fraction),
                    heldout_fraction=float(heldout_fraction), version=GENERATOR_VERSION,
                    categories=list(category_names()))
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
    path = Path(cache_dir if cache_dir is not None else default_cache_dir()) / (
        f"multiview_s{image_size}_o{num_objects_per_category}_v{views_per_object}_seed{seed}_{digest}.npz")
    if use_cache and path.exists():
        with np.load(path, allow_pickle=False) as stored:
            return {name: stored[name] for name in stored.files}
    data = _generate(**{k: v for k, v in settings.items() if k not in ("version", "categories")}, progress=progress)
    if use_cache:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp.npz")
        np.savez(temporary, **data)
        os.replace(temporary, path)  # atomic: a reader never sees a half-written file
    return data


def _generate(num_objects_per_category, views_per_object, image_size, seed, canonical_fraction, heldout_fraction,
              progress=False) -> dict[str, np.ndarray]:
    names = category_names()
    num_objects = len(names) * num_objects_per_category
    total = num_objects * views_per_object
    images = np.empty((total, image_size, image_size, 3), np.uint8)
    columns = {k: np.empty(total, dt) for k, dt in (
        ("category", np.int32), ("object_id", np.int32), ("view_index", np.int32), ("colour", np.int32),
        ("azimuth", np.float32), ("elevation", np.float32), ("roll", np.float32), ("distance", np.float32),
        ("view_split", np.int8), ("view_kind", np.int8), ("heldout", bool))}
    captions = []
    start_time, row = time.perf_counter(), 0
    num_heldout = int(round(heldout_fraction * num_objects_per_category))
    if heldout_fraction > 0 and num_objects_per_category >= 2:  # both sets non-empty whenever that is possible
        num_heldout = min(max(num_heldout, 1), num_objects_per_category - 1)
    for category_index, name in enumerate(names):
        heldout_ids = np.random.default_rng([seed, category_index, 0, 2]).permutation(
            num_objects_per_category)[:num_heldout]
        for index in range(num_objects_per_category):
            parts, colour_index = make_object(category_index, seed, index)
            view_rng = np.random.default_rng([seed, category_index, index, 1])
            views = sample_views(view_rng, views_per_object, canonical_fraction)
            background = backgrounds(view_rng, views_per_object, image_size)
            rendered = render.render_views(parts, views["azimuth"], views["elevation"], views["roll"],
                                           views["distance"], image_size=image_size, background=background)
            rows = slice(row, row + views_per_object)
            images[rows] = np.round(rendered * 255).astype(np.uint8)
            for key in ("azimuth", "elevation", "roll", "distance", "view_split", "view_kind"):
                columns[key][rows] = views[key]
            columns["category"][rows] = category_index
            columns["object_id"][rows] = category_index * num_objects_per_category + index
            columns["view_index"][rows] = np.arange(views_per_object)
            columns["colour"][rows] = colour_index
            columns["heldout"][rows] = index in heldout_ids
            captions += [f"a photo of a {COLOUR_NAMES[colour_index]} {name}"] * views_per_object
            row += views_per_object
        if progress:
            elapsed = time.perf_counter() - start_time
            eta = elapsed / row * (total - row)
            print(f"multiview: {row}/{total} images, {elapsed:.1f}s elapsed, ETA {eta:.1f}s", file=sys.stderr)
    return dict(image=images, **columns, caption=np.array(captions), category_names=np.array(names),
                colour_names=np.array(COLOUR_NAMES), view_kinds=np.array(VIEW_KINDS),
                view_splits=np.array(VIEW_SPLITS))


_TABLE_KEYS = ("category_names", "colour_names", "view_kinds", "view_splits")


def select(data: dict[str, np.ndarray], mask: np.ndarray) -> dict[str, np.ndarray]:
    """The rows where `mask` is True (name tables kept whole)."""
    return {k: (v if k in _TABLE_KEYS else v[mask]) for k, v in data.items()}


def split_summary(data: dict[str, np.ndarray]) -> dict:
    """Counts: images and objects per object split x view split, views per object by kind."""
    summary = {"images": int(len(data["image"])), "objects": int(len(np.unique(data["object_id"]))),
               "categories": int(len(np.unique(data["category"]))), "image_size": int(data["image"].shape[1])}
    for object_split, is_heldout in (("train", False), ("heldout", True)):
        rows = data["heldout"] == is_heldout
        summary[f"{object_split}_objects"] = int(len(np.unique(data["object_id"][rows])))
        for split_index, split_name in enumerate(VIEW_SPLITS):
            summary[f"{object_split}_{split_name}_images"] = int(np.sum(rows & (data["view_split"] == split_index)))
    first = data["object_id"] == data["object_id"][0]
    summary["views_per_object"] = {kind: int(np.sum(first & (data["view_kind"] == k)))
                                   for k, kind in enumerate(VIEW_KINDS)}
    return summary


