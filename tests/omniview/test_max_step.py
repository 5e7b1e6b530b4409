"""The max step over a whole multi-view set: sharded over 8 devices it gives what one device gives, and both match
direct numpy loops over the embeddings."""

import jax
import numpy as np
import pytest

from robust_jax.core.mesh import make_data_mesh
from robust_jax.models import clip as clip_lib
from robust_jax.omniview import alignment

# 5 objects, view counts 7, 6, 9, 7, 6 (9 > max_views_per_object=8), rows of different objects interleaved.
VIEW_COUNTS = (7, 6, 9, 7, 6)
MAX_VIEWS = 8
NUM_NEIGHBOURS = 3
NUM_HARD = 2


@pytest.fixture(scope="module")
def tiny_clip():
    """The tiny CLIP's image tower (the text tower plays no part in the max step)."""
    config = clip_lib.get_config("tiny")
    image_tower = clip_lib.VisionTransformer(config.vision, config.embed_dim)
    variables = jax.jit(image_tower.init)(jax.random.key(0), np.zeros((1, 32, 32, 3), np.float32))
    return image_tower.apply, variables


@pytest.fixture(scope="module")
def multiview_set():
    rng = np.random.default_rng(0)
    object_ids = np.concatenate([[f"obj{o}"] * count for o, count in enumerate(VIEW_COUNTS)])
    order = rng.permutation(len(object_ids))
    object_ids = object_ids[order]
    # Views of one object share a base image, so their embeddings agree more than those of different objects.
    bases = {f"obj{o}": rng.normal(size=(32, 32, 3)) for o in range(len(VIEW_COUNTS))}
    images = np.stack([bases[obj] + 0.7 * rng.normal(size=(32, 32, 3)) for obj in object_ids]).astype(np.float32)
    return images, list(object_ids)


def _run(tiny_clip, multiview_set, mesh):
    embed_fn, variables = tiny_clip
    images, object_ids = multiview_set
    return alignment.max_step(embed_fn, variables, images, object_ids, mesh=mesh, batch_size=8, object_batch_size=8,
                              num_neighbours=NUM_NEIGHBOURS, num_hard=NUM_HARD, max_views_per_object=MAX_VIEWS)


def test_max_step_same_on_eight_devices_and_one(tiny_clip, multiview_set):
    assert jax.device_count() == 8
    eight = _run(tiny_clip, multiview_set, make_data_mesh())
    one = _run(tiny_clip, multiview_set, make_data_mesh(jax.devices()[:1]))
    assert eight.object_ids == one.object_ids
    np.testing.assert_allclose(eight.centres_OxE, one.centres_OxE, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(eight.hard_rows_OxK, one.hard_rows_OxK)
    np.testing.assert_array_equal(eight.is_hard_N, one.is_hard_N)
    np.testing.assert_array_equal(eight.object_index_N, one.object_index_N)


def test_max_step_matches_direct_loops(tiny_clip, multiview_set):
    embed_fn, variables = tiny_clip
    images, object_ids = multiview_set
    got = _run(tiny_clip, multiview_set, make_data_mesh())
    embeddings = np.asarray(jax.jit(embed_fn)(variables, images), np.float64)
    z = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)

    names = list(dict.fromkeys(object_ids))  # first appearance
    assert got.object_ids == names
    for o, name in enumerate(names):
        rows = [n for n in range(len(object_ids)) if object_ids[n] == name][:MAX_VIEWS]
        inverse = []
        for i in rows:
            nearest = sorted((z[i] @ z[j] for j in rows if j != i), reverse=True)[:NUM_NEIGHBOURS]
            inverse.append(NUM_NEIGHBOURS / sum(nearest))
        weights = np.array(inverse) / sum(inverse)
        centre = sum(w * z[i] for w, i in zip(weights, rows))
        np.testing.assert_allclose(got.centres_OxE[o], centre, rtol=1e-4, atol=1e-5)
        cosines = sorted((z[i] @ centre / np.linalg.norm(centre), i) for i in rows)
        np.testing.assert_array_equal(got.hard_rows_OxK[o], [i for _, i in cosines[:NUM_HARD]])
        for i in rows:
            assert got.object_index_N[i] == o
    dropped = [n for n in range(len(object_ids)) if object_ids[n] == "obj2"][MAX_VIEWS:]
    assert len(dropped) == 1 and got.object_index_N[dropped[0]] == -1 and not got.is_hard_N[dropped[0]]
    assert got.is_hard_N.sum() == NUM_HARD * len(VIEW_COUNTS)

    rows_B = np.array([got.hard_rows_OxK[3, 0], -1, dropped[0], 0])
    centres_BxE, is_hard_B = got.for_rows(rows_B)
    np.testing.assert_array_equal(centres_BxE[0], got.centres_OxE[3])
    np.testing.assert_array_equal(centres_BxE[1:3], 0.0)
    np.testing.assert_array_equal(centres_BxE[3], got.centres_OxE[got.object_index_N[0]])
    np.testing.assert_array_equal(is_hard_B, [True, False, False, got.is_hard_N[0]])


def test_max_step_bad_input(tiny_clip, multiview_set):
    embed_fn, variables = tiny_clip
    images, object_ids = multiview_set
    mesh = make_data_mesh()
    with pytest.raises(ValueError, match="batch_size=12 must be divisible by the number of devices in the mesh"):
        alignment.max_step(embed_fn, variables, images, object_ids, mesh=mesh, batch_size=12)
    with pytest.raises(ValueError, match=r"num_hard=7 needs at least 7 views per object; object 1 has 6"):
        alignment.max_step(embed_fn, variables, images, object_ids, mesh=mesh, batch_size=8, num_hard=7)
    with pytest.raises(ValueError, match=r"num_neighbours=6 .*object 1 has 6"):
        alignment.max_step(embed_fn, variables, images, object_ids, mesh=mesh, batch_size=8, num_neighbours=6)
    with pytest.raises(ValueError, match="one object id per image"):
        alignment.max_step(embed_fn, variables, images, object_ids[:-1], mesh=mesh, batch_size=8)
