"""rRCM's instance views: the crop, blur and solarize against independent references (a linear ramp, scipy's
Gaussian filter), and the two views' documented probabilities."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage

from robust_jax.smoothing.methods.rrcm.views import ViewAugmentation, gaussian_blur, resized_crop, solarize


def test_whole_crop_is_the_identity():
    image = jax.random.uniform(jax.random.key(0), (8, 8, 1))
    np.testing.assert_allclose(resized_crop(image, 0.0, 0.0, 1.0, 1.0), image, atol=1e-6)


def test_a_crop_of_a_ramp_samples_it_at_the_mapped_pixel_centres():
    # value = row index; the crop of rows [0.25, 0.75) of the side stretched to 8 rows: output row i samples input
    # row 2 + (i + 0.5) * 0.5 - 0.5, exact for a ramp under linear interpolation (inside the image)
    image = jnp.broadcast_to(jnp.arange(8.0)[:, None, None], (8, 8, 1))
    out = np.asarray(resized_crop(image, 0.25, 0.0, 0.5, 1.0))[:, 0, 0]
    expected = 2 + (np.arange(8) + 0.5) * 0.5 - 0.5
    np.testing.assert_allclose(out, expected, atol=1e-5)


@pytest.mark.parametrize("sigma", [0.3, 0.8, 1.0])
def test_blur_is_scipy_gaussian_filter_with_radius_two(sigma):
    image = np.asarray(jax.random.uniform(jax.random.key(1), (8, 8, 1)))
    expected = ndimage.gaussian_filter(image[..., 0], sigma, mode="nearest", truncate=2 / sigma)
    np.testing.assert_allclose(np.asarray(gaussian_blur(jnp.asarray(image), sigma))[..., 0], expected, atol=1e-5)


def test_solarize_inverts_the_bright_half():
    np.testing.assert_allclose(solarize(jnp.array([0.0, 0.2, 0.5, 0.9])), [0.0, 0.2, 0.5, 0.1], rtol=1e-6)


def _counts(augment, image, rows=4000):
    images = jnp.broadcast_to(image, (rows, *image.shape))
    return [np.asarray(view) for view in jax.jit(augment)(jax.random.key(3), images)]


def test_solarize_only_on_view_two_with_probability_0_2():
    # no crop (area 1, aspect 1), no jitter, no blur: a constant 0.9 image stays 0.9 or is solarized to 0.1
    augment = ViewAugmentation(crop_min_area=1.0, aspect_range=(1.0, 1.0), jitter=0.0, blur_probability=(0.0, 0.0))
    first, second = _counts(augment, jnp.full((8, 8, 1), 0.9))
    np.testing.assert_allclose(first, 0.9, atol=1e-5)
    solarized = np.isclose(second[:, 0, 0, 0], 0.1, atol=1e-5)
    assert np.all(solarized | np.isclose(second[:, 0, 0, 0], 0.9, atol=1e-5))
    assert abs(solarized.mean() - 0.2) < 0.02  # 3 standard errors at 4,000 rows


def test_blur_always_on_view_one_and_with_probability_0_1_on_view_two():
    # one bright pixel: a blur of sigma >= 0.27 (probability 0.81 under U(0.1, 1)) takes its centre below 0.999
    image = jnp.zeros((8, 8, 1)).at[4, 4, 0].set(1.0)
    augment = ViewAugmentation(crop_min_area=1.0, aspect_range=(1.0, 1.0), jitter=0.0,
                               solarize_probability=(0.0, 0.0))
    first, second = _counts(augment, image)
    assert first.min() >= 0 and first.max() <= 1
    assert abs((first[:, 4, 4, 0] < 0.999).mean() - 0.81) < 0.03
    assert abs((second[:, 4, 4, 0] < 0.999).mean() - 0.1 * 0.81) < 0.02
    assert len({round(float(x), 6) for x in first[:, 4, 4, 0]}) > 100  # independent draws per row


def test_crops_and_jitter_change_every_row_differently():
    image = jax.random.uniform(jax.random.key(2), (8, 8, 1))
    first, second = _counts(ViewAugmentation(), image, rows=64)
    assert first.min() >= 0 and first.max() <= 1
    assert len({float(x) for x in first[:, 3, 3, 0]}) > 50 and not np.allclose(first, second)


def test_bad_view_settings_are_clear_errors():
    with pytest.raises(ValueError, match="crop_min_area"):
        ViewAugmentation(crop_min_area=0.0)
    with pytest.raises(ValueError, match="blur_max_sigma"):
        ViewAugmentation(blur_max_sigma=0.05)
