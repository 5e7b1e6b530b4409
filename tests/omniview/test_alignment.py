"""The max-step maths and L_VI, against direct numpy loops over objects and views."""

import numpy as np
import pytest

import jax

from robust_jax.omniview import alignment

EMBED_DIM = 6
VIEW_COUNTS = (8, 6, 7)  # padded to 8 views per object


def _unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _padded_objects(seed=0, view_counts=VIEW_COUNTS, width=8, dim=EMBED_DIM):
    """Views scattered around one direction per object (positive similarities, as for CLIP), padding filled with
    large opposite vectors: any leak of padding into a result would show."""
    rng = np.random.default_rng(seed)
    embeddings = np.zeros((len(view_counts), width, dim), np.float32)
    valid = np.zeros((len(view_counts), width), bool)
    for o, count in enumerate(view_counts):
        direction = rng.normal(size=dim)
        embeddings[o] = direction + 0.6 * np.linalg.norm(direction) * rng.normal(size=(width, dim)) / np.sqrt(dim)
        embeddings[o] *= rng.uniform(0.5, 3.0, size=(width, 1))  # unnormalised on purpose
        embeddings[o, count:] = -10 * direction
        valid[o, :count] = True
    return embeddings, valid


def _reference_weights(embeddings, valid, num_neighbours):
    weights = np.zeros(valid.shape)
    for o in range(valid.shape[0]):
        views = [v for v in range(valid.shape[1]) if valid[o, v]]
        inverse = {}
        for i in views:
            zi = embeddings[o, i] / np.linalg.norm(embeddings[o, i])
            similarities = []
            for j in views:
                if j != i:
                    zj = embeddings[o, j] / np.linalg.norm(embeddings[o, j])
                    similarities.append(float(zi @ zj))
            nearest = sorted(similarities, reverse=True)[:num_neighbours]
            inverse[i] = 1.0 / (sum(nearest) / len(nearest))
        total = sum(inverse.values())
        for i in views:
            weights[o, i] = inverse[i] / total
    return weights


def _reference_centres(embeddings, valid, num_neighbours):
    weights = _reference_weights(embeddings, valid, num_neighbours)
    centres = np.zeros((valid.shape[0], embeddings.shape[2]))
    for o in range(valid.shape[0]):
        for v in range(valid.shape[1]):
            if valid[o, v]:
                centres[o] += weights[o, v] * embeddings[o, v] / np.linalg.norm(embeddings[o, v])
    return centres


def _reference_hard_views(embeddings, centres, valid, num_hard):
    positions = np.zeros((valid.shape[0], num_hard), int)
    for o in range(valid.shape[0]):
        c = centres[o] / np.linalg.norm(centres[o])
        cosines = [(float(embeddings[o, v] @ c / np.linalg.norm(embeddings[o, v])), v)
                   for v in range(valid.shape[1]) if valid[o, v]]
        positions[o] = [v for _, v in sorted(cosines)[:num_hard]]
    return positions


@pytest.mark.parametrize("num_neighbours", [1, 3, 5])
def test_centre_weights_match_direct_loops(num_neighbours):
    embeddings, valid = _padded_objects()
    got = np.asarray(alignment.centre_weights(embeddings, valid, num_neighbours=num_neighbours))
    want = _reference_weights(embeddings, valid, num_neighbours)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(got[~valid], 0.0)
    np.testing.assert_allclose(got.sum(axis=1), 1.0, rtol=1e-6)
    # The weights are not uniform: the test would notice a mean taken over the wrong views.
    assert np.ptp(got[0]) > 1e-3
    single = alignment.centre_weights(embeddings[1, :6], num_neighbours=num_neighbours)
    np.testing.assert_allclose(np.asarray(single), want[1, :6], rtol=1e-5, atol=1e-7)


def test_centre_weights_vmap_over_objects():
    embeddings, valid = _padded_objects(seed=3)
    vmapped = jax.vmap(lambda e, m: alignment.centre_weights(e, m, num_neighbours=2))(embeddings, valid)
    np.testing.assert_allclose(np.asarray(vmapped), _reference_weights(embeddings, valid, 2), rtol=1e-5, atol=1e-7)


def test_object_centres_are_weighted_sums_not_renormalised():
    embeddings, valid = _padded_objects(seed=1)
    got = np.asarray(alignment.object_centres(embeddings, valid, num_neighbours=3))
    want = _reference_centres(embeddings, valid, 3)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert np.all(np.linalg.norm(got, axis=1) < 1 - 1e-3)  # a mean of unit vectors that disagree
    single = alignment.object_centres(embeddings[2, :7], num_neighbours=3)
    np.testing.assert_allclose(np.asarray(single), want[2], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("num_hard", [1, 3, 6])
def test_hard_views_are_the_least_similar_valid_views(num_hard):
    embeddings, valid = _padded_objects(seed=2)
    centres = _reference_centres(embeddings, valid, 3).astype(np.float32)
    positions, is_hard = alignment.hard_views(embeddings, centres, num_hard, valid)
    want = _reference_hard_views(embeddings, centres, valid, num_hard)
    np.testing.assert_array_equal(np.asarray(positions), want)
    want_mask = np.zeros(valid.shape, bool)
    for o in range(valid.shape[0]):
        want_mask[o, want[o]] = True
    np.testing.assert_array_equal(np.asarray(is_hard), want_mask)
    assert not np.any(np.asarray(is_hard) & ~valid)  # the padding points away from the centre: never chosen


def test_hard_views_single_object():
    embeddings, valid = _padded_objects(seed=4)
    centre = _reference_centres(embeddings, valid, 2)[0].astype(np.float32)
    positions, is_hard = alignment.hard_views(embeddings[0], centre, 2)
    want = _reference_hard_views(embeddings[:1], centre[None], valid[:1], 2)[0]
    np.testing.assert_array_equal(np.asarray(positions), want)
    assert np.asarray(is_hard).shape == (8,) and np.asarray(is_hard).sum() == 2


def _loss_inputs(seed=5, batch=7):
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(batch, EMBED_DIM)).astype(np.float32)
    centres = (z + rng.normal(size=(batch, EMBED_DIM))).astype(np.float32) * 0.4
    is_hard = np.array([True, False, True, True, False, False, True])[:batch]
    return z, centres, is_hard


@pytest.mark.parametrize("margin", [0.0, 0.3, 0.5])
def test_viewpoint_invariance_loss_matches_direct_mean(margin):
    z, centres, is_hard = _loss_inputs()
    terms = []
    for b in range(len(z)):
        if is_hard[b]:
            cosine = z[b] @ centres[b] / (np.linalg.norm(z[b]) * np.linalg.norm(centres[b]))
            terms.append(max(0.0, 1.0 - cosine + margin))
    got = alignment.viewpoint_invariance_loss(z, centres, is_hard, margin=margin)
    np.testing.assert_allclose(float(got), np.mean(terms), rtol=1e-6)


def test_viewpoint_invariance_loss_clips_at_zero():
    z = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)
    centres = np.array([[2.0, 0.0], [1.0, 1.0]], np.float32)  # cos 1 and 1/sqrt(2)
    got = alignment.viewpoint_invariance_loss(z, centres, np.array([True, True]), margin=0.0)
    np.testing.assert_allclose(float(got), (0.0 + 1 - 2**-0.5) / 2, rtol=1e-6)


def test_no_gradient_flows_into_the_centres():
    z, centres, is_hard = _loss_inputs()
    grad_z, grad_centres = jax.grad(alignment.viewpoint_invariance_loss, argnums=(0, 1))(z, centres, is_hard)
    assert np.all(np.asarray(grad_centres) == 0.0)
    grad_z = np.asarray(grad_z)
    assert np.all(grad_z[~is_hard] == 0.0)  # views outside the hard set get no alignment gradient
    assert np.all(np.abs(grad_z[is_hard]).sum(axis=1) > 0)


def test_loss_is_exactly_zero_without_hard_views():
    z, centres, _ = _loss_inputs()
    none_hard = np.zeros(len(z), bool)
    loss, grad_z = jax.value_and_grad(alignment.viewpoint_invariance_loss)(z, centres, none_hard)
    assert float(loss) == 0.0
    assert np.all(np.asarray(grad_z) == 0.0)


def test_loss_inside_jit():
    z, centres, is_hard = _loss_inputs()
    jitted = jax.jit(alignment.viewpoint_invariance_loss)
    np.testing.assert_allclose(float(jitted(z, centres, is_hard, 0.3)),
                               float(alignment.viewpoint_invariance_loss(z, centres, is_hard, 0.3)), rtol=1e-6)


def test_random_view_targets_pick_another_valid_view_uniformly(key):
    valid = np.array([[True, True, True, True, False, False],
                      [True, True, False, False, False, False],
                      [True, False, True, False, True, True]])  # padding in the middle too
    counts = np.zeros((3, 6, 6), int)
    for draw in range(300):
        targets = np.asarray(alignment.random_view_targets(jax.random.fold_in(key, draw), valid))
        for o in range(3):
            for v in range(6):
                counts[o, v, targets[o, v]] += 1
    for o in range(3):
        for v in range(6):
            if not valid[o, v]:
                assert counts[o, v, v] == 300  # padding points at itself
                continue
            others = [u for u in range(6) if valid[o, u] and u != v]
            assert counts[o, v, v] == 0 and counts[o, v].sum() == counts[o, v, others].sum()
            # Uniform over the others: each count ~ Binomial(300, 1/len(others)); 6 sigma is far out.
            p = 1 / len(others)
            sigma = np.sqrt(300 * p * (1 - p))
            assert np.all(np.abs(counts[o, v, others] - 300 * p) <= max(6 * sigma, 1e-9))


# --------------------------------------------------------------------------------------------------- bad input


def test_num_neighbours_must_be_below_every_objects_view_count():
    embeddings, valid = _padded_objects()
    with pytest.raises(ValueError, match=r"num_neighbours=6 .*at least 7 views per object; object 1 has 6"):
        alignment.centre_weights(embeddings, valid, num_neighbours=6)
    with pytest.raises(ValueError, match="num_neighbours=8"):
        alignment.object_centres(embeddings[0], num_neighbours=8)
    with pytest.raises(ValueError, match="num_neighbours=0 must be a positive integer"):
        alignment.centre_weights(embeddings, valid, num_neighbours=0)


def test_num_hard_larger_than_an_objects_views_is_refused():
    embeddings, valid = _padded_objects()
    centres = _reference_centres(embeddings, valid, 2).astype(np.float32)
    with pytest.raises(ValueError, match=r"num_hard=7 needs at least 7 views per object; object 1 has 6"):
        alignment.hard_views(embeddings, centres, 7, valid)
    with pytest.raises(ValueError, match="centres have shape"):
        alignment.hard_views(embeddings, centres[:2], 3, valid)


@pytest.mark.parametrize("margin", [-0.1, float("nan"), "0.3"])
def test_bad_margin_is_refused(margin):
    z, centres, is_hard = _loss_inputs()
    with pytest.raises(ValueError, match="margin="):
        alignment.viewpoint_invariance_loss(z, centres, is_hard, margin=margin)


def test_bad_shapes_are_refused():
    z, centres, is_hard = _loss_inputs()
    with pytest.raises(ValueError, match="expected \\(B, E\\)"):
        alignment.viewpoint_invariance_loss(z, centres[:3], is_hard)
    with pytest.raises(ValueError, match="is_hard_B has dtype"):
        alignment.viewpoint_invariance_loss(z, centres, is_hard.astype(np.float32))
    embeddings, valid = _padded_objects()
    with pytest.raises(ValueError, match="valid has shape"):
        alignment.centre_weights(embeddings, valid[:, :5])
    with pytest.raises(ValueError, match="expected \\(views, embed_dim\\)"):
        alignment.centre_weights(embeddings[0, 0])
    with pytest.raises(ValueError, match="at least 2 views per object; object 0 has 1"):
        alignment.random_view_targets(jax.random.key(0), np.array([[True, False], [True, True]]))
