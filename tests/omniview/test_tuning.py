"""Stage 2: the augmentation against numpy rotations and shifts, the min step's loss against a direct computation,
the epoch targets of the aligning variants, the mixed batches, and the paper preset's trainable-parameter count."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from robust_jax.configs import omniview as omniview_config
from robust_jax.core.mesh import make_data_mesh
from robust_jax.data.array_batches import ArrayBatches
from robust_jax.models import clip as clip_lib
from robust_jax.omniview import alignment, tuning
from robust_jax.omniview.augment import affine_warp
from robust_jax.omniview.tuning_params import count_tuning_parameters
from tests.requirements import require


@pytest.mark.parametrize("angle, k", [(90.0, 1), (-90.0, -1), (180.0, 2)])
def test_rotation_by_right_angles_is_rot90(angle, k):
    images = np.random.default_rng(0).uniform(size=(2, 7, 7, 3)).astype(np.float32)
    got = affine_warp(jnp.asarray(images), jnp.full((2,), angle), jnp.zeros((2, 2)))
    np.testing.assert_allclose(got, np.rot90(images, k, axes=(1, 2)), atol=1e-5)


def test_translation_moves_content_with_edges_replicated():
    images = np.random.default_rng(1).uniform(size=(1, 6, 5, 2)).astype(np.float32)
    down, right = 2, -1
    got = affine_warp(jnp.asarray(images), jnp.zeros((1,)), jnp.array([[down, right]], jnp.float32))
    rows = np.clip(np.arange(6) - down, 0, 5)
    cols = np.clip(np.arange(5) - right, 0, 4)
    np.testing.assert_allclose(got[0], images[0][rows][:, cols], atol=1e-6)


def _tiny_clip():
    config = omniview_config.get_config("tiny")
    model = clip_lib.CLIP(clip_lib.CLIPConfig(
        embed_dim=16,
        vision=clip_lib.CLIPVisionConfig(image_size=16, patch_size=8, width=16, layers=1, heads=2, mlp_dim=32),
        text=clip_lib.CLIPTextConfig(context_length=8, vocab_size=20, width=16, layers=1, heads=2, mlp_dim=32)))
    return config, model, clip_lib.init_params(model, jax.random.key(0))


def _log_softmax(x, axis):
    x = x - x.max(axis=axis, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=axis, keepdims=True))


@pytest.mark.parametrize("with_hard_views", [True, False])
def test_min_step_loss_is_itc_plus_lambda_vi(with_hard_views):
    config, model, base = _tiny_clip()
    config.max_rotation_degrees, config.max_translation = 0.0, 0.0  # identity warp: embeddings computable outside
    config.vi_weight, config.margin = 0.7, 0.3
    setup = tuning.setup_variant(tuning.VARIANTS["ovt"], model, base, config, None)
    trainable, _ = setup.init_fn(jax.random.key(1))
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (6, 16, 16, 3)).astype(np.uint8)
    tokens = np.array([[2, 5, 6, 19, 0, 0, 0, 0]] * 2 + [[2, 7, 19, 0, 0, 0, 0, 0]] * 2
                      + [[2, 8, 9, 19, 0, 0, 0, 0], [2, 10, 19, 0, 0, 0, 0, 0]], np.int32)
    rows = np.array([3, 0, 2, 1, -1, -1], np.int32)  # four multi-view rows, then two 2D pairs
    target_slot_N = np.array([1, -1, 0, -1] if with_hard_views else [-1] * 4, np.int32)
    targets_TxE = rng.normal(size=(2, 16)).astype(np.float32)
    batch = {"image": images, "row": rows, "example_id": np.arange(6, dtype=np.int32), "token_ids": tokens}
    constants = {"clip": base, "targets_TxE": targets_TxE, "target_slot_N": target_slot_N}
    loss, (metrics, _) = jax.jit(setup.loss_fn)(trainable, {}, batch, jax.random.key(2), 0, constants)

    params = tuning.with_base(setup, trainable)
    z = np.asarray(jax.jit(setup.tuned.encode_image)(params, tuning.normalise_images(jnp.asarray(images))),
                   np.float64)
    t = np.asarray(jax.jit(setup.tuned.encode_text)(params, tokens), np.float64)
    t /= np.linalg.norm(t, axis=1, keepdims=True)
    logits = np.exp(float(trainable["logit_scale"])) * z @ t.T
    same = (tokens[:, None, :] == tokens[None, :, :]).all(-1)
    target = same / same.sum(1, keepdims=True)
    itc = -0.5 * ((target * _log_softmax(logits, 1)).sum(1).mean() + (target * _log_softmax(logits.T, 1)).sum(1).mean())
    vi_terms = []
    for b, row in enumerate(rows):
        if row >= 0 and target_slot_N[row] >= 0:
            c = targets_TxE[target_slot_N[row]].astype(np.float64)
            vi_terms.append(max(0.0, 1 - z[b] @ c / np.linalg.norm(c) + 0.3))
    vi = np.mean(vi_terms) if vi_terms else 0.0
    assert len(vi_terms) == (2 if with_hard_views else 0)
    np.testing.assert_allclose(metrics["itc"], itc, rtol=1e-4)
    np.testing.assert_allclose(metrics["l_vi"], vi, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(loss, itc + 0.7 * vi, rtol=1e-4)
    assert float(metrics["aligned_views"]) == len(vi_terms)


def _grouped_images(num_objects=4, views=6, seed=0):
    rng = np.random.default_rng(seed)
    object_ids = np.repeat(np.arange(num_objects), views)
    order = rng.permutation(len(object_ids))
    images = rng.integers(0, 256, (len(object_ids), 2, 2, 2)).astype(np.uint8)
    return images, object_ids[order]


def _flatten_embed(params, images):
    return images.reshape(images.shape[0], -1).astype(jnp.float32) + params["offset"]


def test_random_view_targets_pick_k_views_and_other_views_of_the_same_object():
    config = omniview_config.get_config("tiny")
    config.num_hard_views, config.max_step_batch_size = 2, 8
    config.max_step_augment = False  # the views as they are: each target is one of them
    images, object_ids = _grouped_images()
    params = {"offset": jnp.float32(0.5)}
    mesh = make_data_mesh()
    got = tuning.epoch_targets(tuning.VARIANTS["random_views"], _flatten_embed, params, images, object_ids, epoch=0,
                               config=config, mesh=mesh)
    z = images.reshape(len(images), -1).astype(np.float64) + 0.5
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    slot = got["target_slot_N"]
    for obj in range(4):
        chosen = np.flatnonzero((object_ids == obj) & (slot >= 0))
        assert len(chosen) == 2
        for row in chosen:
            target = got["targets_TxE"][slot[row]]
            matches = [r for r in np.flatnonzero(object_ids == obj) if np.allclose(z[r], target, atol=1e-6)]
            assert matches and row not in matches
    again = tuning.epoch_targets(tuning.VARIANTS["random_views"], _flatten_embed, params, images, object_ids,
                                 epoch=0, config=config, mesh=mesh)
    later = tuning.epoch_targets(tuning.VARIANTS["random_views"], _flatten_embed, params, images, object_ids,
                                 epoch=1, config=config, mesh=mesh)
    np.testing.assert_array_equal(again["target_slot_N"], slot)
    assert not np.array_equal(later["target_slot_N"], slot)


def test_hard_centre_targets_are_the_max_step():
    config = omniview_config.get_config("tiny")
    config.num_hard_views, config.num_neighbours, config.max_step_batch_size = 2, 3, 8
    config.max_step_augment = False
    images, object_ids = _grouped_images()
    params = {"offset": jnp.float32(0.5)}
    got = tuning.epoch_targets(tuning.VARIANTS["ovt"], _flatten_embed, params, images, object_ids, epoch=0,
                               config=config, mesh=make_data_mesh())
    reference = alignment.max_step(_flatten_embed, params, images, object_ids, batch_size=8, num_neighbours=3,
                                   num_hard=2)
    np.testing.assert_array_equal(got["targets_TxE"], reference.centres_OxE)
    for o, hard_rows in enumerate(reference.hard_rows_OxK):
        assert set(np.flatnonzero(got["target_slot_N"] == o)) == set(hard_rows)
    assert (got["target_slot_N"] >= 0).sum() == 2 * 4


def test_mixed_batches_are_two_to_one_and_resume_from_their_state():
    multiview = {"row": np.arange(40, dtype=np.int32)}
    image_text = {"row": np.full(10, -1, np.int32)}
    batches = tuning.MixedBatches(ArrayBatches(multiview, batch_size=8, seed=0),
                                  ArrayBatches(image_text, batch_size=4, seed=1))
    for _ in range(3):
        next(batches)
    state = batches.get_state()
    expected = [next(batches)["row"] for _ in range(4)]
    assert all(len(b) == 12 and (b[:8] >= 0).all() and (b[8:] == -1).all() for b in expected)
    assert len(set(np.concatenate([b[:8] for b in expected[:2]]))) == 16  # no repeats within an epoch
    resumed = tuning.MixedBatches(ArrayBatches(multiview, batch_size=8, seed=0),
                                  ArrayBatches(image_text, batch_size=4, seed=1))
    resumed.set_state(state)
    for want in expected:
        np.testing.assert_array_equal(next(resumed)["row"], want)


def _vit_b32_parts():
    """Per-layer sizes of the paper's tuning parameters on ViT-B/32 (embedding 512, vision width 768, 12 blocks)."""
    e, width, blocks, mlp, rank = 512, 768, 12, 2048, 8
    viformer_layer = (e * 3 * e + 3 * e) + (e * e + e) + (e * mlp + mlp) + (mlp * e + e) + 2 * (2 * e)
    return {"viformer": 2 * viformer_layer, "lora": blocks * rank * (width + 3 * width), "logit_scale": 1}


@pytest.mark.parametrize("variant, parts", [
    ("ovt", ("viformer", "lora", "logit_scale")),
    ("lora_only", ("lora", "logit_scale")),
    ("viformer_only", ("viformer", "logit_scale")),
])
def test_paper_preset_trains_exactly_the_tuning_parameters(variant, parts):
    """Issue point 2: the paper preset's model, from shapes only (ViT-B/32): what the optimizer updates (every leaf
    of the trainable tree, each with Adam moments) is exactly VIFormer + LoRA + logit scale, 6,599,681 numbers for
    OVT; the backbone reaches the step only as a constant."""
    config = omniview_config.get_config("paper")
    clip_config = clip_lib.get_config(config.base_model_name)
    model = clip_lib.CLIP(clip_config)
    base = jax.eval_shape(lambda key: clip_lib.init_params(model, key), jax.random.key(0))
    setup = tuning.setup_variant(tuning.VARIANTS[variant], model, base, config, None, epoch_steps=1000)
    trainable, _ = jax.eval_shape(setup.init_fn, jax.random.key(0))
    assert set(trainable) == set(parts)
    sizes = {part: sum(int(np.prod(x.shape)) for x in jax.tree.leaves(trainable[part])) for part in parts}
    expected = _vit_b32_parts()
    assert sizes == {part: expected[part] for part in parts}
    if variant == "ovt":
        assert sum(sizes.values()) == 6_599_681 == count_tuning_parameters("ViT-B-32")["total"]
        assert expected["viformer"] == 6_304_768 and expected["lora"] == 294_912
    opt_state = jax.eval_shape(setup.optimizer.init, trainable)
    adam = next(s for s in jax.tree.leaves(opt_state, is_leaf=lambda s: hasattr(s, "mu")) if hasattr(s, "mu"))
    assert sum(int(np.prod(x.shape)) for x in jax.tree.leaves(adam.mu)) == sum(sizes.values())
    base_size = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(base))
    assert base_size > 100_000_000  # the frozen backbone is not among them


def test_full_ft_trains_every_clip_weight_as_a_delta_from_the_base():
    config, model, base = _tiny_clip()
    setup = tuning.setup_variant(tuning.VARIANTS["full_ft"], model, base, config, None)
    trainable, _ = setup.init_fn(jax.random.key(0))
    assert set(trainable) == {"clip_delta", "logit_scale"}
    assert jax.tree.structure(trainable["clip_delta"]) == jax.tree.structure(base)
    assert all(not np.any(leaf) for leaf in jax.tree.leaves(trainable["clip_delta"]))
    np.testing.assert_array_equal(  # a zero delta is the base model
        setup.tuned.clip_variables(tuning.with_base(setup, trainable))["params"]["visual"]["proj"],
        base["params"]["visual"]["proj"])
    shifted = jax.tree.map(lambda x: x + 0.01, trainable["clip_delta"])
    got = setup.tuned.clip_variables({"clip_delta": shifted, "clip": base})
    for x, y in zip(jax.tree.leaves(got), jax.tree.leaves(base), strict=True):
        np.testing.assert_allclose(x, np.asarray(y) + 0.01, rtol=1e-6)


@pytest.mark.parametrize("num_steps, epoch_steps", [(600, 180), (12, 4)])
def test_epoch_stepped_cosine_is_torch_cosine_annealing_stepped_once_per_epoch(num_steps, epoch_steps):
    """lr_schedule_unit='epoch' against the official schedule itself: torch's CosineAnnealingLR(T_max = epochs,
    eta_min = end_learning_rate), its step() called after each epoch's batches; the rate of an epoch holds for all
    of its steps (the last epoch may be short)."""
    torch = require("torch")
    config = omniview_config.get_config("cpu")
    config.num_steps, config.lr_schedule_unit = num_steps, "epoch"
    schedule = tuning.learning_rate_schedule(config, epoch_steps)
    epochs = -(-num_steps // epoch_steps)
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=config.learning_rate)
    annealing = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs, eta_min=config.end_learning_rate)
    expected = []
    for _ in range(epochs):
        expected += [optimizer.param_groups[0]["lr"]] * epoch_steps
        optimizer.step()
        annealing.step()
    got = [float(schedule(step)) for step in range(num_steps)]
    np.testing.assert_allclose(got, expected[:num_steps], rtol=1e-5)
    # The per-step default changes the rate within an epoch.
    config.lr_schedule_unit = "step"
    assert float(tuning.learning_rate_schedule(config)(1)) < float(tuning.learning_rate_schedule(config)(0))


def test_max_step_augment_embeds_each_view_rotated_and_moved_as_the_min_steps_do():
    """With max_step_augment the hard-centre targets are the max step over the views rotated and moved by the
    tuning augmentation, a draw per view and epoch from its own key (recomputed here with affine_warp from the same
    keys), the same whenever it is rerun and different from the un-augmented targets."""
    config = omniview_config.get_config("tiny")
    config.num_hard_views, config.num_neighbours, config.max_step_batch_size = 2, 3, 8
    config.max_step_augment, config.max_rotation_degrees, config.max_translation = True, 45.0, 0.1
    rng = np.random.default_rng(3)
    object_ids = np.repeat(np.arange(4), 6)[rng.permutation(24)]
    images = rng.integers(0, 256, (24, 6, 6, 3)).astype(np.uint8)
    params = {"offset": jnp.float32(0.5)}
    mesh = make_data_mesh()
    got = tuning.epoch_targets(tuning.VARIANTS["ovt"], _flatten_embed, params, images, object_ids, epoch=1,
                               config=config, mesh=mesh)
    key = tuning.max_step_augment_key(config.seed, 1)
    angles, shifts = [], []
    for row in range(len(images)):
        angle_key, shift_key = jax.random.split(jax.random.fold_in(key, row))
        angles.append(jax.random.uniform(angle_key, (), minval=-45.0, maxval=45.0))
        shifts.append(jax.random.uniform(shift_key, (2,), minval=-0.1, maxval=0.1) * 6)
    warped = np.asarray(affine_warp(jnp.asarray(images / 255.0, jnp.float32), jnp.stack(angles), jnp.stack(shifts)))
    reference = alignment.max_step(_flatten_embed, params, warped, object_ids, batch_size=8, num_neighbours=3,
                                   num_hard=2)
    np.testing.assert_allclose(got["targets_TxE"], reference.centres_OxE, atol=1e-6)
    for o, hard_rows in enumerate(reference.hard_rows_OxK):
        assert set(np.flatnonzero(got["target_slot_N"] == o)) == set(hard_rows)
    again = tuning.epoch_targets(tuning.VARIANTS["ovt"], _flatten_embed, params, images, object_ids, epoch=1,
                                 config=config, mesh=mesh)
    np.testing.assert_array_equal(again["targets_TxE"], got["targets_TxE"])
    config.max_step_augment = False
    plain = tuning.epoch_targets(tuning.VARIANTS["ovt"], _flatten_embed, params, images / 255.0, object_ids,
                                 epoch=1, config=config, mesh=mesh)
    assert np.abs(plain["targets_TxE"] - got["targets_TxE"]).max() > 1e-2
