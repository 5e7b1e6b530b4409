"""Reusable Flax modules: SmallCNN, CLIP (with its tokenizer and safetensors weight import)."""

from robust_jax.models.clip import CLIP, CLIPConfig, get_config
from robust_jax.models.clip_import import CheckpointError, from_huggingface, from_openclip
from robust_jax.models.clip_tokenizer import CLIPTokenizer
from robust_jax.models.cnn import SmallCNN

__all__ = [
    "CLIP", "CLIPConfig", "CLIPTokenizer", "CheckpointError", "SmallCNN", "from_huggingface", "from_openclip",
    "get_config",
]
