"""Omniview-Tuning: CLIP + LoRA + VIFormer tuned with minimax cross-view alignment (see notes/omniview.md)."""

from robust_jax.omniview.alignment import (  # noqa: F401
    AlignmentTargets, centre_weights, hard_views, max_step, object_centres, random_view_targets,
    viewpoint_invariance_loss)
from robust_jax.omniview.tuning_params import count_tuning_parameters, init_tuning_params  # noqa: F401
from robust_jax.omniview.viformer import VIFormer, viewpoint_invariant_embedding  # noqa: F401
