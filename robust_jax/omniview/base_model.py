"""Stage 1 of the Omniview study: the base CLIP that every variant tunes, made once per workdir.

config.base_source:
  pretrain     train the small CLIP from scratch on canonical views (`pretrain.py`) in <workdir>/base
  workdir      the pre-trained CLIP of a finished omniview run: config.base_path is that run's workdir (its
               base/ checkpoint and vocabulary); its architecture fields must equal this config's
  openclip     an OpenCLIP ViT state dict saved as safetensors (config.base_path), architecture
               config.base_model_name, tokenized with CLIP's BPE (config.bpe_vocab_path)
  huggingface  a HuggingFace CLIPModel.save_pretrained folder with model.safetensors (config.base_path), BPE tokenizer

`check_base` runs before any work (it loads a checkpoint once to see that it fits, and turns every mismatch into a
ConfigError naming config.base_path); `load_base` loads a base that this run does not train.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable

import ml_collections

from robust_jax.core import checks
from robust_jax.models import clip as clip_lib
from robust_jax.models import clip_import
from robust_jax.models.clip_tokenizer import CLIPTokenizer
from robust_jax.omniview import pretrain

BASE_SOURCES = ("pretrain", "workdir", "openclip", "huggingface")


@dataclasses.dataclass
class Base:
    model: clip_lib.CLIP
    variables: dict
    tokenize: Callable  # list[str] -> (n, context_length) int32


def _fail(config, reason: str):
    checks.fail("config.base_path", config.base_path, reason)


def _import_checkpoint(config: ml_collections.ConfigDict) -> tuple[clip_lib.CLIP, dict]:
    try:
        if config.base_source == "openclip":
            return clip_import.from_openclip(config.base_path, config.base_model_name)
        return clip_import.from_huggingface(config.base_path)
    except (clip_import.CheckpointError, FileNotFoundError, ValueError) as error:
        what = f"an OpenCLIP {config.base_model_name!r} checkpoint" if config.base_source == "openclip" else \
            "a HuggingFace CLIP checkpoint"
        _fail(config, f"expected {what} ({error})")


def _check_workdir_base(config: ml_collections.ConfigDict) -> None:
    saved = os.path.join(config.base_path, "config.json")
    if not os.path.isfile(saved):
        _fail(config, "expected the workdir of a finished omniview run (no config.json there)")
    with open(saved) as f:
        other = json.load(f)
    if other.get("study") != "omniview" or other.get("base_source") != "pretrain":
        _fail(config, f"holds a {other.get('study')!r} run with base_source={other.get('base_source')!r}; expected "
                      "an omniview run that pre-trained its base")
    different = [name for name in pretrain.ARCHITECTURE_FIELDS if other.get(name) != config[name]]
    if different:
        _fail(config, "its base CLIP has another architecture: " + ", ".join(
            f"{name}={other.get(name)!r} there, {config[name]!r} here" for name in different))
    base_dir = os.path.join(config.base_path, pretrain.BASE_SUBDIR)
    for needed in ("checkpoints", pretrain.VOCAB_FILE):
        if not os.path.exists(os.path.join(base_dir, needed)):
            _fail(config, f"has no pre-trained base ({os.path.join(base_dir, needed)} is missing)")


def check_base(config: ml_collections.ConfigDict) -> None:
    """ConfigError for a base that cannot be used, before any work."""
    checks.check_choice("config.base_source", config.base_source, BASE_SOURCES)
    if config.base_source == "pretrain":
        return
    if not config.base_path or not os.path.exists(config.base_path):
        _fail(config, f"config.base_source={config.base_source!r} needs an existing path")
    if config.base_source == "workdir":
        _check_workdir_base(config)
        return
    if not os.path.isfile(config.bpe_vocab_path):
        checks.fail("config.bpe_vocab_path", config.bpe_vocab_path,
                    "expected CLIP's BPE merges file (bpe_simple_vocab_16e6.txt.gz)")
    model, _ = _import_checkpoint(config)
    if model.config.vision.image_size != config.image_size:
        checks.fail("config.image_size", config.image_size,
                    f"must equal the checkpoint's image size ({model.config.vision.image_size})")


def load_base(config: ml_collections.ConfigDict) -> Base:
    """The base CLIP of a run whose base is not pre-trained in its own workdir (base_source 'workdir', 'openclip' or
    'huggingface'); a pre-trained base is the study's "base" training (`pretrain.pretrain_training`)."""
    if config.base_source == "pretrain":
        raise ValueError("base_source='pretrain': the base is the study's 'base' training, not loaded")
    if config.base_source == "workdir":
        model, variables, tokenizer = pretrain.load_pretrained(
            config, os.path.join(config.base_path, pretrain.BASE_SUBDIR))
        return Base(model=model, variables=variables, tokenize=tokenizer)
    model, variables = _import_checkpoint(config)
    tokenizer = CLIPTokenizer(config.bpe_vocab_path, context_length=model.config.text.context_length)
    return Base(model=model, variables=variables, tokenize=tokenizer)
