"""Per-example image operations on uint8 HxWxC numpy arrays (numpy + Pillow, no TensorFlow).

Every random operation takes an explicit `numpy.random.Generator`, so an example's augmentation is a pure
function of (seed, position in the stream): grain hands each record a Philox generator keyed by seed + index.
"""
import math

import numpy as np
from PIL import Image

# ImageNet's usual training crop: 8%-100% of the area, aspect ratio between 3/4 and 4/3.
RANDOM_RESIZED_CROP_SCALE = (0.08, 1.0)
RANDOM_RESIZED_CROP_RATIO = (3.0 / 4.0, 4.0 / 3.0)


def _ensure_rgb(image_HxWxC: np.ndarray) -> np.ndarray:
  """Greyscale (HxW or HxWx1) becomes 3 channels so every batch stacks to (B, H, W, 3)."""
  if image_HxWxC.ndim == 2:
    image_HxWxC = image_HxWxC[:, :, None]
  if image_HxWxC.shape[-1] == 1:
    image_HxWxC = np.repeat(image_HxWxC, 3, axis=-1)
  return image_HxWxC


def random_flip_left_right(image_HxWxC: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """Mirrors the image horizontally with probability 1/2."""
  if rng.random() < 0.5:
    return image_HxWxC[:, ::-1]
  return image_HxWxC


def pad_and_random_crop(image_HxWxC: np.ndarray, padding: int, rng: np.random.Generator) -> np.ndarray:
  """The CIFAR training crop: zero-pad `padding` pixels on each side, then crop the original size at random."""
  height, width = image_HxWxC.shape[:2]
  padded = np.pad(image_HxWxC, ((padding, padding), (padding, padding), (0, 0)))
  top = int(rng.integers(0, 2 * padding + 1))
  left = int(rng.integers(0, 2 * padding + 1))
  return padded[top:top + height, left:left + width]


def random_resized_crop_box(height: int, width: int, rng: np.random.Generator,
                            scale=RANDOM_RESIZED_CROP_SCALE, ratio=RANDOM_RESIZED_CROP_RATIO,
                            attempts: int = 10) -> tuple[int, int, int, int]:
  """(top, left, crop_height, crop_width) of an Inception-style random crop.

  Tries `attempts` random (area, aspect ratio) draws; if none fits inside the image, falls back to the
  largest centred crop whose aspect ratio lies in `ratio` (the torchvision rule).
  """
  area = height * width
  log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
  for _ in range(attempts):
    target_area = area * rng.uniform(*scale)
    aspect = math.exp(rng.uniform(*log_ratio))
    crop_width = int(round(math.sqrt(target_area * aspect)))
    crop_height = int(round(math.sqrt(target_area / aspect)))
    if 0 < crop_width <= width and 0 < crop_height <= height:
      top = int(rng.integers(0, height - crop_height + 1))
      left = int(rng.integers(0, width - crop_width + 1))
      return top, left, crop_height, crop_width
  image_ratio = width / height
  if image_ratio < ratio[0]:
    crop_width, crop_height = width, max(1, int(round(width / ratio[0])))
  elif image_ratio > ratio[1]:
    crop_width, crop_height = max(1, int(round(height * ratio[1]))), height
  else:
    crop_width, crop_height = width, height
  return (height - crop_height) // 2, (width - crop_width) // 2, crop_height, crop_width


def random_resized_crop(image_HxWxC: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
  """Random-area, random-aspect crop resized (bilinear) to size x size."""
  image_HxWxC = _ensure_rgb(image_HxWxC)
  top, left, crop_height, crop_width = random_resized_crop_box(*image_HxWxC.shape[:2], rng)
  box = (left, top, left + crop_width, top + crop_height)
  resized = Image.fromarray(image_HxWxC).resize((size, size), Image.Resampling.BILINEAR, box=box)
  return np.asarray(resized)


def resize_shorter_side_and_centre_crop(image_HxWxC: np.ndarray, resize_size: int, crop_size: int) -> np.ndarray:
  """The standard evaluation view: shorter side to `resize_size` (bilinear, antialiased), centre crop_size^2."""
  image_HxWxC = _ensure_rgb(image_HxWxC)
  height, width = image_HxWxC.shape[:2]
  shorter = min(height, width)
  new_height = max(resize_size, int(round(height * resize_size / shorter)))
  new_width = max(resize_size, int(round(width * resize_size / shorter)))
  if (new_height, new_width) != (height, width):
    image_HxWxC = np.asarray(
        Image.fromarray(image_HxWxC).resize((new_width, new_height), Image.Resampling.BILINEAR))
  top = (new_height - crop_size) // 2
  left = (new_width - crop_size) // 2
  return image_HxWxC[top:top + crop_size, left:left + crop_size]
