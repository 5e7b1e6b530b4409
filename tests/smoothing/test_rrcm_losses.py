"""robust_jax/smoothing/methods/rrcm/losses.py and apply.py on a tiny ViT and 8x8x1 images: the pretraining loss is
finite with a finite gradient and updates the EMA target by the documented rule; both its terms recomputed in numpy
from the same draws, and its gradient equal to that with both targets held constant; the fine-tuning loss has its
closed form at a zero head and, with a trained head, its numpy value at the level nearest 2 sigma; the certification
apply_fn tells the model the level nearest 2 sigma and runs in sample_counts."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from robust_jax.smoothing import sample_counts
from robust_jax.smoothing.methods.rrcm.contrastive import EmaRateSchedule
from robust_jax.smoothing.methods.rrcm.noise_schedule import DiscretisationCurriculum
from robust_jax.smoothing.methods.rrcm.apply import rrcm_apply_fn
from robust_jax.smoothing.methods.rrcm.losses import (
    make_classifier_apply,
    make_finetune_init_fn,
    make_finetune_loss_fn,
    make_pretrain_init_fn,
    make_pretrain_loss_fn,
)

from . import numpy_losses
from .rrcm_tiny_model import IMAGE_SHAPE, init_key, tiny_rrcm_net

# Level nearest 2 * 0.25 = 0.5 among the 81 Karras levels (index 53), from the formula.
LEVEL_FOR_SIGMA_QUARTER = (80.0 ** (1 / 7) + 53 / 80 * (0.002 ** (1 / 7) - 80.0 ** (1 / 7))) ** 7


@pytest.fixture(scope="module")
def pretrained():
    model = tiny_rrcm_net()
    params, model_state = jax.jit(make_pretrain_init_fn(model, IMAGE_SHAPE))(init_key())
    return model, params, model_state


def _all_finite(tree):
    return all(np.all(np.isfinite(np.asarray(leaf))) for leaf in jax.tree.leaves(tree))


def test_pretrain_loss_is_finite_with_a_finite_gradient_and_updates_the_ema(pretrained, key):
    model, params, model_state = pretrained
    # An EMA target one unit away from the online parameters, so the update is visible.
    model_state = {**model_state, "ema_params": jax.jit(lambda tree: jax.tree.map(lambda p: p + 1.0, tree))(params)}
    loss_fn = make_pretrain_loss_fn(model, curriculum=DiscretisationCurriculum(total_steps=100),
                                    ema_schedule=EmaRateSchedule(total_steps=100))
    batch = {"image": jax.random.uniform(key, (8, *IMAGE_SHAPE))}
    (loss, (metrics, new_state)), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(
        params, model_state, batch, jax.random.fold_in(key, 1), jnp.int32(50), None)

    assert math.isfinite(float(loss))
    assert float(loss) == pytest.approx(float(metrics["trajectory_loss"] + metrics["instance_loss"]), rel=1e-6)
    # InfoNCE over 8 examples is at most about ln 8 + 2 / tau for unit vectors; a sanity range.
    assert 0 < float(metrics["trajectory_loss"]) < math.log(8) + 10
    assert _all_finite(grads)
    assert np.abs(np.asarray(grads["level_projection"]["kernel"])).max() > 0
    assert np.abs(np.asarray(grads["projector"]["fc3"]["kernel"])).max() > 0
    # Step 50 of 100: K' = ceil(100 / log2 5) = 44 and ceil(50 / 44) = 2 doublings, so N = 81; the official EMA rate
    # at half the run: m = sqrt((e^2 + s^2) / 2), c = 2 / (1 + exp(-15 (m - s) / (e - s))) - 1, rate = c e + (1 - c) s.
    assert float(metrics["num_levels"]) == 81
    s, e = 0.99, 0.9999
    c = 2 / (1 + math.exp(-15 * (math.sqrt((e ** 2 + s ** 2) / 2) - s) / (e - s))) - 1
    rate = c * e + (1 - c) * s
    assert float(metrics["ema_rate"]) == pytest.approx(rate, abs=1e-6)
    np.testing.assert_allclose(new_state["ema_params"]["backbone"]["pos_embed"],
                               params["backbone"]["pos_embed"] + rate, atol=1e-5)
    assert not np.allclose(new_state["batch_stats"]["projector"]["bn1"]["mean"],
                           model_state["batch_stats"]["projector"]["bn1"]["mean"])


def test_finetune_loss_at_a_zero_head_is_its_closed_form(pretrained, key):
    _, pretrained_params, _ = pretrained
    model = tiny_rrcm_net(num_classes=3)
    params, model_state = jax.jit(make_finetune_init_fn(model, IMAGE_SHAPE, pretrained_params))(init_key())
    np.testing.assert_array_equal(params["backbone"]["pos_embed"], pretrained_params["backbone"]["pos_embed"])
    assert "projector" not in params
    loss_fn = make_finetune_loss_fn(model, sigma=0.25, consistency_lambda=10.0, consistency_eta=0.5)
    batch = {"image": jax.random.uniform(key, (8, *IMAGE_SHAPE)), "label": jnp.arange(8) % 3}
    (loss, (metrics, _)), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(
        params, model_state, batch, jax.random.fold_in(key, 1), jnp.int32(0), None)
    # The head starts at zero: uniform predictions, CE = ln 3, KL = 0, entropy = ln 3.
    assert float(metrics["cross_entropy"]) == pytest.approx(math.log(3), rel=1e-5)
    assert float(metrics["consistency_kl"]) == pytest.approx(0.0, abs=1e-6)
    assert float(loss) == pytest.approx(1.5 * math.log(3), rel=1e-5)
    assert _all_finite(grads)
    assert np.abs(np.asarray(grads["backbone"]["head"]["kernel"])).max() > 0


def test_certification_apply_tells_the_model_the_level_nearest_two_sigma(key):
    model = tiny_rrcm_net(num_classes=3)
    params = jax.jit(lambda k: model.init(k, jnp.zeros((1, *IMAGE_SHAPE)), 1.0, project=False))(init_key())["params"]
    params["backbone"]["head"]["kernel"] = jax.random.normal(jax.random.fold_in(key, 1),
                                                             params["backbone"]["head"]["kernel"].shape)
    variables = {"params": params}
    apply_fn = rrcm_apply_fn(model, sigma=0.25)
    assert apply_fn.level == pytest.approx(LEVEL_FOR_SIGMA_QUARTER, rel=1e-12)
    assert apply_fn == rrcm_apply_fn(model, sigma=0.25) and hash(apply_fn) == hash(rrcm_apply_fn(model, sigma=0.25))

    inputs = np.asarray(jax.random.uniform(jax.random.fold_in(key, 2), (4, *IMAGE_SHAPE)))
    logits = jax.jit(apply_fn)(variables, inputs)
    direct = jax.jit(lambda v, x: model.apply(v, x, LEVEL_FOR_SIGMA_QUARTER, project=False).logits)(
        variables, 2 * inputs - 1)
    np.testing.assert_allclose(logits, direct, atol=1e-5)

    counts = sample_counts(apply_fn, variables, inputs[0], sigma=0.25, num_samples=16, batch_size=16,
                           key=jax.random.fold_in(key, 3))
    assert counts.shape == (3,) and counts.sum() == 16


def test_models_without_a_head_cannot_be_fine_tuned_or_certified():
    with pytest.raises(ValueError, match="num_classes >= 1"):
        make_classifier_apply(tiny_rrcm_net(), sigma=0.25)
    with pytest.raises(ValueError, match="num_classes >= 1"):
        rrcm_apply_fn(tiny_rrcm_net(), sigma=0.25)
    with pytest.raises(ValueError, match=r"sigma=50.0"):
        rrcm_apply_fn(tiny_rrcm_net(num_classes=3), sigma=50.0)


def _karras_np(index, num_levels):
    high, low = 80.0 ** (1 / 7), 0.002 ** (1 / 7)
    return (high + index / (num_levels - 1) * (low - high)) ** 7


def _flip_views(key, images):
    """Fixed views (the image and its mirror), so that the loss's terms can be recomputed without the augmentation."""
    del key
    return images, images[:, :, ::-1]


def _forward(model, tree, model_state, inputs, sigma, project, dropout_key):
    """One training-mode forward pass (batch statistics) of the rows given: CLS features or projections."""
    out, _ = model.apply({"params": tree, "batch_stats": model_state["batch_stats"]}, jnp.asarray(inputs, jnp.float32),
                         jnp.full((inputs.shape[0],), sigma, jnp.float32), train=True, project=project,
                         mutable=["batch_stats"], rngs={"dropout": dropout_key})
    return out.projection if project else out.features


@pytest.fixture(scope="module")
def pretrain_case(pretrained):
    """The pretraining loss at step 10 of 100 (41 levels) with an EMA target that differs from the online model."""
    model, params, model_state = pretrained
    offsets = jax.random.split(jax.random.key(7), len(jax.tree.leaves(params)))
    ema = jax.tree.unflatten(jax.tree.structure(params), [
        p + 0.05 * jax.random.normal(k, p.shape, p.dtype) for p, k in zip(jax.tree.leaves(params), offsets)])
    model_state = {**model_state, "ema_params": ema}
    loss_fn = make_pretrain_loss_fn(model, curriculum=DiscretisationCurriculum(total_steps=100),
                                    ema_schedule=EmaRateSchedule(total_steps=100), views=_flip_views)
    batch = {"image": jax.random.uniform(jax.random.key(8), (8, *IMAGE_SHAPE))}
    return model, params, model_state, loss_fn, batch, jax.random.key(9), jnp.int32(10)


def test_pretrain_loss_is_both_infonce_terms_recomputed_from_the_same_draws(pretrain_case):
    """Trajectory term: one noise draw at the adjacent levels (sigma_i, sigma_{i+1}) of the 41-level schedule, the
    noisier point as query; instance term: both views at sigma_min, online queries against the EMA target's keys,
    the two directions summed. Recomputed here from the loss's key split with separate forward passes and a float64
    InfoNCE; a swapped pair, separate noise per level, the online model as instance target or averaged directions
    each change the value."""
    model, params, model_state, loss_fn, batch, key, step = pretrain_case
    loss, (metrics, _) = jax.jit(loss_fn)(params, model_state, batch, key, step, None)

    level_key, noise_key, _, *dropout_keys = jax.random.split(key, 6)
    num_levels = 41  # step 10 of 100: K' = ceil(100 / log2 5) = 44, ceil(10 / 44) = 1 doubling of 20 levels, + 1
    index = int(jax.random.randint(level_key, (), 0, num_levels - 1))
    sigma_high, sigma_low = _karras_np(index, num_levels), _karras_np(index + 1, num_levels)
    assert float(metrics["sigma_high"]) == pytest.approx(sigma_high, rel=1e-5)
    images = np.asarray(batch["image"])
    noise = np.asarray(jax.random.normal(noise_key, (24, *IMAGE_SHAPE)))
    x, eps = 2 * images - 1, noise[:8]

    def features(tree, inputs, sigma, project):
        return _forward(model, tree, model_state, inputs, sigma, project, dropout_keys[0])

    trajectory = numpy_losses.info_nce(features(params, x + sigma_high * eps, sigma_high, False),
                              features(params, x + sigma_low * eps, sigma_low, False))
    views = np.concatenate([x, 2 * images[:, :, ::-1] - 1]) + 0.002 * noise[8:]
    online, target = features(params, views, 0.002, True), features(model_state["ema_params"], views, 0.002, True)
    instance = numpy_losses.info_nce(online[:8], target[8:]) + numpy_losses.info_nce(online[8:], target[:8])

    assert float(metrics["trajectory_loss"]) == pytest.approx(trajectory, rel=1e-4)
    assert float(metrics["instance_loss"]) == pytest.approx(instance, rel=1e-4)
    assert float(loss) == pytest.approx(trajectory + instance, rel=1e-4)


def test_pretrain_gradient_reaches_neither_target_branch(pretrain_case):
    """The gradient equals that of the same two terms with both targets (the less noisy trajectory point and the
    EMA target's projections) held as constants, and the EMA parameters get no gradient at all."""
    model, params, model_state, loss_fn, batch, key, step = pretrain_case
    grads, ema_grads = jax.jit(jax.grad(lambda p, ms: loss_fn(p, ms, batch, key, step, None)[0], argnums=(0, 1)))(
        params, model_state)
    assert all(not np.any(np.asarray(g)) for g in jax.tree.leaves(ema_grads["ema_params"]))

    # Targets as constants: the loss's own outputs split into the online queries (differentiated) and frozen keys.
    level_key, noise_key, _, *dropout_keys = jax.random.split(key, 6)
    index = jax.random.randint(level_key, (), 0, 40)
    sigma_high, sigma_low = _karras_np(int(index), 41), _karras_np(int(index) + 1, 41)
    noise = jax.random.normal(noise_key, (24, *IMAGE_SHAPE))
    x, eps = 2 * batch["image"] - 1, noise[:8]
    views = jnp.concatenate([x, 2 * batch["image"][:, :, ::-1] - 1]) + 0.002 * noise[8:]

    def forward(tree, inputs, sigma, project):
        return _forward(model, tree, model_state, inputs, sigma, project, dropout_keys[0])

    from robust_jax.smoothing.methods.rrcm.contrastive import info_nce

    frozen_low = forward(params, x + sigma_low * eps, sigma_low, False)
    frozen_target = forward(model_state["ema_params"], views, 0.002, True)

    def surrogate(p):
        online = forward(p, views, 0.002, True)
        return (info_nce(forward(p, x + sigma_high * eps, sigma_high, False), frozen_low)
                + info_nce(online[:8], frozen_target[8:]) + info_nce(online[8:], frozen_target[:8]))

    expected = jax.jit(jax.grad(surrogate))(params)
    for (path, got), want in zip(jax.tree_util.tree_leaves_with_path(grads), jax.tree.leaves(expected)):
        # float32 sums of many terms: a tolerance relative to the leaf's largest entry
        np.testing.assert_allclose(got, want, rtol=2e-3, atol=1e-4 * float(np.abs(want).max()) + 1e-8,
                                   err_msg=jax.tree_util.keystr(path))


def test_finetune_loss_with_a_trained_head_is_the_noise_loss_at_the_level_nearest_two_sigma(pretrained, key):
    """A non-zero head: the fine-tuning loss recomputed in numpy from its key split, with the model told the level
    nearest 2 sigma (the certification level) on [-1, 1] inputs; told the level nearest sigma instead, the same draws
    give another value, so a sigma vs 2 sigma mismatch between fine-tuning and certification shows."""
    _, pretrained_params, _ = pretrained
    model = tiny_rrcm_net(num_classes=3)
    params, _ = jax.jit(make_finetune_init_fn(model, IMAGE_SHAPE, pretrained_params, head_init_std=1.0))(init_key())
    loss_fn = make_finetune_loss_fn(model, sigma=0.25, consistency_lambda=10.0, consistency_eta=0.5)
    batch = {"image": jax.random.uniform(key, (8, *IMAGE_SHAPE)), "label": jnp.arange(8) % 3}
    step_key = jax.random.fold_in(key, 1)
    loss, _ = jax.jit(loss_fn)(params, {}, batch, step_key, jnp.int32(0), None)

    _, noise_key = jax.random.split(step_key)
    noisy = np.asarray(batch["image"])[None] + 0.25 * np.asarray(jax.random.normal(noise_key, (2, 8, *IMAGE_SHAPE)))

    def recomputed(level):
        logits = jax.jit(lambda x: model.apply({"params": params}, x, level, train=True, project=False).logits)(
            2 * noisy.reshape(16, *IMAGE_SHAPE) - 1)
        return numpy_losses.consistency_loss(np.asarray(logits).reshape(2, 8, 3), np.arange(8) % 3, 10.0, 0.5)

    at_two_sigma = recomputed(LEVEL_FOR_SIGMA_QUARTER)
    assert float(loss) == pytest.approx(at_two_sigma, rel=1e-5)
    level_nearest_sigma = _karras_np(np.argmin(np.abs(_karras_np(np.arange(81), 81) - 0.25)), 81)
    assert abs(recomputed(level_nearest_sigma) - at_two_sigma) > 50 * 1e-5 * at_two_sigma
