"""A PNG grid of an object's views, for looking at the data."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

def save_grid_png(data: dict[str, np.ndarray], path: str | os.PathLike, objects: Sequence[int] | None = None,
                  views: Sequence[int] | None = None, scale: int = 2, label: bool = True) -> Path:
    """A picture grid: one row per object id (default: the first object of every category), one column per view
    index (default: all, at most 12), each image enlarged `scale` times, the caption on the left."""
    from PIL import Image, ImageDraw

    if objects is None:
        objects = [int(data["object_id"][np.argmax(data["category"] == c)]) for c in np.unique(data["category"])]
    if views is None:
        views = range(min(12, int(data["view_index"].max()) + 1))
    views = list(views)
    size = data["image"].shape[1] * scale
    margin = 150 if label else 0
    grid = Image.new("RGB", (margin + len(views) * (size + 2), len(objects) * (size + 2)), (255, 255, 255))
    draw = ImageDraw.Draw(grid)
    for r, object_id in enumerate(objects):
        rows = np.nonzero(data["object_id"] == object_id)[0]
        if rows.size == 0:
            raise ValueError(f"object id {object_id} is not in the dataset")
        by_view = dict(zip(data["view_index"][rows].tolist(), rows.tolist()))
        if label:
            caption = str(data["caption"][rows[0]]).replace("a photo of a ", "")
            draw.text((4, r * (size + 2) + size // 2 - 5), caption, fill=(0, 0, 0))
        for c, view in enumerate(views):
            if view not in by_view:
                raise ValueError(f"view index {view} is not in the dataset (views_per_object too small)")
            tile = Image.fromarray(data["image"][by_view[view]]).resize((size, size), Image.NEAREST)
            grid.paste(tile, (margin + c * (size + 2), r * (size + 2)))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path)
    return path
