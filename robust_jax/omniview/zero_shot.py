"""Zero-shot evaluation for the Omniview study; the implementation lives in `robust_jax.models.zero_shot` because the
`clip_pretrain` study uses it too (studies never import each other)."""

from robust_jax.models.zero_shot import (  # noqa: F401
    CLIP_MEAN, CLIP_STD, DEFAULT_TEMPLATES, class_text_embeddings, image_embeddings, normalise_images, top_k_correct,
    zero_shot_report)
