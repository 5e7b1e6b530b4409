"""The trainable parameters of Omniview-Tuning, and how many there are.

The CLIP backbone (both towers) stays frozen. Trained are: the VIFormer, LoRA adapters (rank 8, alpha 8) on the
fused q|k|v projection (`in_proj`) of every vision attention block (lora_targets='qkv', the official code's; 'blocks':
every dense kernel of the vision blocks), and a new logit_scale initialised at log(1 / 0.07). The tree is
{'viformer': {'params': ...}, 'lora': <robust_jax.models.lora tree>, 'logit_scale': ()}.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from robust_jax.models import clip as clip_lib
from robust_jax.models import lora as lora_lib
from robust_jax.omniview.viformer import VIFormer

VISION_QKV_PATTERN = r"^params/visual/transformer/resblocks_\d+/attn/in_proj/kernel$"
# Every dense kernel of the vision blocks (q|k|v, the attention output, both MLP layers): for a small CLIP, whose
# q|k|v adapters alone move it too little to learn unseen views (docs/results/omniview.md).
VISION_BLOCKS_PATTERN = r"^params/visual/transformer/resblocks_\d+/(attn/in_proj|attn/out_proj|c_fc|c_proj)/kernel$"
LORA_TARGETS = {"qkv": VISION_QKV_PATTERN, "blocks": VISION_BLOCKS_PATTERN}
DEFAULT_LORA_RANK = 8
DEFAULT_LORA_ALPHA = 8.0
INITIAL_LOG_LOGIT_SCALE = math.log(1 / 0.07)


def init_tuning_params(key: jax.Array, clip_variables, embed_dim: int, *, viformer: VIFormer = VIFormer(),
                       lora_rank: int = DEFAULT_LORA_RANK, lora_alpha: float = DEFAULT_LORA_ALPHA,
                       lora_targets: str = "qkv") -> dict:
    """Fresh trainable parameters for a CLIP whose variables are `clip_variables` ({'params': ...}); LoRA on the
    kernels of LORA_TARGETS[lora_targets]."""
    viformer_key, lora_key = jax.random.split(key)
    return {
        "viformer": jax.jit(viformer.init)(viformer_key, jnp.zeros((1, embed_dim), jnp.float32)),
        "lora": lora_lib.lora_init(clip_variables, LORA_TARGETS[lora_targets], rank=lora_rank, alpha=lora_alpha,
                                   key=lora_key),
        "logit_scale": jnp.asarray(INITIAL_LOG_LOGIT_SCALE, jnp.float32),
    }


def _abstract_clip_variables(config: clip_lib.CLIPConfig):
    model = clip_lib.CLIP(config)
    images = jax.ShapeDtypeStruct((1, config.vision.image_size, config.vision.image_size, 3), jnp.float32)
    token_ids = jax.ShapeDtypeStruct((1, config.text.context_length), jnp.int32)
    return jax.eval_shape(model.init, jax.random.key(0), images, token_ids)


def _size(tree) -> int:
    return int(sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(tree)))


def count_tuning_parameters(clip_config: str | clip_lib.CLIPConfig = "ViT-B-32", *, viformer: VIFormer = VIFormer(),
                            lora_rank: int = DEFAULT_LORA_RANK, lora_alpha: float = DEFAULT_LORA_ALPHA
                            ) -> dict[str, int]:
    """{'viformer', 'lora', 'logit_scale', 'total'} trainable-parameter counts for a CLIP config or preset name
    (see robust_jax.models.clip.get_config), from shapes only (jax.eval_shape: no weights are made)."""
    config = clip_lib.get_config(clip_config) if isinstance(clip_config, str) else clip_config
    abstract_clip = _abstract_clip_variables(config)
    abstract = jax.eval_shape(
        lambda key, variables: init_tuning_params(key, variables, config.embed_dim, viformer=viformer,
                                                  lora_rank=lora_rank, lora_alpha=lora_alpha),
        jax.random.key(0), abstract_clip)
    counts = {name: _size(abstract[name]) for name in ("viformer", "lora", "logit_scale")}
    counts["total"] = sum(counts.values())
    return counts
