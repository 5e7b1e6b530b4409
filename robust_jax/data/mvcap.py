"""MVCap-style metadata: multi-view image-caption records, and plain 2D image-caption records.

A metadata file is either a JSON list of records or JSON lines (one record per line, blank lines skipped). Multi-view
records are {"path", "caption", "obj_id", "img_id"} (the MVCap layout of Omniview-Tuning); 2D records are
{"path", "caption"}. Extra fields are ignored. Image paths are relative to the folder holding the metadata file (an
absolute path stays as it is).

Everything is checked when the file is read, before any image is decoded: a record that is not an object, a missing
field, a field of the wrong type, a repeated (obj_id, img_id) pair or an image file that does not exist raises a
ValueError naming the record (0-based index, and line for JSON lines) and the field.

    views = load_mvcap_metadata("mvcap/metadata.jsonl")
    groups = group_views(views.obj_ids, max_views_per_object=100)   # rows_OxV, valid_OxV
    images = ImageFiles(views.paths, image_size=224)               # images[rows] -> float32 (B, 224, 224, 3)
"""

from __future__ import annotations

import dataclasses
import json
import numbers
import os
from collections.abc import Sequence

import numpy as np
from PIL import Image

MULTIVIEW_FIELDS = {"path": (str,), "caption": (str,), "obj_id": (str, int), "img_id": (str, int)}
IMAGE_CAPTION_FIELDS = {"path": (str,), "caption": (str,)}


@dataclasses.dataclass(frozen=True)
class ImageCaptions:
    """2D image-caption pairs; `paths` are resolved (absolute when the metadata path was)."""

    paths: list[str]
    captions: list[str]

    def __len__(self) -> int:
        return len(self.paths)


@dataclasses.dataclass(frozen=True)
class MultiViewCaptions:
    """Multi-view image-caption pairs, in file order; `paths` are resolved like ImageCaptions'."""

    paths: list[str]
    captions: list[str]
    obj_ids: list[str | int]
    img_ids: list[str | int]

    def __len__(self) -> int:
        return len(self.paths)


@dataclasses.dataclass(frozen=True)
class ViewGroups:
    """Views grouped by object in a padded layout: object o's views are dataset rows rows_OxV[o, :count_o], in
    dataset order; padding entries hold row 0 and valid_OxV False."""

    object_ids: list[str | int]
    rows_OxV: np.ndarray
    valid_OxV: np.ndarray

    @property
    def views_per_object(self) -> np.ndarray:
        return self.valid_OxV.sum(axis=1)


def read_records(metadata_path: str | os.PathLike) -> list[tuple[str, object]]:
    """(location, record) pairs from a JSON list or a JSON-lines file; location reads 'record i' or
    'record i (line n)'. Raises ValueError on malformed JSON (with the line) or an empty file."""
    metadata_path = os.fspath(metadata_path)
    if not os.path.isfile(metadata_path):
        raise FileNotFoundError(f"metadata file {metadata_path!r} does not exist")
    with open(metadata_path, encoding="utf-8") as f:
        text = f.read()
    if text.lstrip().startswith("["):
        try:
            records = json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(f"{metadata_path}: not valid JSON ({error})") from None
        located = [(f"record {i}", record) for i, record in enumerate(records)]
    else:
        located = []
        for line_number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{metadata_path}: line {line_number} is not valid JSON ({error.msg})") from None
            located.append((f"record {len(located)} (line {line_number})", record))
    if not located:
        raise ValueError(f"{metadata_path}: no records (expected a JSON list or JSON lines of objects)")
    return located


def _checked_records(metadata_path, fields: dict[str, tuple[type, ...]], check_files: bool) -> list[dict]:
    """The records' `fields` (path resolved), each with its "location" for later error messages."""
    folder = os.path.dirname(os.path.abspath(os.fspath(metadata_path)))
    records = []
    for location, record in read_records(metadata_path):
        where = f"{os.fspath(metadata_path)}: {location}"
        if not isinstance(record, dict):
            raise ValueError(f"{where} is a {type(record).__name__}; expected an object with fields {list(fields)}")
        for name, types in fields.items():
            if name not in record:
                raise ValueError(f"{where}: field {name!r} is missing (fields present: {sorted(record)})")
            value = record[name]
            # bool is an int subclass, and a float id such as 3.0 would group apart from 3: both refused.
            if isinstance(value, bool) or not isinstance(value, types):
                allowed = " or ".join(t.__name__ for t in types)
                raise ValueError(f"{where}: field {name!r} = {value!r} has type {type(value).__name__}; "
                                 f"expected {allowed}")
        if not record["path"]:
            raise ValueError(f"{where}: field 'path' is empty")
        resolved = os.path.join(folder, record["path"])
        if check_files and not os.path.isfile(resolved):
            raise ValueError(f"{where}: field 'path' = {record['path']!r} names an image file that does not exist "
                             f"(looked for {resolved})")
        records.append({**{name: record[name] for name in fields}, "path": resolved, "location": where})
    return records


def load_image_caption_metadata(metadata_path: str | os.PathLike, *, check_files: bool = True) -> ImageCaptions:
    """2D {path, caption} records; `check_files=False` skips the existence check (one stat per record)."""
    records = _checked_records(metadata_path, IMAGE_CAPTION_FIELDS, check_files)
    return ImageCaptions(paths=[r["path"] for r in records], captions=[r["caption"] for r in records])


def load_mvcap_metadata(metadata_path: str | os.PathLike, *, check_files: bool = True) -> MultiViewCaptions:
    """Multi-view {path, caption, obj_id, img_id} records; each (obj_id, img_id) pair may appear once."""
    records = _checked_records(metadata_path, MULTIVIEW_FIELDS, check_files)
    first_seen: dict[tuple, int] = {}
    for index, record in enumerate(records):
        view = (record["obj_id"], record["img_id"])
        if view in first_seen:
            raise ValueError(f"{record['location']}: field 'img_id' = {record['img_id']!r} repeats record "
                             f"{first_seen[view]} for obj_id {record['obj_id']!r}")
        first_seen[view] = index
    return MultiViewCaptions(paths=[r["path"] for r in records], captions=[r["caption"] for r in records],
                             obj_ids=[r["obj_id"] for r in records], img_ids=[r["img_id"] for r in records])


def group_views(obj_ids: Sequence, max_views_per_object: int | None = None) -> ViewGroups:
    """Rows grouped by object id, objects in order of first appearance, each object's views in dataset order.

    With `max_views_per_object`, only an object's first that many views are kept (Omniview-Tuning keeps at most 100
    per object in its max step); the rest are in no group.
    """
    if max_views_per_object is not None and (
            isinstance(max_views_per_object, bool) or not isinstance(max_views_per_object, numbers.Integral)
            or max_views_per_object < 1):
        raise ValueError(f"max_views_per_object={max_views_per_object!r} must be a positive integer or None")
    if len(obj_ids) == 0:
        raise ValueError("obj_ids is empty: there are no views to group")
    rows_of: dict = {}
    for row, obj_id in enumerate(obj_ids):
        key = obj_id.item() if isinstance(obj_id, np.generic) else obj_id
        rows_of.setdefault(key, []).append(row)
    if max_views_per_object is not None:
        rows_of = {key: rows[:max_views_per_object] for key, rows in rows_of.items()}
    width = max(len(rows) for rows in rows_of.values())
    rows_OxV = np.zeros((len(rows_of), width), np.int64)
    valid_OxV = np.zeros((len(rows_of), width), bool)
    for o, rows in enumerate(rows_of.values()):
        rows_OxV[o, :len(rows)] = rows
        valid_OxV[o, :len(rows)] = True
    return ViewGroups(object_ids=list(rows_of), rows_OxV=rows_OxV, valid_OxV=valid_OxV)


def load_image(path: str, image_size: int) -> np.ndarray:
    """One image as RGB float32 (image_size, image_size, 3) in [0, 1], resized (bilinear) to a square."""
    with Image.open(path) as image:
        resized = image.convert("RGB").resize((image_size, image_size), Image.Resampling.BILINEAR)
        return np.asarray(resized, np.float32) / 255.0


def _check_image_size(image_size) -> int:
    if isinstance(image_size, bool) or not isinstance(image_size, numbers.Integral) or image_size < 1:
        raise ValueError(f"image_size={image_size!r} must be a positive integer")
    return int(image_size)


def load_images(paths: Sequence[str], image_size: int) -> np.ndarray:
    """Images as float32 (N, image_size, image_size, 3) in [0, 1]."""
    image_size = _check_image_size(image_size)
    out = np.empty((len(paths), image_size, image_size, 3), np.float32)
    for i, path in enumerate(paths):
        out[i] = load_image(path, image_size)
    return out


class ImageFiles:
    """Images decoded on demand: `images[rows]` (an int or an integer array) loads those files only, so a dataset
    of millions of views never sits in memory. Works wherever an (N, H, W, 3) array indexed by rows would."""

    def __init__(self, paths: Sequence[str], image_size: int):
        self.paths = list(paths)
        self.image_size = _check_image_size(image_size)

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (len(self.paths), self.image_size, self.image_size, 3)

    def __getitem__(self, rows) -> np.ndarray:
        if isinstance(rows, numbers.Integral):
            return load_image(self.paths[rows], self.image_size)
        return load_images([self.paths[int(row)] for row in np.asarray(rows).reshape(-1)], self.image_size)
