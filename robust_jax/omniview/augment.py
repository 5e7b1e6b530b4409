"""The tuning stage's image augmentation: a random rotation (up to 90 degrees either way) and a random translation
(up to 10 % of the image size on each axis), applied before the CLIP normalisation, as in Omniview-Tuning.

Pixels are sampled bilinearly; positions that fall outside the image take the nearest edge pixel, so the light
backgrounds of the renders are not framed by black corners that would be a cue of augmentation.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np


def affine_warp(images_BxHxWxC: jax.Array, angle_degrees_B: jax.Array, shift_pixels_Bx2: jax.Array) -> jax.Array:
    """Rotates each image by its angle about the image centre (positive angles turn the content the way
    `np.rot90` does: counter-clockwise as displayed), then moves the content by (down, right) pixels."""
    _, height, width, channels = images_BxHxWxC.shape
    centre_row, centre_col = (height - 1) / 2.0, (width - 1) / 2.0
    rows_HxW, cols_HxW = jnp.meshgrid(jnp.arange(height, dtype=jnp.float32), jnp.arange(width, dtype=jnp.float32),
                                      indexing="ij")

    def warp_one(image_HxWxC, angle_degrees, shift_2):
        theta = jnp.deg2rad(angle_degrees)
        # Output pixel (a, b) relative to the centre, the shift undone, then rotated back onto the source.
        a = rows_HxW - centre_row - shift_2[0]
        b = cols_HxW - centre_col - shift_2[1]
        source_row = centre_row + a * jnp.cos(theta) + b * jnp.sin(theta)
        source_col = centre_col + b * jnp.cos(theta) - a * jnp.sin(theta)

        def sample(channel_HxW):
            return jax.scipy.ndimage.map_coordinates(channel_HxW, [source_row, source_col], order=1, mode="nearest")

        return jnp.stack([sample(image_HxWxC[..., c]) for c in range(channels)], axis=-1)

    return jax.vmap(warp_one)(images_BxHxWxC.astype(jnp.float32), angle_degrees_B.astype(jnp.float32),
                              shift_pixels_Bx2.astype(jnp.float32))


def random_rotate_translate(images_BxHxWxC: jax.Array, keys_B: jax.Array, max_degrees: float,
                            max_translation: float) -> jax.Array:
    """Each image rotated by U(-max_degrees, max_degrees) and moved by U(-t, t) x its size on each axis
    (t = max_translation), drawn from its own key (one key per example, e.g. fold_in(step_key, example_id))."""
    _, height, width, _ = images_BxHxWxC.shape

    def draw(key):
        angle_key, shift_key = jax.random.split(key)
        angle = jax.random.uniform(angle_key, (), minval=-max_degrees, maxval=max_degrees)
        shift = jax.random.uniform(shift_key, (2,), minval=-max_translation, maxval=max_translation)
        return angle, shift * jnp.array([height, width], jnp.float32)

    angles_B, shifts_Bx2 = jax.vmap(draw)(keys_B)
    return affine_warp(images_BxHxWxC, angles_B, shifts_Bx2)


@functools.partial(jax.jit, static_argnums=(3, 4))
def _augment_rows(images_BxHxWxC, key, rows_B, max_degrees: float, max_translation: float):
    keys_B = jax.vmap(lambda row: jax.random.fold_in(key, row))(rows_B)
    return random_rotate_translate(images_BxHxWxC, keys_B, max_degrees, max_translation)


class AugmentedRows:
    """images[rows] (uint8 or float in [0, 1]) as float images in [0, 1], row r rotated and moved by
    `random_rotate_translate` with the key fold_in(key, r): the same draw for a row whenever it is read, so a set of
    images augmented once (e.g. for one epoch's max step) that loads lazily, batch by batch."""

    def __init__(self, images, key: jax.Array, max_degrees: float, max_translation: float):
        self.images, self.key = images, key
        self.max_degrees, self.max_translation = float(max_degrees), float(max_translation)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, rows) -> np.ndarray:
        rows = np.asarray(rows)
        batch = np.asarray(self.images[rows])
        floats = batch.astype(np.float32) / 255.0 if batch.dtype == np.uint8 else batch.astype(np.float32)
        return np.asarray(_augment_rows(floats, self.key, rows.astype(np.int32), self.max_degrees,
                                        self.max_translation))
