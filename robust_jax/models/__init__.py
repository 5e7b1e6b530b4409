"""Reusable Flax modules: SmallCNN, CIFAR/ImageNet ResNets (with inference-time BN folding), ViT, CLIP (with its
tokenizer and safetensors weight import), LoRA adapters."""

from robust_jax.models.clip import CLIP, CLIPConfig, get_config
from robust_jax.models.clip_import import CheckpointError, from_huggingface, from_openclip
from robust_jax.models.clip_tokenizer import CLIPTokenizer
from robust_jax.models.cnn import SmallCNN
from robust_jax.models.resnet import (
    CifarResNet,
    ImageNetResNet,
    fold_batch_norm,
    resnet18,
    resnet20,
    resnet50,
    resnet110,
)
from robust_jax.models.vit import ViT, ViTOutput, vit_base, vit_small, vit_tiny

__all__ = [
    "CLIP", "CLIPConfig", "CLIPTokenizer", "CheckpointError", "CifarResNet", "ImageNetResNet", "SmallCNN", "ViT",
    "ViTOutput", "fold_batch_norm", "from_huggingface", "from_openclip", "get_config", "resnet18", "resnet20",
    "resnet50", "resnet110", "vit_base", "vit_small", "vit_tiny",
]
