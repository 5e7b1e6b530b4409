"""Camera views: canonical (catalogue-style) and the four viewpoint-OOD kinds, and plain backgrounds."""

from __future__ import annotations

import numpy as np

CANONICAL, VIEWPOINT_OOD = 0, 1
VIEW_SPLITS = ("canonical", "viewpoint_ood")
VIEW_KINDS = ("canonical", "below", "above", "behind", "rolled")
DISTANCE_RANGE = (2.7, 3.3)


def sample_views(rng: np.random.Generator, num_views: int, canonical_fraction: float) -> dict[str, np.ndarray]:
    """View parameters (degrees) and kinds: the first round(canonical_fraction * n) canonical, then the OOD kinds
    in turn."""
    num_canonical = int(round(canonical_fraction * num_views))
    kind = np.array([0] * num_canonical + [1 + k % 4 for k in range(num_views - num_canonical)], np.int8)
    azimuth = rng.uniform(-60, 60, num_views)
    elevation = rng.uniform(0, 30, num_views)
    roll = np.zeros(num_views)
    any_azimuth = rng.uniform(0, 360, num_views)
    below, above, behind, rolled = (kind == k for k in (1, 2, 3, 4))
    elevation[below] = rng.uniform(-90, -35, num_views)[below]
    elevation[above] = rng.uniform(60, 90, num_views)[above]
    azimuth[below | above] = any_azimuth[below | above]
    azimuth[behind] = rng.uniform(135, 225, num_views)[behind]
    elevation[behind] = rng.uniform(-10, 30, num_views)[behind]
    roll_size = rng.uniform(60, 180, num_views) * rng.choice([-1.0, 1.0], num_views)
    roll[rolled] = roll_size[rolled]
    distance = rng.uniform(*DISTANCE_RANGE, num_views)
    return dict(azimuth=azimuth, elevation=elevation, roll=roll, distance=distance, view_kind=kind,
                view_split=(kind != 0).astype(np.int8))


def backgrounds(rng: np.random.Generator, num_views: int, image_size: int) -> np.ndarray:
    """Plain light backgrounds with a slight tint and a vertical gradient: (V, S, S, 3) float64."""
    level = rng.uniform(0.45, 0.85, (num_views, 1, 1, 1))
    tint = rng.uniform(-0.04, 0.04, (num_views, 1, 1, 3))
    slope = rng.uniform(-0.15, 0.15, (num_views, 1, 1, 1))
    rows = (np.arange(image_size) / max(image_size - 1, 1) - 0.5)[None, :, None, None]
    return np.broadcast_to(level + tint + slope * rows, (num_views, image_size, image_size, 3)).clip(0, 1)


