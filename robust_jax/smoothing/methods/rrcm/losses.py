"""rRCM losses in the form core.train takes: `loss_fn(params, model_state, batch, key[, step])
-> (loss, (metrics, new_model_state))`, on a global batch {"image": (B, H, W, C) in [0, 1], ...}.

Pretraining (`make_pretrain_loss_fn`), data mapped to [-1, 1] (x = 2 * image - 1), loss = trajectory + instance:
  * trajectory consistency: N = curriculum.num_levels(step), one index i ~ U{0 .. N-2} and one eps ~ N(0, I) per
    batch; the online model sees x + t_i eps (told t_i), its stop-gradient copy sees x + t_{i+1} eps (t_{i+1} < t_i);
    InfoNCE (tau = 0.2) between their CLS features, in-batch negatives.
  * instance discrimination: two augmentations of each image, each noised at sigma_min (independent noise); the
    symmetric InfoNCE (contrastive.symmetric_info_nce) between the online projector outputs and those of the EMA target.
model_state = {"batch_stats": the online projector's BatchNorm statistics, "ema_params": the EMA target's parameters}.
The loss updates both: ema_params <- rate(step) * ema_params + (1 - rate(step)) * params, with params the step's
parameters before the optimizer update. The target runs in training mode (batch statistics); its statistics updates
are discarded. Under the trainer's micro-batches each micro-batch computes the same EMA update (the trainer averages
it), uses its own rows as negatives and draws its own level index (the key differs per micro-batch).

Views: `views(key, images_BxHxWxC) -> (view_1, view_2)` on [0, 1] images, each row augmented independently; the
default is views.ViewAugmentation() (the official recipe adapted to grey digits: crop, intensity jitter, blur with
probability 1.0 / 0.1, solarize on view 2).

Fine-tuning (`make_finetune_loss_fn`): a linear head on CLS; Gaussian noise std sigma on [0, 1] pixels, i.e. exactly
2 sigma on [-1, 1] data, while the model is told the level nearest to 2 sigma (as at certification); m = 2 copies,
cross-entropy + lambda KL(p_bar || p_i) + eta H(p_bar) -- smoothing/training.py's noise loss with an rRCM apply.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from robust_jax.smoothing.methods.rrcm.contrastive import TEMPERATURE, EmaRateSchedule, ema_update, info_nce, symmetric_info_nce
from robust_jax.smoothing.methods.rrcm.noise_schedule import (
    CERTIFICATION_NUM_LEVELS,
    SIGMA_MIN,
    DiscretisationCurriculum,
    level_sigma,
    sample_level_index,
    smoothing_level,
)
from robust_jax.smoothing.methods.rrcm.model import RRCMNet, load_pretrained
from robust_jax.smoothing.methods.rrcm.views import ViewAugmentation
from robust_jax.smoothing.training import make_noise_loss_fn


def to_signed_unit(images):
    """[0, 1] -> [-1, 1]."""
    return 2.0 * images - 1.0


def make_pretrain_init_fn(model: RRCMNet, image_shape: tuple[int, int, int]) -> Callable:
    """init_fn(key) -> (params, {"batch_stats", "ema_params"}) with the EMA target starting as a copy of params."""

    def init_fn(key):
        variables = model.init(key, jnp.zeros((2, *image_shape), jnp.float32), jnp.ones((2,), jnp.float32),
                               train=False, project=True)
        params = variables["params"]
        return params, {"batch_stats": variables["batch_stats"], "ema_params": jax.tree.map(jnp.copy, params)}

    return init_fn


def make_pretrain_loss_fn(
    model: RRCMNet,
    *,
    curriculum: DiscretisationCurriculum,
    ema_schedule: EmaRateSchedule,
    temperature: float = TEMPERATURE,
    views: Callable = ViewAugmentation(),
    view_sigma: float = SIGMA_MIN,
) -> Callable:
    """The rRCM pretraining loss_fn(params, model_state, batch, key, step, constants) (see the module docstring)."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature!r}")

    def forward(params, batch_stats, noisy_images, sigma, project, dropout_key):
        variables = {"params": params, "batch_stats": batch_stats}
        return model.apply(variables, noisy_images, sigma, train=True, project=project, mutable=["batch_stats"],
                           rngs={"dropout": dropout_key})

    def loss_fn(params, model_state, batch, key, step, constants):
        del constants
        images_BxHxWxC = batch["image"]
        batch_size = images_BxHxWxC.shape[0]
        x_BxHxWxC = to_signed_unit(images_BxHxWxC)
        level_key, noise_key, augment_key, *dropout_keys = jax.random.split(key, 6)
        batch_stats, ema_params = model_state["batch_stats"], model_state["ema_params"]
        # One draw for all the noise (cheaper to compile than several): rows [0, B) for the trajectory pair,
        # [B, 3B) for the two views.
        noise_3BxHxWxC = jax.random.normal(noise_key, (3 * batch_size, *x_BxHxWxC.shape[1:]), x_BxHxWxC.dtype)
        eps_BxHxWxC, view_noise_2BxHxWxC = noise_3BxHxWxC[:batch_size], noise_3BxHxWxC[batch_size:]

        # Trajectory consistency: adjacent levels of one noise draw. Both points go through one forward pass (no
        # BatchNorm on this path, so rows do not interact); the less noisy half is the stop-gradient target.
        num_levels = curriculum.num_levels(step)
        index = sample_level_index(level_key, num_levels)
        sigma_high, sigma_low = level_sigma(index, num_levels), level_sigma(index + 1, num_levels)
        pair_2BxHxWxC = jnp.concatenate([x_BxHxWxC + sigma_high * eps_BxHxWxC, x_BxHxWxC + sigma_low * eps_BxHxWxC])
        pair_sigma_2B = jnp.concatenate([jnp.full((batch_size,), sigma_high), jnp.full((batch_size,), sigma_low)])
        pair, _ = forward(params, batch_stats, pair_2BxHxWxC, pair_sigma_2B, False, dropout_keys[0])
        online_high, target_low = pair.features[:batch_size], jax.lax.stop_gradient(pair.features[batch_size:])
        trajectory_loss = info_nce(online_high, target_low, temperature)

        # Instance discrimination: two augmented views at the smallest level, online vs EMA target (both views in
        # one forward pass each).
        views_2BxHxWxC = to_signed_unit(jnp.concatenate(views(augment_key, images_BxHxWxC)))
        noisy_views = views_2BxHxWxC + view_sigma * view_noise_2BxHxWxC
        online_views, updates = forward(params, batch_stats, noisy_views, view_sigma, True, dropout_keys[1])
        target_views, _ = forward(ema_params, batch_stats, noisy_views, view_sigma, True, dropout_keys[2])
        online_p, target_p = online_views.projection, jax.lax.stop_gradient(target_views.projection)
        instance_loss = symmetric_info_nce(online_p[:batch_size], online_p[batch_size:], target_p[:batch_size],
                                           target_p[batch_size:], temperature)

        rate = ema_schedule(step)
        new_model_state = {"batch_stats": updates["batch_stats"],
                           "ema_params": ema_update(ema_params, params, rate)}
        metrics = {"trajectory_loss": trajectory_loss, "instance_loss": instance_loss,
                   "num_levels": jnp.asarray(num_levels, jnp.float32), "sigma_high": sigma_high, "ema_rate": rate}
        return trajectory_loss + instance_loss, (metrics, new_model_state)

    return loss_fn


def make_classifier_apply(model: RRCMNet, sigma: float, num_levels: int = CERTIFICATION_NUM_LEVELS) -> Callable:
    """apply_train(params, model_state, noisy_images) -> (logits, model_state) for noisy images on the [0, 1] scale
    (image + N(0, sigma^2)): mapped to [-1, 1], told the level nearest 2 sigma, classified from CLS."""
    if model.backbone.num_classes < 1:
        raise ValueError("the fine-tuning model needs a classification head: build it with num_classes >= 1")
    if model.backbone.dropout_rate > 0:
        raise ValueError(f"dropout_rate={model.backbone.dropout_rate!r}: the fine-tuning loss draws no dropout keys; "
                         "use dropout_rate=0")
    _, level = smoothing_level(sigma, num_levels)

    def apply_train(params, model_state, noisy_images):
        out = model.apply({"params": params}, to_signed_unit(noisy_images), level, train=True, project=False)
        return out.logits, model_state

    return apply_train


def make_finetune_init_fn(model: RRCMNet, image_shape: tuple[int, int, int], pretrained_params=None,
                          head_init_std: float = 0.0) -> Callable:
    """init_fn(key) -> (params, {}): fresh head-and-backbone parameters (no projector), with every parameter the
    pretrained tree also has taken from it (rrcm_model.load_pretrained); head_init_std > 0: the head's kernel drawn
    from a normal truncated at 2 standard deviations with that std (the official 2e-5), else zeros."""

    def init_fn(key):
        init_key, head_key = jax.random.split(key)
        params = model.init(init_key, jnp.zeros((1, *image_shape), jnp.float32), 1.0, project=False)["params"]
        if pretrained_params is not None:
            params = load_pretrained(params, pretrained_params)
        if head_init_std > 0:
            head = params["backbone"]["head"]
            kernel = head_init_std * jax.random.truncated_normal(head_key, -2.0, 2.0, head["kernel"].shape)
            params = {**params, "backbone": {**params["backbone"], "head": {
                **head, "kernel": kernel.astype(head["kernel"].dtype)}}}
        return params, {}

    return init_fn


def make_finetune_loss_fn(
    model: RRCMNet,
    *,
    sigma: float,
    num_levels: int = CERTIFICATION_NUM_LEVELS,
    consistency_lambda: float = 10.0,
    consistency_eta: float = 0.5,
    copies: int = 2,
    max_translation: int = 0,
) -> Callable:
    """The rRCM fine-tuning loss_fn(params, model_state, batch, key, step, constants) (see the module docstring)."""
    return make_noise_loss_fn(make_classifier_apply(model, sigma, num_levels), sigma=sigma,
                              consistency_lambda=consistency_lambda, consistency_eta=consistency_eta, copies=copies,
                              max_translation=max_translation)
