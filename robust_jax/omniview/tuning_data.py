"""The tuning stage's data: multi-view image-caption pairs and 2D image-caption pairs, as arrays that
`ArrayBatches` can index (numpy arrays, or objects that load rows on demand).

Procedural source (tiny and cpu presets): the training objects of the multi-view set (the held-out objects are never
touched), their canonical views plus the views of the kinds in `config.tune_view_kinds` as multi-view pairs, and their
canonical views as the 2D pairs; a share of the OOD views (`category_free_rows`) captioned without their category, as
web captions of odd views often are. MVCap source (paper preset): `{path, caption, obj_id, img_id}` records for the
multi-view pairs and `{path, caption}` records for the 2D pairs, decoded and tokenized batch by batch.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import numpy as np

from robust_jax.data import multiview
from robust_jax.data import mvcap
from robust_jax.omniview import captions as captions_lib

CATEGORY_FREE_STREAM = 0x63667265  # seeds the draw of the category-free views with (seed, this)


@dataclasses.dataclass
class TuningData:
    """multiview / image_text: {image, row, example_id, caption_index | token_ids}; object_ids: each multi-view
    row's object; caption_tokens_KxVxL: the procedural caption table (None for token_ids)."""

    multiview: dict
    image_text: dict
    object_ids: np.ndarray | list
    caption_tokens_KxVxL: np.ndarray | None

    @property
    def num_multiview_rows(self) -> int:
        return len(self.object_ids)


def tuning_view_kinds(tune_view_kinds: Sequence[str]) -> list[int]:
    """Indices into multiview.VIEW_KINDS of the tuned kinds; canonical views are always in."""
    return [multiview.VIEW_KINDS.index("canonical")] + [multiview.VIEW_KINDS.index(k) for k in tune_view_kinds]


def views_per_tuning_object(views_per_object: int, canonical_fraction: float, tune_view_kinds: Sequence[str]) -> int:
    """How many views each procedural tuning object has (every object has the same view kinds)."""
    kinds = multiview.sample_views(np.random.default_rng(0), views_per_object, canonical_fraction)["view_kind"]
    return int(np.isin(kinds, tuning_view_kinds(tune_view_kinds)).sum())


def category_free_rows(data: dict[str, np.ndarray], rows: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """round(fraction * n) of the n viewpoint-OOD views among `rows`, drawn without replacement from (seed,
    CATEGORY_FREE_STREAM): the views whose captions name no category."""
    ood = rows[data["view_split"][rows] == multiview.VIEWPOINT_OOD]
    count = int(round(fraction * len(ood)))
    return np.sort(np.random.default_rng([seed, CATEGORY_FREE_STREAM]).choice(ood, count, replace=False))


def procedural_tuning_data(data: dict[str, np.ndarray], tune_view_kinds: Sequence[str],
                           caption_tokens_KxVxL: np.ndarray, category_free_fraction: float = 0.0,
                           seed: int = 0) -> TuningData:
    """With category_free_fraction > 0, `caption_tokens_KxVxL` must hold the category-free rows
    (captions.caption_token_table(generic=True))."""
    training = ~data["heldout"]
    multiview_rows = np.flatnonzero(training & np.isin(data["view_kind"], tuning_view_kinds(tune_view_kinds)))
    image_text_rows = np.flatnonzero(training & (data["view_split"] == multiview.CANONICAL))
    num_categories, num_colours = len(data["category_names"]), len(data["colour_names"])
    caption_index = (data["category"] * num_colours + data["colour"]).astype(np.int32)
    if category_free_fraction > 0:
        if len(caption_tokens_KxVxL) != (num_categories + 1) * num_colours:
            raise ValueError("category_free_fraction > 0 needs the caption table's category-free rows "
                             "(captions.caption_token_table(..., generic=True))")
        free = category_free_rows(data, multiview_rows, category_free_fraction, seed)
        caption_index[free] = captions_lib.generic_caption_index(data["colour"][free], num_categories, num_colours)
    num_multiview = len(multiview_rows)

    def arrays(rows, row_ids, first_example_id):
        return {"image": data["image"][rows], "row": row_ids.astype(np.int32),
                "example_id": (first_example_id + np.arange(len(rows))).astype(np.int32),
                "caption_index": caption_index[rows]}

    return TuningData(
        multiview=arrays(multiview_rows, np.arange(num_multiview), 0),
        image_text=arrays(image_text_rows, np.full(len(image_text_rows), -1), num_multiview),
        object_ids=data["object_id"][multiview_rows],
        caption_tokens_KxVxL=caption_tokens_KxVxL)


class TokenizedCaptions:
    """captions[rows] -> token ids (len(rows), L) int32, tokenized when a batch asks for them."""

    def __init__(self, captions: Sequence[str], tokenize: Callable[[list[str]], np.ndarray]):
        self.captions, self.tokenize = list(captions), tokenize

    def __len__(self) -> int:
        return len(self.captions)

    def __getitem__(self, rows) -> np.ndarray:
        return np.asarray(self.tokenize([self.captions[int(r)] for r in np.asarray(rows).reshape(-1)]), np.int32)


def metadata_tuning_data(multiview_metadata: str, image_caption_metadata: str, image_size: int,
                         tokenize: Callable[[list[str]], np.ndarray]) -> TuningData:
    views = mvcap.load_mvcap_metadata(multiview_metadata)
    pairs = mvcap.load_image_caption_metadata(image_caption_metadata)
    num_multiview = len(views)

    def arrays(paths, captions, row_ids, first_example_id):
        return {"image": mvcap.ImageFiles(paths, image_size), "row": row_ids.astype(np.int32),
                "example_id": (first_example_id + np.arange(len(paths))).astype(np.int32),
                "token_ids": TokenizedCaptions(captions, tokenize)}

    return TuningData(
        multiview=arrays(views.paths, views.captions, np.arange(num_multiview), 0),
        image_text=arrays(pairs.paths, pairs.captions, np.full(len(pairs), -1), num_multiview),
        object_ids=list(views.obj_ids), caption_tokens_KxVxL=None)
