"""Procedural multi-view objects: determinism, cache, splits, view ranges; the ray caster's geometry and shading."""

import math

import numpy as np
import pytest
from PIL import Image

from robust_jax.data import multiview as mv
from robust_jax.data.multiview import dataset as multiview_dataset
from robust_jax.data.multiview import render
from robust_jax.data.multiview.render import Primitive

ALL_KINDS_SETTINGS = dict(num_objects_per_category=5, views_per_object=10, image_size=16, seed=7)


@pytest.fixture(scope="module")
def small_set():
    """24 categories x 5 objects x 10 views at 16 px: 1,200 images, about a second to render."""
    return mv.make_multiview_dataset(**ALL_KINDS_SETTINGS, use_cache=False)


def test_categories_and_captions(small_set):
    names = mv.category_names()
    assert len(names) >= 20 and len(set(names)) == len(names)
    assert tuple(small_set["category_names"]) == names
    for row in range(0, len(small_set["image"]), 37):
        colour = mv.COLOUR_NAMES[small_set["colour"][row]]
        assert small_set["caption"][row] == f"a photo of a {colour} {names[small_set['category'][row]]}"
    assert len(np.unique(small_set["colour"])) > 5  # colours vary across instances


def test_deterministic_by_seed():
    settings = dict(num_objects_per_category=1, views_per_object=4, image_size=16, use_cache=False)
    first = mv.make_multiview_dataset(seed=3, **settings)
    again = mv.make_multiview_dataset(seed=3, **settings)
    other = mv.make_multiview_dataset(seed=4, **settings)
    for name in first:
        np.testing.assert_array_equal(first[name], again[name], err_msg=name)
    assert np.mean(first["image"] != other["image"]) > 0.2
    assert not np.array_equal(first["azimuth"], other["azimuth"])
    # An instance depends only on (seed, category, index): asking for more objects keeps the first ones.
    more = mv.make_multiview_dataset(seed=3, **{**settings, "num_objects_per_category": 2})
    np.testing.assert_array_equal(more["image"][more["object_id"] % 2 == 0], first["image"])


def test_cache_hit_returns_the_same_arrays(tmp_path, monkeypatch):
    settings = dict(num_objects_per_category=1, views_per_object=2, image_size=16, seed=0, cache_dir=tmp_path)
    generated = mv.make_multiview_dataset(**settings)
    files = list(tmp_path.glob("multiview_*.npz"))
    assert len(files) == 1 and not list(tmp_path.glob(".*tmp*"))

    def must_not_run(*args, **kwargs):
        raise AssertionError("cache miss: the dataset was generated again")

    monkeypatch.setattr(multiview_dataset, "_generate", must_not_run)
    cached = mv.make_multiview_dataset(**settings)
    assert set(cached) == set(generated)
    for name in generated:
        np.testing.assert_array_equal(cached[name], generated[name], err_msg=name)
        assert cached[name].dtype == generated[name].dtype
    with pytest.raises(AssertionError, match="cache miss"):  # other settings: another file
        mv.make_multiview_dataset(**{**settings, "seed": 1})


def test_split_sizes_and_view_counts(small_set):
    summary = mv.split_summary(small_set)
    categories, objects, views = 24, 5, 10
    assert summary["categories"] == categories and summary["objects"] == categories * objects
    assert summary["images"] == categories * objects * views == len(small_set["caption"])
    assert summary["heldout_objects"] == categories and summary["train_objects"] == categories * (objects - 1)
    assert summary["views_per_object"] == {"canonical": 5, "below": 2, "above": 1, "behind": 1, "rolled": 1}
    assert summary["train_canonical_images"] == categories * (objects - 1) * 5
    assert summary["heldout_viewpoint_ood_images"] == categories * 5
    assert sum(v for k, v in summary.items() if k.endswith("_images")) == summary["images"]
    _, counts = np.unique(small_set["object_id"], return_counts=True)
    assert np.all(counts == views)
    assert small_set["image"].shape == (summary["images"], 16, 16, 3) and small_set["image"].dtype == np.uint8


def _check_view_ranges(views):
    kind = views["view_kind"]
    az, el, roll = views["azimuth"], views["elevation"], views["roll"]
    wrapped = (az + 180) % 360 - 180
    canonical, below, above, behind, rolled = (kind == k for k in range(5))
    assert np.array_equal(views["view_split"], (kind != 0).astype(np.int8))
    assert np.all(np.abs(wrapped[canonical | rolled]) <= 60)
    assert np.all((el[canonical | rolled] >= 0) & (el[canonical | rolled] <= 30))
    assert np.all(roll[~rolled] == 0)
    assert np.all((np.abs(roll[rolled]) >= 60) & (np.abs(roll[rolled]) <= 180))
    assert np.all((el[below] >= -90) & (el[below] <= -35))
    assert np.all((el[above] >= 60) & (el[above] <= 90))
    assert np.all(np.abs(wrapped[behind]) >= 135) and np.all((el[behind] >= -10) & (el[behind] <= 30))
    assert np.all((views["distance"] >= mv.DISTANCE_RANGE[0]) & (views["distance"] <= mv.DISTANCE_RANGE[1]))


def test_viewpoint_ranges_per_split(small_set):
    _check_view_ranges(small_set)
    views = mv.sample_views(np.random.default_rng(0), 2000, canonical_fraction=0.3)
    _check_view_ranges(views)
    assert np.sum(views["view_kind"] == 0) == 600
    below = views["azimuth"][views["view_kind"] == 1]
    assert below.min() < 30 and below.max() > 330  # from below/above: every azimuth


def test_heldout_objects_are_disjoint_from_training(small_set):
    heldout_ids = set(small_set["object_id"][small_set["heldout"]].tolist())
    train_ids = set(small_set["object_id"][~small_set["heldout"]].tolist())
    assert heldout_ids and train_ids and not heldout_ids & train_ids
    for category in range(24):  # one held-out object per category (round(0.2 * 5))
        rows = small_set["category"] == category
        assert len(np.unique(small_set["object_id"][rows & small_set["heldout"]])) == 1
    train = mv.select(small_set, ~small_set["heldout"])
    assert not set(train["object_id"].tolist()) & heldout_ids
    assert tuple(train["category_names"]) == mv.category_names()
    other_seed = mv.make_multiview_dataset(**{**ALL_KINDS_SETTINGS, "views_per_object": 1, "seed": 8},
                                           use_cache=False)
    assert not np.array_equal(other_seed["heldout"], small_set["heldout"][::10])  # the split is drawn by seed


def test_azimuth_is_periodic_and_silhouettes_stay_in_frame():
    views = dict(azimuth=[37.3, 37.3 + 360, -90.0, 0.0, 180.0, 10.0], elevation=[12.5, 12.5, 89.9, -90.0, 5.0, 20.0],
                 roll=[0.0, 0.0, 0.0, 0.0, 0.0, 170.0], distance=[mv.DISTANCE_RANGE[0]] * 6)
    for category in mv.category_names():
        parts, _ = mv.make_object(category, seed=0, index=0)
        images, hits = render.render_views(parts, **views, image_size=32, return_hit_mask=True)
        np.testing.assert_array_equal(images[0], images[1], err_msg=category)
        assert np.all(hits.sum(axis=(1, 2)) >= 8), (category, hits.sum(axis=(1, 2)))
        border = hits[:, [0, -1], :].any() or hits[:, :, [0, -1]].any()
        assert not border, f"{category} touches the frame border"


def test_sphere_shading_follows_lambert_cosine():
    """Every pixel of a white unit-albedo sphere against an independent ray-sphere computation."""
    size, radius, distance = 33, 0.6, 3.0
    sphere = [Primitive("ellipsoid", (radius, radius, radius), colour=(1.0, 1.0, 1.0))]
    for light_angle in (0.0, 60.0, 120.0):
        light = (math.sin(math.radians(light_angle)), 0.0, math.cos(math.radians(light_angle)))
        image, hits = render.render_views(sphere, 0.0, 0.0, 0.0, distance, image_size=size, light=light,
                                          return_hit_mask=True)
        # Camera at (distance, 0, 0) looking down -x: right = +y, up = +z, towards the viewer = +x.
        half = math.tan(math.radians(render.DEFAULT_FOV_DEGREES) / 2)
        coords = ((np.arange(size) + 0.5) / size * 2 - 1) * half
        u, v = np.meshgrid(coords, -coords)
        direction = np.stack([-np.ones_like(u), u, v], -1)
        direction /= np.linalg.norm(direction, axis=-1, keepdims=True)
        origin = np.array([distance, 0.0, 0.0])
        b = direction @ origin
        disc = b**2 - (origin @ origin - radius**2)
        expected_hits = disc >= 0
        t = -b - np.sqrt(np.maximum(disc, 0))
        normal = (origin + t[..., None] * direction) / radius
        light_world = np.array([light[2], light[0], light[1]])  # (towards viewer, right, up) -> (x, y, z)
        expected = render.AMBIENT + render.DIFFUSE * np.clip(normal @ light_world, 0, None)
        np.testing.assert_array_equal(hits[0], expected_hits)
        np.testing.assert_allclose(image[0][..., 0][expected_hits], expected[expected_hits], atol=1e-5)
        centre = image[0, size // 2, size // 2, 0]
        assert centre == pytest.approx(render.AMBIENT + render.DIFFUSE * max(0.0, math.cos(math.radians(
            light_angle))), abs=1e-5)


def test_primitive_shapes():
    """Holes, caps and tapering where the analytic shapes put them."""
    size = 31
    look_down = dict(azimuth=0.0, elevation=90.0, roll=0.0, distance=3.0, image_size=size, return_hit_mask=True)
    ring = [Primitive("torus", (0.6, 0.15), colour=(1.0, 0.0, 0.0))]
    _, hits = render.render_views(ring, **look_down)
    assert not hits[0, size // 2, size // 2] and hits[0].sum() > 50  # the hole of the doughnut
    bowl = [Primitive("ellipsoid", (0.8, 0.8, 0.4), colour=(1.0, 0.0, 0.0), clip=0.0, cap_colour=(0.0, 0.0, 1.0))]
    image, _ = render.render_views(bowl, **look_down)
    assert image[0, size // 2, size // 2, 2] > 0.5 and image[0, size // 2, size // 2, 0] == 0  # the blue opening
    cone = [Primitive("frustum", (0.7, 0.0, 0.7), colour=(1.0, 1.0, 1.0))]
    _, hits = render.render_views(cone, 0.0, 0.0, 0.0, 3.0, image_size=size, return_hit_mask=True)
    widths = hits[0].sum(axis=1)
    rows = np.nonzero(widths)[0]
    widest = int(np.argmax(widths))  # below it the base's rim curves away (seen slightly from above)
    assert rows[-1] - widest <= 3 and widths[widest] > 4 * widths[rows[0]]
    assert np.all(np.diff(widths[rows[0]:widest + 1]) >= 0)  # the apex is up: widths grow downwards
    box = [Primitive("box", (0.5, 0.5, 0.5), colour=(1.0, 1.0, 1.0))]
    image, hits = render.render_views(box, 0.0, 0.0, 0.0, 3.0, image_size=size, light=(0, 0, 1),
                                      return_hit_mask=True)
    assert np.allclose(image[0][hits[0]], 1.0)  # flat face facing the light and the camera
    # 0.5 / (3 - 0.5) of the half field of view, on each side of the centre
    expected_width = size * (0.5 / 2.5) / math.tan(math.radians(render.DEFAULT_FOV_DEGREES) / 2)
    assert abs(hits[0].sum(axis=1).max() - expected_width) <= 1.0


def test_grid_png_is_written(small_set, tmp_path):
    path = mv.save_grid_png(small_set, tmp_path / "grid.png", objects=[0, 5, 10], views=range(6), scale=2)
    with Image.open(path) as grid:
        assert grid.size == (150 + 6 * (32 + 2), 3 * (32 + 2))
        pixels = np.asarray(grid)
    assert pixels.std() > 10
    with pytest.raises(ValueError, match="object id 9999"):
        mv.save_grid_png(small_set, tmp_path / "bad.png", objects=[9999])


def test_bad_settings_name_the_field():
    with pytest.raises(ValueError, match="image_size=4"):
        mv.make_multiview_dataset(1, 1, image_size=4, use_cache=False)
    with pytest.raises(ValueError, match="views_per_object=0"):
        mv.make_multiview_dataset(1, 0, use_cache=False)
    with pytest.raises(ValueError, match="heldout_fraction=1.0"):
        mv.make_multiview_dataset(1, 1, heldout_fraction=1.0, use_cache=False)
    with pytest.raises(ValueError, match="kind='prism'"):
        Primitive("prism", (1.0,))
