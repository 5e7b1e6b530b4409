"""The noise-training loss: plain cross-entropy on noisy copies, and Jeong & Shin's consistency terms checked
against a direct numpy computation."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
from scipy.special import log_softmax, softmax

from robust_jax.smoothing.training import make_noise_loss_fn, noisy_copies


def _linear_apply(params, model_state, images):
    return images.reshape(images.shape[0], -1) @ params, model_state


def test_plain_noise_loss_is_cross_entropy_on_one_noisy_copy(key):
    params = jax.random.normal(key, (6, 4))
    batch = {"image": jax.random.uniform(jax.random.fold_in(key, 1), (5, 6)), "label": jnp.array([0, 1, 2, 3, 0])}
    loss, (metrics, _) = make_noise_loss_fn(_linear_apply, sigma=0.3)(params, {}, batch, jax.random.fold_in(key, 2), 0, {})
    noisy = noisy_copies(jax.random.split(jax.random.fold_in(key, 2))[1], batch["image"], 0.3, 1)[0]
    expected = optax.softmax_cross_entropy_with_integer_labels(noisy @ params, batch["label"]).mean()
    np.testing.assert_allclose(loss, expected, rtol=1e-6)
    assert "consistency_kl" not in metrics


def test_consistency_terms_match_numpy(key):
    params = np.asarray(jax.random.normal(key, (6, 4)))
    images = np.asarray(jax.random.uniform(jax.random.fold_in(key, 1), (5, 6)))
    labels = np.array([0, 1, 2, 3, 0])
    step_key = jax.random.fold_in(key, 2)
    loss_fn = make_noise_loss_fn(_linear_apply, sigma=0.5, consistency_lambda=10.0, consistency_eta=0.5, copies=3)
    loss, (metrics, _) = loss_fn(jnp.asarray(params), {}, {"image": images, "label": labels}, step_key, 0, {})

    noisy = np.asarray(noisy_copies(jax.random.split(step_key)[1], jnp.asarray(images), 0.5, 3), np.float64)
    logits = noisy @ params  # (3, 5, 4)
    log_p = log_softmax(logits, axis=-1)
    ce = -np.mean(np.take_along_axis(log_p, labels[None, :, None], axis=-1))
    p_bar = softmax(logits, axis=-1).mean(0)
    kl = np.mean(np.sum(p_bar[None] * (np.log(p_bar)[None] - log_p), axis=-1))
    entropy = np.mean(-np.sum(p_bar * np.log(p_bar), axis=-1))
    np.testing.assert_allclose(metrics["consistency_kl"], kl, rtol=1e-4)
    np.testing.assert_allclose(metrics["entropy"], entropy, rtol=1e-5)
    np.testing.assert_allclose(loss, ce + 10.0 * kl + 0.5 * entropy, rtol=1e-5)
    assert kl > 0


def test_random_translate_moves_each_image_by_at_most_one_pixel(key):
    from robust_jax.smoothing.training import random_translate

    images = jax.random.uniform(key, (16, 6, 6, 1))
    moved = np.asarray(random_translate(jax.random.fold_in(key, 1), images, 1))
    padded = np.pad(np.asarray(images), ((0, 0), (1, 1), (1, 1), (0, 0)))
    seen = set()
    for i in range(16):
        matches = [(dy, dx) for dy in range(3) for dx in range(3)
                   if np.array_equal(padded[i, dy:dy + 6, dx:dx + 6], moved[i])]
        assert len(matches) == 1
        seen.add(matches[0])
    assert len(seen) > 1
    np.testing.assert_array_equal(random_translate(key, images, 0), images)
