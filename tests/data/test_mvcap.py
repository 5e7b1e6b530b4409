"""MVCap-style metadata: reading, validation errors that name the record and field, grouping by object, images."""

import json
import os

import numpy as np
import pytest
from PIL import Image

from robust_jax.data import mvcap

COLOURS = [(255, 0, 0), (0, 128, 255), (10, 200, 30), (250, 250, 0), (90, 0, 90)]


def _write_png(path, colour, size=(8, 6)):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.new("RGB", size, colour).save(path)


def _write_jsonl(path, records):
    with open(path, "w") as f:
        for record in records:
            f.write(json.dumps(record) + "\n")


@pytest.fixture
def mvcap_folder(tmp_path):
    """Two objects, views interleaved in the file, images in per-object folders relative to the metadata."""
    records = []
    for row, (obj_id, img_id) in enumerate([("chair", 0), ("mug", 0), ("chair", 1), ("chair", 2), ("mug", 1)]):
        relative = f"{obj_id}/{img_id}.png"
        _write_png(str(tmp_path / relative), COLOURS[row])
        records.append({"path": relative, "caption": f"a photo of a {obj_id}", "obj_id": obj_id, "img_id": img_id,
                        "source": "test"})
    _write_jsonl(tmp_path / "metadata.jsonl", records)
    return tmp_path, records


def test_loads_records_with_paths_relative_to_the_metadata(mvcap_folder):
    folder, records = mvcap_folder
    views = mvcap.load_mvcap_metadata(folder / "metadata.jsonl")
    assert len(views) == 5
    assert views.paths == [os.path.join(str(folder), r["path"]) for r in records]
    assert views.captions == [r["caption"] for r in records]
    assert views.obj_ids == ["chair", "mug", "chair", "chair", "mug"] and views.img_ids == [0, 0, 1, 2, 1]


def test_json_list_and_json_lines_read_the_same(mvcap_folder):
    folder, records = mvcap_folder
    (folder / "metadata.json").write_text(json.dumps(records, indent=2))
    assert mvcap.load_mvcap_metadata(folder / "metadata.json") == mvcap.load_mvcap_metadata(
        folder / "metadata.jsonl")


def test_groups_views_by_object(mvcap_folder):
    folder, _ = mvcap_folder
    views = mvcap.load_mvcap_metadata(folder / "metadata.jsonl")
    groups = mvcap.group_views(views.obj_ids)
    assert groups.object_ids == ["chair", "mug"]
    np.testing.assert_array_equal(groups.valid_OxV, [[True, True, True], [True, True, False]])
    np.testing.assert_array_equal(groups.rows_OxV[groups.valid_OxV], [0, 2, 3, 1, 4])
    np.testing.assert_array_equal(groups.views_per_object, [3, 2])
    capped = mvcap.group_views(views.obj_ids, max_views_per_object=2)
    np.testing.assert_array_equal(capped.rows_OxV, [[0, 2], [1, 4]])
    assert capped.valid_OxV.all()
    with pytest.raises(ValueError, match="max_views_per_object=0 must be a positive integer"):
        mvcap.group_views(views.obj_ids, max_views_per_object=0)


def test_images_are_resized_rgb_in_unit_range(mvcap_folder, tmp_path):
    folder, _ = mvcap_folder
    views = mvcap.load_mvcap_metadata(folder / "metadata.jsonl")
    images = mvcap.load_images(views.paths, image_size=4)
    assert images.shape == (5, 4, 4, 3) and images.dtype == np.float32
    for row, colour in enumerate(COLOURS):  # a solid colour stays exact under bilinear resizing
        np.testing.assert_array_equal(images[row], np.broadcast_to(np.array(colour, np.float32) / 255, (4, 4, 3)))
    # A noise image already at the requested size comes back pixel for pixel; greyscale becomes RGB.
    noise = np.random.default_rng(0).integers(0, 256, size=(5, 5), dtype=np.uint8)
    Image.fromarray(noise, mode="L").save(tmp_path / "noise.png")
    loaded = mvcap.load_images([str(tmp_path / "noise.png")], image_size=5)[0]
    for channel in range(3):
        np.testing.assert_array_equal(loaded[..., channel], noise.astype(np.float32) / 255)
    lazy = mvcap.ImageFiles(views.paths, image_size=4)
    assert len(lazy) == 5 and lazy.shape == (5, 4, 4, 3)
    np.testing.assert_array_equal(lazy[np.array([3, 0])], images[[3, 0]])
    np.testing.assert_array_equal(lazy[2], images[2])
    with pytest.raises(ValueError, match="image_size=0 must be a positive integer"):
        mvcap.load_images(views.paths, image_size=0)


@pytest.mark.parametrize("change, message", [
    (lambda r: r.pop("obj_id"), r"record 2 \(line 3\): field 'obj_id' is missing"),
    (lambda r: r.update(caption=None), r"record 2 \(line 3\): field 'caption' = None has type NoneType; expected str"),
    (lambda r: r.update(img_id=1.5), r"record 2 \(line 3\): field 'img_id' = 1.5 has type float; expected str or int"),
    (lambda r: r.update(obj_id=True), r"record 2 \(line 3\): field 'obj_id' = True has type bool"),
    (lambda r: r.update(path="chair/9.png"),
     r"record 2 \(line 3\): field 'path' = 'chair/9.png' names an image file that does not exist"),
    (lambda r: r.update(img_id=0), r"record 2 \(line 3\): field 'img_id' = 0 repeats record 0 for obj_id 'chair'"),
])
def test_bad_records_are_named(mvcap_folder, change, message):
    folder, records = mvcap_folder
    change(records[2])
    _write_jsonl(folder / "bad.jsonl", records)
    with pytest.raises(ValueError, match=message):
        mvcap.load_mvcap_metadata(folder / "bad.jsonl")


def test_bad_files_are_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        mvcap.load_mvcap_metadata(tmp_path / "missing.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n\n")
    with pytest.raises(ValueError, match="no records"):
        mvcap.load_mvcap_metadata(tmp_path / "empty.jsonl")
    (tmp_path / "broken.jsonl").write_text('{"path": "a.png", "caption": "x"}\n\n{"path": \n')
    with pytest.raises(ValueError, match="line 3 is not valid JSON"):
        mvcap.load_image_caption_metadata(tmp_path / "broken.jsonl")
    (tmp_path / "list.json").write_text('[{"path": "a.png", "caption": "x"}, ["not", "an", "object"]]')
    with pytest.raises(ValueError, match="record 1 is a list; expected an object"):
        mvcap.load_image_caption_metadata(tmp_path / "list.json", check_files=False)


def test_image_caption_pairs(tmp_path):
    _write_png(str(tmp_path / "images" / "cat.png"), (1, 2, 3))
    _write_jsonl(tmp_path / "pairs.jsonl", [{"path": "images/cat.png", "caption": "a cat"},
                                            {"path": "images/dog.png", "caption": "a dog"}])
    with pytest.raises(ValueError, match=r"record 1 \(line 2\): field 'path' = 'images/dog.png' names an image"):
        mvcap.load_image_caption_metadata(tmp_path / "pairs.jsonl")
    pairs = mvcap.load_image_caption_metadata(tmp_path / "pairs.jsonl", check_files=False)
    assert pairs.captions == ["a cat", "a dog"]
    assert pairs.paths == [str(tmp_path / "images" / "cat.png"), str(tmp_path / "images" / "dog.png")]
