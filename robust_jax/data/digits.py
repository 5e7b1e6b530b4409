"""scikit-learn's 8x8 handwritten digits (1,797 images, 10 classes): ships with scikit-learn, no download."""

from __future__ import annotations

import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

NUM_CLASSES = 10
IMAGE_SHAPE = (8, 8, 1)


def load_digits_splits(test_fraction: float = 0.2, seed: int = 0) -> dict[str, dict[str, np.ndarray]]:
    """Stratified train/test split; images (N, 8, 8, 1) float32 in [0, 1], labels int32."""
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction={test_fraction} must be in (0, 1)")
    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)[..., None]
    labels = digits.target.astype(np.int32)
    train_x, test_x, train_y, test_y = train_test_split(
        images, labels, test_size=test_fraction, random_state=seed, stratify=labels
    )
    return {
        "train": {"image": train_x, "label": train_y},
        "test": {"image": test_x, "label": test_y},
    }
