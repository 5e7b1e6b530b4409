"""Training a base classifier for randomized smoothing: Gaussian-noise augmentation at the certification sigma
(Cohen et al.), optionally with consistency regularisation (Jeong & Shin 2020).

With consistency, each image gets m noisy copies; the loss is
    mean cross-entropy + lambda * mean_i KL(p_bar || p_i) + eta * H(p_bar),
p_bar the mean of the m softmax outputs. lambda = 0 is plain noise augmentation with one copy.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax


def noisy_copies(key: jax.Array, images_BxX: jax.Array, sigma: float, copies: int) -> jax.Array:
    """(copies, B, ...) Gaussian-noised versions of the batch, drawn on the global batch inside the step."""
    noise = jax.random.normal(key, (copies, *images_BxX.shape), images_BxX.dtype)
    return images_BxX[None] + sigma * noise


def random_translate(key: jax.Array, images_BxHxWxC: jax.Array, max_shift: int) -> jax.Array:
    """Each image moved by up to `max_shift` pixels in each direction, zero-filled (a standard crop augmentation)."""
    if max_shift <= 0:
        return images_BxHxWxC
    batch, height, width, _ = images_BxHxWxC.shape
    padded = jnp.pad(images_BxHxWxC, ((0, 0), (max_shift, max_shift), (max_shift, max_shift), (0, 0)))
    offsets = jax.random.randint(key, (batch, 2), 0, 2 * max_shift + 1)

    def crop(image, offset):
        return jax.lax.dynamic_slice(image, (offset[0], offset[1], 0), (height, width, image.shape[-1]))

    return jax.vmap(crop)(padded, offsets)


def make_noise_loss_fn(
    apply_train: Callable,
    *,
    sigma: float,
    consistency_lambda: float = 0.0,
    consistency_eta: float = 0.0,
    copies: int = 2,
    max_translation: int = 0,
):
    """loss_fn(params, model_state, batch, key, step, constants) for the core train loop.

    apply_train(params, model_state, images) -> (logits, new_model_state) runs the model in training mode.
    max_translation > 0 moves each (image-shaped) input by up to that many pixels before the noise is added.
    """
    copies = copies if consistency_lambda > 0 else 1

    def loss_fn(params, model_state, batch, key, step, constants):
        del step, constants
        translate_key, noise_key = jax.random.split(key)
        images = random_translate(translate_key, batch["image"], max_translation)
        images_MxBxX = noisy_copies(noise_key, images, sigma, copies)
        batch_size = images_MxBxX.shape[1]
        flat = images_MxBxX.reshape(copies * batch_size, *images_MxBxX.shape[2:])
        logits, new_model_state = apply_train(params, model_state, flat)
        logits_MxBxC = logits.reshape(copies, batch_size, -1)
        labels_MxB = jnp.broadcast_to(batch["label"], (copies, batch_size))
        cross_entropy = optax.softmax_cross_entropy_with_integer_labels(logits_MxBxC, labels_MxB).mean()
        loss = cross_entropy
        metrics = {"cross_entropy": cross_entropy,
                   "accuracy": jnp.mean(jnp.argmax(logits_MxBxC, -1) == labels_MxB)}
        if consistency_lambda > 0:
            log_probs = jax.nn.log_softmax(logits_MxBxC, axis=-1)
            mean_probs_BxC = jnp.mean(jnp.exp(log_probs), axis=0)
            log_mean = jnp.log(jnp.clip(mean_probs_BxC, 1e-12))
            kl = jnp.sum(mean_probs_BxC[None] * (log_mean[None] - log_probs), axis=-1).mean()
            entropy = -jnp.sum(mean_probs_BxC * log_mean, axis=-1).mean()
            loss = loss + consistency_lambda * kl + consistency_eta * entropy
            metrics.update(consistency_kl=kl, entropy=entropy)
        return loss, (metrics, new_model_state)

    return loss_fn
