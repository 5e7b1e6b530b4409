"""The two augmented views of rRCM's instance discrimination, the official recipe adapted to grey digits.

The official (CIFAR-10 / ImageNet) views: random resized crop (area 0.08-1), colour jitter (brightness 0.4, contrast
0.4, saturation 0.2, hue 0.1) with probability 0.8, greyscale 0.2, horizontal flip; Gaussian blur (radius U(0.1, 2))
with probability 1.0 on view 1 and 0.1 on view 2; solarize with probability 0.2 on view 2 only.

Here, on [0, 1] grey images (`ViewAugmentation`):
  * random resized crop: area fraction U(crop_min_area, 1), aspect ratio log-uniform on [3/4, 4/3], position
    uniform, resized back by linear interpolation (an 8x8 digit cropped to 8% of its area is 2x2 pixels, no digit,
    so the smallest area is a config field: 0.35 in the presets on digits);
  * intensity jitter with probability 0.8: brightness x * b, then contrast (x - mean) * c + mean, b and c uniform on
    [1 - jitter, 1 + jitter] (saturation, hue and greyscale have nothing to act on);
  * Gaussian blur (5 taps, edge-padded, sigma U(0.1, blur_max_sigma)) with probability 1.0 on view 1, 0.1 on view 2;
  * solarize (x >= 0.5 -> 1 - x) with probability 0.2 on view 2;
  * no flips: a mirrored digit is another glyph.
Every row is augmented with its own draws; values stay in [0, 1].
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

BLUR_TAPS = 5
MIN_BLUR_SIGMA = 0.1


def resized_crop(image_HxWxC: jax.Array, top: jax.Array, left: jax.Array, height: jax.Array,
                 width: jax.Array) -> jax.Array:
    """The crop [top, top + height) x [left, left + width) (fractions of the sides) resized to the whole image by
    linear interpolation."""
    h, w = image_HxWxC.shape[:2]
    scale = jnp.stack([1.0 / height, 1.0 / width])
    translation = jnp.stack([-top * h / height, -left * w / width])
    return jax.image.scale_and_translate(image_HxWxC, image_HxWxC.shape, (0, 1), scale, translation,
                                         method="linear", antialias=False)


def gaussian_blur(image_HxWxC: jax.Array, sigma: jax.Array) -> jax.Array:
    """A separable 5-tap Gaussian blur of standard deviation sigma (pixels), edges repeated."""
    offsets = jnp.arange(BLUR_TAPS, dtype=jnp.float32) - BLUR_TAPS // 2
    taps = jnp.exp(-0.5 * (offsets / sigma) ** 2)
    taps = taps / taps.sum()
    pad = BLUR_TAPS // 2
    h, w = image_HxWxC.shape[:2]
    padded = jnp.pad(image_HxWxC, ((pad, pad), (0, 0), (0, 0)), mode="edge")
    image_HxWxC = sum(taps[i] * padded[i:i + h] for i in range(BLUR_TAPS))
    padded = jnp.pad(image_HxWxC, ((0, 0), (pad, pad), (0, 0)), mode="edge")
    return sum(taps[i] * padded[:, i:i + w] for i in range(BLUR_TAPS))


def solarize(image: jax.Array, threshold: float = 0.5) -> jax.Array:
    return jnp.where(image >= threshold, 1.0 - image, image)


@dataclasses.dataclass(frozen=True)
class ViewAugmentation:
    """`views(key, images_BxHxWxC) -> (view_1, view_2)`, each (B, H, W, C) in [0, 1] (module docstring)."""

    crop_min_area: float = 0.35
    aspect_range: tuple[float, float] = (3 / 4, 4 / 3)
    jitter: float = 0.4
    jitter_probability: float = 0.8
    blur_max_sigma: float = 1.0
    blur_probability: tuple[float, float] = (1.0, 0.1)
    solarize_probability: tuple[float, float] = (0.0, 0.2)

    def __post_init__(self):
        if not 0 < self.crop_min_area <= 1:
            raise ValueError(f"crop_min_area must be in (0, 1], got {self.crop_min_area!r}")
        if not 0 <= self.jitter < 1:
            raise ValueError(f"jitter must be in [0, 1), got {self.jitter!r}")
        if self.blur_max_sigma < MIN_BLUR_SIGMA:
            raise ValueError(f"blur_max_sigma must be >= {MIN_BLUR_SIGMA}, got {self.blur_max_sigma!r}")

    def one(self, key: jax.Array, image_HxWxC: jax.Array, blur_probability: float,
            solarize_probability: float) -> jax.Array:
        keys = jax.random.split(key, 9)
        area = jax.random.uniform(keys[0], (), minval=self.crop_min_area, maxval=1.0)
        log_aspect = jax.random.uniform(keys[1], (), minval=math.log(self.aspect_range[0]),
                                        maxval=math.log(self.aspect_range[1]))
        height = jnp.minimum(1.0, jnp.sqrt(area / jnp.exp(log_aspect)))
        width = jnp.minimum(1.0, jnp.sqrt(area * jnp.exp(log_aspect)))
        top = jax.random.uniform(keys[2], ()) * (1.0 - height)
        left = jax.random.uniform(keys[3], ()) * (1.0 - width)
        x = resized_crop(image_HxWxC, top, left, height, width)
        brightness, contrast = jax.random.uniform(keys[4], (2,), minval=1.0 - self.jitter, maxval=1.0 + self.jitter)
        jittered = jnp.clip(x * brightness, 0.0, 1.0)
        jittered = jnp.clip((jittered - jittered.mean()) * contrast + jittered.mean(), 0.0, 1.0)
        x = jnp.where(jax.random.uniform(keys[5], ()) < self.jitter_probability, jittered, x)
        sigma = jax.random.uniform(keys[6], (), minval=MIN_BLUR_SIGMA, maxval=self.blur_max_sigma)
        x = jnp.where(jax.random.uniform(keys[7], ()) < blur_probability, gaussian_blur(x, sigma), x)
        x = jnp.where(jax.random.uniform(keys[8], ()) < solarize_probability, solarize(x), x)
        return jnp.clip(x, 0.0, 1.0)

    def __call__(self, key: jax.Array, images_BxHxWxC: jax.Array) -> tuple[jax.Array, jax.Array]:
        batch = images_BxHxWxC.shape[0]
        views = []
        for v, view_key in enumerate(jax.random.split(key, 2)):
            row_keys = jax.random.split(view_key, batch)
            views.append(jax.vmap(lambda k, x, v=v: self.one(k, x, self.blur_probability[v],
                                                               self.solarize_probability[v]))(row_keys,
                                                                                              images_BxHxWxC))
        return views[0], views[1]


def translation_views(max_shift: int):
    """Translation-only views (config.rrcm.views = "translate"): each a random translation by up to max_shift pixels (zero fill)."""
    from robust_jax.smoothing.training import random_translate

    def views(key, images_BxHxWxC):
        both = random_translate(key, jnp.concatenate([images_BxHxWxC, images_BxHxWxC]), max_shift)
        return both[:images_BxHxWxC.shape[0]], both[images_BxHxWxC.shape[0]:]

    return views
