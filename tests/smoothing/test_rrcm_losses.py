"""robust_jax/smoothing/rrcm_losses.py and rrcm_apply.py on a tiny ViT and 8x8x1 images: the pretraining loss is
finite with a finite gradient and updates the EMA target by the documented rule; the fine-tuning loss has its closed
form at a zero head; the certification apply_fn tells the model the level nearest 2 sigma and runs in sample_counts."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from robust_jax.smoothing import sample_counts
from robust_jax.smoothing.contrastive import EmaRateSchedule
from robust_jax.smoothing.noise_schedule import DiscretisationCurriculum
from robust_jax.smoothing.rrcm_apply import rrcm_apply_fn
from robust_jax.smoothing.rrcm_losses import (
    make_classifier_apply,
    make_finetune_init_fn,
    make_finetune_loss_fn,
    make_pretrain_init_fn,
    make_pretrain_loss_fn,
)

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
        params, model_state, batch, jax.random.fold_in(key, 1), jnp.int32(50))

    assert math.isfinite(float(loss))
    assert float(loss) == pytest.approx(float(metrics["trajectory_loss"] + metrics["instance_loss"]), rel=1e-6)
    # InfoNCE over 8 examples is at most about ln 8 + 2 / tau for unit vectors; a sanity range.
    assert 0 < float(metrics["trajectory_loss"]) < math.log(8) + 10
    assert _all_finite(grads)
    assert np.abs(np.asarray(grads["level_projection"]["kernel"])).max() > 0
    assert np.abs(np.asarray(grads["projector"]["fc3"]["kernel"])).max() > 0
    # Step 50 of 100: K' = floor(100 / log2 5) = 43, so N = 41; the EMA rate is half-way, (0.99 + 0.9999) / 2.
    assert float(metrics["num_levels"]) == 41
    rate = (0.99 + 0.9999) / 2
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
        params, model_state, batch, jax.random.fold_in(key, 1))
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
