"""robust_jax/smoothing/methods/denoised/denoiser.py (diffusion-denoised smoothing baseline): the linear DDPM schedule against a
Python loop, the denoising timestep against brute force, one-step denoising with an oracle noise predictor (exact
recovery) and with the freshly initialised U-Net (whose zero output layer reduces denoising to clipping), the
eps-prediction loss's value at initialisation and its zero for the oracle, the denoise-then-classify apply_fn, and
denoised_finetuned's loss recomputed from one-step-denoised noisy copies."""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from robust_jax.smoothing.methods.denoised.denoiser import (
    TinyUNet,
    alphas_cumprod_from,
    denoised_apply_fn,
    denoising_timestep,
    linear_beta_schedule,
    make_denoiser_init_fn,
    make_denoiser_loss_fn,
    one_step_denoise,
)

from .rrcm_tiny_model import init_key

IMAGE_SHAPE = (8, 8, 1)


@pytest.fixture(scope="module")
def alphas_cumprod():
    return alphas_cumprod_from(linear_beta_schedule())


def test_linear_schedule_matches_a_python_loop(alphas_cumprod):
    product, expected = 1.0, []
    for t in range(1000):
        product *= 1.0 - (1e-4 + t * (0.02 - 1e-4) / 999)
        expected.append(product)
    np.testing.assert_allclose(alphas_cumprod, expected, rtol=1e-10)


@pytest.mark.parametrize("sigma", [0.12, 0.25, 0.5, 1.0, 0.0137, 3.3])
def test_denoising_timestep_matches_brute_force(alphas_cumprod, sigma):
    best_t, best_gap = None, float("inf")
    for t, alpha_bar in enumerate(alphas_cumprod.tolist()):
        gap = abs(math.sqrt(1 - alpha_bar) / math.sqrt(alpha_bar) - 2 * sigma)
        if gap < best_gap:
            best_t, best_gap = t, gap
    assert denoising_timestep(sigma, alphas_cumprod) == best_t


@pytest.mark.parametrize("sigma", [100.0, 0.001])
def test_sigma_outside_the_diffusion_schedule_is_a_clear_error(alphas_cumprod, sigma):
    with pytest.raises(ValueError, match=rf"sigma={sigma!r} .* outside the diffusion schedule"):
        denoising_timestep(sigma, alphas_cumprod)


class _OracleNoisePredictor(nn.Module):
    """Predicts the exact eps that makes x_t = sqrt(a_t) x0 + sqrt(1 - a_t) eps for a known clean x0 (on [-1, 1])."""

    clean_signed: tuple
    alphas_cumprod: tuple

    def __call__(self, x_t, timesteps):
        alpha_bar = jnp.asarray(self.alphas_cumprod, jnp.float32)[timesteps][:, None, None, None]
        clean = jnp.asarray(self.clean_signed, jnp.float32).reshape(x_t.shape)
        return (x_t - jnp.sqrt(alpha_bar) * clean) / jnp.sqrt(1 - alpha_bar)


def test_one_step_denoising_with_an_oracle_recovers_the_image(alphas_cumprod, key):
    clean = np.asarray(jax.random.uniform(key, (2, *IMAGE_SHAPE)))
    noisy = clean + 0.25 * np.asarray(jax.random.normal(jax.random.fold_in(key, 1), clean.shape))
    timestep = 47
    oracle = _OracleNoisePredictor(tuple((2 * clean - 1).ravel().tolist()), tuple(alphas_cumprod.tolist()))
    denoised = jax.jit(lambda x: one_step_denoise(oracle, {}, x, timestep, float(alphas_cumprod[timestep])))(noisy)
    np.testing.assert_allclose(denoised, clean, atol=1e-4)


@pytest.fixture(scope="module")
def unet_and_params():
    model = TinyUNet(channels=16)
    params, _ = jax.jit(make_denoiser_init_fn(model, IMAGE_SHAPE))(init_key())
    return model, params


def test_fresh_unet_denoises_by_clipping(unet_and_params, alphas_cumprod, key):
    model, params = unet_and_params
    noisy = np.asarray(jax.random.uniform(key, (4, *IMAGE_SHAPE), minval=-0.5, maxval=1.5))
    timestep = denoising_timestep(0.5, alphas_cumprod)
    denoised = jax.jit(lambda p, x: one_step_denoise(model, {"params": p}, x, timestep,
                                                     float(alphas_cumprod[timestep])))(params, noisy)
    # conv_out is zero-initialised: eps_hat = 0, so x0_hat = 2 (x + delta) - 1, clipped, mapped back.
    np.testing.assert_allclose(denoised, np.clip(noisy, 0.0, 1.0), atol=1e-5)


def test_eps_loss_at_initialisation_is_the_noise_energy(unet_and_params, alphas_cumprod, key):
    model, params = unet_and_params
    loss_fn = make_denoiser_loss_fn(model, alphas_cumprod)
    batch = {"image": jax.random.uniform(key, (16, *IMAGE_SHAPE))}
    (loss, (metrics, _)), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(
        params, {}, batch, jax.random.fold_in(key, 1), 0, {})
    # eps_hat = 0 at initialisation: the loss is the mean of 1024 squared standard normals (mean 1, sd sqrt(2/1024)).
    assert abs(float(loss) - 1.0) < 6 * math.sqrt(2 / 1024)
    assert all(np.all(np.isfinite(np.asarray(g))) for g in jax.tree.leaves(grads))
    assert np.abs(np.asarray(grads["conv_out"]["kernel"])).max() > 0


def _mean_pixel_logits(classifier_params, images):
    means = images.reshape(images.shape[0], -1).mean(axis=1)
    return jnp.stack([means, classifier_params["offset"] - means], axis=-1)


def test_denoised_apply_fn_classifies_the_denoised_image(unet_and_params, alphas_cumprod, key):
    model, params = unet_and_params
    apply_fn = denoised_apply_fn(model, _mean_pixel_logits, 0.25, alphas_cumprod)
    assert apply_fn.timestep == denoising_timestep(0.25, alphas_cumprod)
    assert apply_fn.alpha_bar == pytest.approx(alphas_cumprod[apply_fn.timestep])
    assert hash(apply_fn) == hash(denoised_apply_fn(model, _mean_pixel_logits, 0.25, alphas_cumprod))
    inputs = np.asarray(jax.random.uniform(key, (3, *IMAGE_SHAPE), minval=-0.5, maxval=1.5))
    logits = jax.jit(apply_fn)({"denoiser": {"params": params}, "classifier": {"offset": 1.0}}, inputs)
    means = np.clip(inputs, 0, 1).reshape(3, -1).mean(axis=1)
    np.testing.assert_allclose(logits, np.stack([means, 1.0 - means], axis=-1), atol=1e-5)


def test_eps_loss_is_zero_for_the_oracle_and_not_for_a_wrong_schedule(alphas_cumprod, key):
    """The oracle knows the clean batch on [-1, 1] and the schedule (checked against a Python loop above), so the
    loss's x_t = sqrt(a_t) x0 + sqrt(1 - a_t) eps must give back its eps at every drawn t: the loss is 0 up to float32
    rounding. An oracle that believes another schedule (a_t^2, i.e. the signal scaled by a_t instead of sqrt(a_t))
    sees a loss far from 0, so a wrong sqrt(a_t), a missing [-1, 1] mapping or a network told another timestep than
    x_t's shows."""
    images = jax.random.uniform(key, (64, *IMAGE_SHAPE))
    batch = {"image": images}
    step_key = jax.random.fold_in(key, 1)

    def loss_with(oracle_alphas):
        oracle = _OracleNoisePredictor(tuple((2 * np.asarray(images) - 1).ravel().tolist()),
                                       tuple(np.asarray(oracle_alphas).tolist()))
        loss, _ = jax.jit(make_denoiser_loss_fn(oracle, alphas_cumprod))({}, {}, batch, step_key, 0, None)
        return float(loss)

    assert loss_with(alphas_cumprod) < 1e-6
    assert loss_with(alphas_cumprod ** 2) > 1e-2


def test_denoised_finetuning_classifies_the_one_step_denoised_noisy_copies(unet_and_params, alphas_cumprod, key):
    """denoised_finetuned's loss recomputed from its key split: the noisy copies x + sigma delta, denoised by
    x0_hat = clip((x_t - sqrt(1 - a) eps_hat) / sqrt(a), -1, 1) at x_t = sqrt(a) (2 (x + sigma delta) - 1), mapped
    to [0, 1], then a linear classifier and the consistency loss in numpy. The U-Net's output layer is drawn at
    random, so eps_hat is not 0 and the denoising is more than clipping."""
    from robust_jax.smoothing.methods.denoised.method import make_denoised_finetune_loss_fn

    from . import numpy_losses

    model, params = unet_and_params
    params = {**params, "conv_out": {"kernel": 0.3 * jax.random.normal(key, params["conv_out"]["kernel"].shape),
                                     "bias": params["conv_out"]["bias"]}}
    sigma = 0.25
    timestep = denoising_timestep(sigma, alphas_cumprod)
    alpha_bar = float(alphas_cumprod[timestep])
    weights = jax.random.normal(jax.random.fold_in(key, 1), (64, 3))

    def classifier_apply_train(classifier_params, state, images):
        return images.reshape(images.shape[0], -1) @ classifier_params["w"], state

    loss_fn = make_denoised_finetune_loss_fn(classifier_apply_train, model, sigma=sigma, timestep=timestep,
                                             alpha_bar=alpha_bar, consistency_lambda=10.0, consistency_eta=0.5,
                                             copies=2, max_translation=0)
    batch = {"image": jax.random.uniform(jax.random.fold_in(key, 2), (8, *IMAGE_SHAPE)), "label": jnp.arange(8) % 3}
    step_key = jax.random.fold_in(key, 3)
    loss, _ = jax.jit(loss_fn)({"w": weights}, {}, batch, step_key, jnp.int32(0), {"params": params})

    _, noise_key = jax.random.split(step_key)
    noisy = (np.asarray(batch["image"])[None]
             + sigma * np.asarray(jax.random.normal(noise_key, (2, 8, *IMAGE_SHAPE)))).reshape(16, *IMAGE_SHAPE)
    x_t = math.sqrt(alpha_bar) * (2 * noisy - 1)
    eps_hat = np.asarray(jax.jit(model.apply)({"params": params}, x_t, jnp.full((16,), timestep)), np.float64)
    assert np.abs(eps_hat).max() > 0.1
    denoised = (np.clip((x_t - math.sqrt(1 - alpha_bar) * eps_hat) / math.sqrt(alpha_bar), -1, 1) + 1) / 2
    logits = (denoised.reshape(16, -1) @ np.asarray(weights, np.float64)).reshape(2, 8, 3)
    assert float(loss) == pytest.approx(numpy_losses.consistency_loss(logits, np.arange(8) % 3, 10.0, 0.5), rel=1e-5)
    raw = (noisy.reshape(16, -1) @ np.asarray(weights, np.float64)).reshape(2, 8, 3)
    assert abs(numpy_losses.consistency_loss(raw, np.arange(8) % 3, 10.0, 0.5) - float(loss)) > 1e-3 * float(loss)
