"""Stage 1, the from-scratch CLIP: its loss against a direct computation, its augmentation, its data split and its
captions."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.ndimage

from robust_jax.configs import omniview as omniview_config
from robust_jax.core.checks import ConfigError
from robust_jax.data import multiview
from robust_jax.omniview import captions, study, tuning_data
from robust_jax.omniview import pretrain


def _log_softmax(x, axis):
    x = x - x.max(axis=axis, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=axis, keepdims=True))


def test_contrastive_loss_is_symmetric_infonce(key):
    image_key, text_key = jax.random.split(key)
    image = jax.random.normal(image_key, (6, 5))
    text = jax.random.normal(text_key, (6, 5))
    tokens = jnp.arange(6)[:, None] * jnp.ones((1, 4), jnp.int32)  # all captions different
    loss, accuracy = pretrain.contrastive_loss(image, text, jnp.log(10.0), tokens)
    i = np.asarray(image) / np.linalg.norm(image, axis=1, keepdims=True)
    t = np.asarray(text) / np.linalg.norm(text, axis=1, keepdims=True)
    logits = 10.0 * i @ t.T
    expected = -0.5 * (np.trace(_log_softmax(logits, 1)) + np.trace(_log_softmax(logits, 0))) / 6
    np.testing.assert_allclose(loss, expected, rtol=1e-5)
    np.testing.assert_allclose(accuracy, np.mean(np.argmax(logits, 1) == np.arange(6)))


def test_identical_captions_share_the_target_and_temperature_is_clamped():
    # Two images with the same caption, both texts identical: every split of the target between them costs the same.
    image = jnp.array([[1.0, 0.0], [0.0, 1.0]])
    text = jnp.array([[1.0, 1.0], [1.0, 1.0]])
    tokens = jnp.array([[2, 5, 9], [2, 5, 9]])
    loss, accuracy = pretrain.contrastive_loss(image, text, jnp.log(1000.0), tokens)
    np.testing.assert_allclose(loss, np.log(2.0), rtol=1e-6)  # uniform logits over 2 texts vs target (1/2, 1/2)
    assert float(accuracy) == 1.0
    # A temperature beyond 100 is clamped at 100.
    different = jnp.array([[2, 5, 9], [2, 6, 9]])
    loss_big, _ = pretrain.contrastive_loss(image, jnp.eye(2), jnp.log(1e6), different)
    loss_100, _ = pretrain.contrastive_loss(image, jnp.eye(2), jnp.log(100.0), different)
    np.testing.assert_allclose(loss_big, loss_100)


def test_diagonal_targets_ignore_identical_captions_and_the_temperature_can_go_unclamped(key):
    """The official tuning loss: CE against each pair's own caption in both directions (identical captions are
    negatives like any other), at the temperature as it is, even beyond 100."""
    image_key, text_key = jax.random.split(key)
    image = jax.random.normal(image_key, (5, 4))
    text = jax.random.normal(text_key, (5, 4))
    tokens = jnp.array([[2, 5, 9]] * 3 + [[2, 6, 9], [2, 7, 9]])  # three identical captions
    i = np.asarray(image, np.float64) / np.linalg.norm(image, axis=1, keepdims=True)
    t = np.asarray(text, np.float64) / np.linalg.norm(text, axis=1, keepdims=True)
    for scale in (10.0, 400.0):
        logits = scale * i @ t.T
        expected = -0.5 * (np.trace(_log_softmax(logits, 1)) + np.trace(_log_softmax(logits, 0))) / 5
        loss, accuracy = pretrain.contrastive_loss(image, text, jnp.log(scale), tokens, targets="diagonal",
                                                   clamp_logit_scale=False)
        np.testing.assert_allclose(loss, expected, rtol=1e-4)
        np.testing.assert_allclose(accuracy, np.mean(np.argmax(logits, 1) == np.arange(5)))
    same_caption, _ = pretrain.contrastive_loss(image, text, jnp.log(10.0), tokens)
    assert abs(float(same_caption) - float(pretrain.contrastive_loss(image, text, jnp.log(10.0), tokens,
                                                                     targets="diagonal")[0])) > 1e-3


def test_augment_flips_or_shifts_only(key):
    images = jax.random.normal(key, (16, 8, 8, 3))
    flipped_or_not = np.asarray(pretrain.augment_images(images, jax.random.key(1), max_shift=0))
    images = np.asarray(images)
    flips = [np.array_equal(out, original[:, ::-1]) for original, out in zip(images, flipped_or_not)]
    for original, out, flip in zip(images, flipped_or_not, flips):
        assert flip or np.array_equal(out, original)
    assert 0 < sum(flips) < 16
    # A shift moves the image content: some example matches its original only after undoing a translation.
    shifted = np.asarray(pretrain.augment_images(images, jax.random.key(2), max_shift=1))
    assert shifted.shape == images.shape
    for original, out in zip(images, shifted):
        candidates = [original, original[:, ::-1]]
        assert any(np.array_equal(out[1:-1, 1:-1], c[1 + dy:7 + dy, 1 + dx:7 + dx])
                   for c in candidates for dy in (-1, 0, 1) for dx in (-1, 0, 1))


def test_augment_rotation_is_the_documented_draw_against_scipy(key):
    """With pretrain_rotation_degrees > 0: flip (as without), then a rotation by U(-max, max) degrees from
    fold_in(key, 1), each image checked against scipy.ndimage.rotate (bilinear, edges extended)."""
    images = jax.random.uniform(key, (8, 12, 12, 3))
    augment_key = jax.random.key(3)
    out = np.asarray(pretrain.augment_images(images, augment_key, max_shift=0, max_rotation_degrees=40.0))
    flipped = np.asarray(pretrain.augment_images(images, augment_key, max_shift=0))
    angles = np.asarray(jax.random.uniform(jax.random.fold_in(augment_key, 1), (8,), minval=-40.0, maxval=40.0))
    assert np.abs(angles).max() > 5.0  # the draw rotates visibly
    for source, result, angle in zip(flipped, out, angles):
        expected = scipy.ndimage.rotate(source, float(angle), axes=(1, 0), reshape=False, order=1, mode="nearest")
        np.testing.assert_allclose(result, expected, atol=1e-5)


@pytest.mark.parametrize("targets", ["same_caption", "diagonal"])
def test_contrastive_floor_is_the_loss_of_a_model_that_tells_apart_every_distinct_caption(targets):
    # Captions 0,0,0,1,1,2 (copies 3,3,3,2,2,1): the floor is (3 log 3 + 2 log 2) / 6. Each image embeds as its
    # caption's text does and the temperature is high, so every image picks its caption's copies and nothing else:
    # the loss reaches the floor and no lower.
    caption_B = np.array([0, 0, 0, 1, 1, 2])
    token_ids = jnp.asarray(np.stack([[2, 3 + c, 9] for c in caption_B]), jnp.int32)
    floor = float(pretrain.contrastive_floor(token_ids))
    assert floor == pytest.approx((3 * np.log(3) + 2 * np.log(2)) / 6, rel=1e-6)
    text = jnp.asarray(np.eye(4)[caption_B], jnp.float32)
    loss, _ = pretrain.contrastive_loss(text, text, jnp.log(1e4), token_ids, targets=targets,
                                        clamp_logit_scale=False)
    assert float(loss) == pytest.approx(floor, abs=1e-4)
    noisy = text + 0.3 * jax.random.normal(jax.random.key(0), text.shape)  # images that mix captions up: above it
    assert float(pretrain.contrastive_loss(noisy, text, jnp.log(10.0), token_ids, targets=targets)[0]) > floor + 0.05


def test_training_rows_exclude_heldout_objects_and_ood_views(tmp_path):
    data = multiview.make_multiview_dataset(3, 8, 16, seed=0, cache_dir=tmp_path)
    rows = pretrain.training_rows(data)
    assert rows.sum() == multiview.split_summary(data)["train_canonical_images"] > 0
    assert not data["heldout"][rows].any()
    assert (data["view_split"][rows] == multiview.CANONICAL).all()
    assert set(data["object_id"][rows]).isdisjoint(data["object_id"][data["heldout"]])


def test_caption_table_covers_every_category_and_colour():
    names, colours = multiview.category_names(), multiview.COLOUR_NAMES
    tokenizer = captions.build_tokenizer(names, colours, context_length=16)
    table = captions.caption_token_table(tokenizer, names, colours)
    assert table.shape == (len(names) * len(colours), 2 * len(captions.TRAIN_TEMPLATES), 16)
    row = names.index("traffic cone") * len(colours) + colours.index("red")
    np.testing.assert_array_equal(table[row, 0], tokenizer("a photo of a red traffic cone")[0])
    np.testing.assert_array_equal(table[row, len(captions.TRAIN_TEMPLATES)], tokenizer("a photo of a traffic cone")[0])
    assert (table != 1).all()  # no unknown words in training captions


def test_category_free_captions_follow_the_table_and_name_no_category(tmp_path):
    names, colours = multiview.category_names(), multiview.COLOUR_NAMES
    tokenizer = captions.build_tokenizer(names, colours, context_length=16, generic=True)
    table = captions.caption_token_table(tokenizer, names, colours, generic=True)
    assert table.shape[0] == (len(names) + 1) * len(colours)
    row = captions.generic_caption_index(np.array([colours.index("red")]), len(names), len(colours))[0]
    assert row == len(names) * len(colours) + colours.index("red")
    np.testing.assert_array_equal(table[row, 0], tokenizer("a photo of a red object")[0])
    np.testing.assert_array_equal(table[row, len(captions.TRAIN_TEMPLATES)], tokenizer("a photo of a object")[0])
    np.testing.assert_array_equal(table[:len(names) * len(colours)],  # the category rows are the plain table's
                                  captions.caption_token_table(tokenizer, names, colours))
    # The tuning set: round(fraction * n) of the training objects' OOD views, and only those, lose their category.
    data = multiview.make_multiview_dataset(3, 8, 16, seed=0, cache_dir=tmp_path)
    kinds = ("below", "above", "behind", "rolled")
    plain = tuning_data.procedural_tuning_data(data, kinds, table)
    mixed = tuning_data.procedural_tuning_data(data, kinds, table, category_free_fraction=0.5, seed=3)
    rows = np.flatnonzero(~data["heldout"])  # the multi-view pairs: every view of the training objects
    np.testing.assert_array_equal(mixed.multiview["image"], data["image"][rows])
    changed = mixed.multiview["caption_index"] != plain.multiview["caption_index"]
    ood = data["view_split"][rows] == multiview.VIEWPOINT_OOD
    assert changed.sum() == round(0.5 * ood.sum()) and not changed[~ood].any()
    np.testing.assert_array_equal(mixed.multiview["caption_index"][changed],
                                  len(names) * len(colours) + data["colour"][rows][changed])
    np.testing.assert_array_equal(mixed.image_text["caption_index"], plain.image_text["caption_index"])
    again = tuning_data.procedural_tuning_data(data, kinds, table, category_free_fraction=0.5, seed=3)
    np.testing.assert_array_equal(again.multiview["caption_index"], mixed.multiview["caption_index"])
    with pytest.raises(ValueError, match="category-free rows"):
        tuning_data.procedural_tuning_data(data, kinds, table[:len(names) * len(colours)], 0.5)


def test_the_ceiling_trains_as_many_epochs_as_the_base_unless_told():
    config = omniview_config.get_config("cpu")  # 8 of 16 views canonical: twice the rows, twice the steps
    assert config.canonical_fraction * config.views_per_object == 8
    tokenizer = pretrain.build_tokenizer(config)
    assert pretrain.pretrain_training(config, None, tokenizer, every_view=True).loop.num_steps == \
        2 * config.pretrain_num_steps
    assert pretrain.pretrain_training(config, None, tokenizer).loop.num_steps == config.pretrain_num_steps
    config.ceiling_num_steps = 700
    assert pretrain.pretrain_training(config, None, tokenizer, every_view=True).loop.num_steps == 700


@pytest.mark.parametrize("field, value, message", [
    ("patch_size", 5, r"config\.image_size=16 .*divisible by config\.patch_size \(5\)"),
    ("heldout_fraction", 0.0, r"config\.heldout_fraction=0\.0 .*> 0"),
    ("pretrain_warmup_steps", 10_000, r"config\.pretrain_warmup_steps=10000 .*config\.pretrain_num_steps"),
    ("vision_heads", 7, r"config\.vision_width=32 .*divisible by config\.vision_heads"),
    ("pretrain_rotation_degrees", 200.0, r"config\.pretrain_rotation_degrees=200\.0 .*180"),
    ("ceiling_num_steps", -1, r"config\.ceiling_num_steps=-1 .*>= 0"),
    ("ceiling_num_steps", 1, r"config\.ceiling_num_steps=1 .*> config\.pretrain_warmup_steps \(1\)"),
    ("category_free_fraction", 1.5, r"config\.category_free_fraction=1\.5 .*<= 1"),
    ("headline_view_kinds", ("rolled", "canonical"), r"config\.headline_view_kinds\[1\]='canonical' .*one of"),
    ("headline_view_kinds", (), r"config\.headline_view_kinds=\(\) .*at least one"),
])
def test_bad_pretrain_config_is_refused(field, value, message):
    config = omniview_config.get_config("tiny")
    config[field] = value
    with pytest.raises(ConfigError, match=message):
        study.check_config(config, device_count=1)
