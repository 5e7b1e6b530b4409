"""Omniview-Tuning (Ruan et al., ECCV 2024): CLIP + LoRA + VIFormer tuned with minimax cross-view alignment.

The study (`study.py`) has two stages: the base CLIP (`base_model.py`: pre-trained from scratch by `pretrain.py`,
or loaded) and its tuning (`tuning.py`) in every variant, evaluated zero-shot (`evaluation.py`, `zero_shot.py`).
"""

from robust_jax.omniview.alignment import (  # noqa: F401
    AlignmentTargets, centre_weights, embed_images, hard_views, max_step, object_centres, random_view_targets,
    viewpoint_invariance_loss)
from robust_jax.omniview.augment import affine_warp, random_rotate_translate  # noqa: F401
from robust_jax.omniview.base_model import Base, check_base, load_base  # noqa: F401
from robust_jax.omniview.evaluation import corrupt, evaluation_set  # noqa: F401
from robust_jax.omniview.tuning import (  # noqa: F401
    VARIANTS, TunedCLIP, Variant, epoch_targets, make_loss_fn, make_optimizer, setup_variant, tune, with_base)
from robust_jax.omniview.tuning_params import count_tuning_parameters, init_tuning_params  # noqa: F401
from robust_jax.omniview.viformer import VIFormer, viewpoint_invariant_embedding  # noqa: F401
