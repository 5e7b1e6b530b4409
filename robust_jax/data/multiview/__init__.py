"""Procedural multi-view objects: 24 categories built from primitives, rendered from all around by our own numpy
ray caster (`render.py`), deterministic by seed and cached on disk as .npz (no pickle).

Usage::

    data = make_multiview_dataset(num_objects_per_category=20, views_per_object=24, image_size=32, seed=0)
    data["image"]        # uint8 (N, S, S, 3); float images: data["image"] / 255
    data["caption"]      # "a photo of a red mug"
    train = select(data, ~data["heldout"] & (data["view_split"] == CANONICAL))
    print(split_summary(data))
    save_grid_png(data, "/tmp/multiview_grid.png")

Objects. Every instance draws its proportions, a named main colour (`COLOUR_NAMES`, the colour its caption names,
jittered slightly), an accent colour and, on some parts, a stripe or checker texture. Objects stand upright (z up), face
+x (the bicycle stands along y, so that its canonical views are the side views a catalogue shows) and are scaled
into the unit sphere. Instance (category c, index i) depends only on (seed, c, i), so asking for more
objects keeps the earlier ones.

Views (angles in degrees; distance 2.7-3.3 object radii and a 46 degree field of view keep objects inside the frame):
  canonical (split 0), the way product photos are taken: azimuth in [-60, 60] (front and 3/4 views), elevation in
      [0, 30], no roll.
  viewpoint-OOD (split 1), one of four kinds in turn:
      below:   elevation in [-90, -35], any azimuth, no roll
      above:   elevation in [60, 90], any azimuth, no roll
      behind:  azimuth in [135, 225], elevation in [-10, 30], no roll
      rolled:  canonical azimuth/elevation, in-plane roll of 60-180 degrees either way
The first round(canonical_fraction * views_per_object) views of every object are canonical, the rest cycle through the
OOD kinds, so every object has the same view counts. Objects are split into training and held-out sets per category
(`heldout` is True for the held-out ones; none of them may be trained on): round(heldout_fraction * objects) per
category, at least one and at most all but one when heldout_fraction > 0 and there are two or more objects.

The package: `catalogue` (the 24 object categories and their colours), `views` (view sampling and backgrounds),
`render` (the numpy ray caster), `dataset` (generation, the on-disk cache, selecting rows, split summaries) and
`grid` (a PNG of views).
"""

from robust_jax.data.multiview.catalogue import CATEGORIES, COLOUR_NAMES, COLOURS, category_names, make_object
from robust_jax.data.multiview.dataset import (
    GENERATOR_VERSION,
    default_cache_dir,
    make_multiview_dataset,
    select,
    split_summary,
)
from robust_jax.data.multiview.grid import save_grid_png
from robust_jax.data.multiview.views import (
    CANONICAL,
    DISTANCE_RANGE,
    VIEW_KINDS,
    VIEW_SPLITS,
    VIEWPOINT_OOD,
    backgrounds,
    sample_views,
)
