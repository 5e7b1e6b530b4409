"""Import CLIP weights from OpenCLIP or HuggingFace safetensors checkpoints (never from pickles).

    model, variables = from_openclip("open_clip_model.safetensors", "ViT-B-32-quickgelu")
    model, variables = from_huggingface("clip-vit-base-patch32/")   # config.json + model.safetensors
    image_embeddings = model.apply(variables, images_NHWC, method=model.encode_image)

Layouts: a torch Linear weight is (out, in), a Flax kernel (in, out); a torch conv weight is OIHW, a Flax one HWIO.
OpenCLIP keeps q|k|v fused in `in_proj_weight` (3*width, width), the layout used here; HuggingFace keeps separate
q/k/v projections (and scales q instead of the logits, which is the same function), so they are concatenated.

Every tensor the model needs must be in the checkpoint with the expected shape, and every tensor in the checkpoint must
be used, apart from a few non-parameter buffers that some exporters include (`_IGNORED_*`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from safetensors import safe_open

from robust_jax.models import clip

# Non-parameter buffers some exporters write (masks, position ids, sizes); they carry no weights.
_IGNORED_OPENCLIP = ("attn_mask", "visual.attn_mask", "input_resolution", "context_length", "vocab_size")
_IGNORED_HF = ("text_model.embeddings.position_ids", "vision_model.embeddings.position_ids")


class CheckpointError(ValueError):
    """The checkpoint does not match the model: missing/extra keys, wrong shapes, another architecture."""


# ------------------------------------------------------------------------------------------------ conversion rules


@dataclasses.dataclass(frozen=True)
class _Rule:
    """How one Flax parameter is made from one or more checkpoint tensors."""

    flax_path: tuple[str, ...]
    torch_keys: tuple[str, ...]
    layout: str  # 'same' | 'linear' (transpose) | 'conv' (OIHW -> HWIO) | 'qkv_weight' | 'qkv_bias'

    def torch_shapes(self, flax_shape: tuple[int, ...]) -> list[tuple[int, ...]]:
        """The checkpoint shapes this rule expects, given the Flax parameter's shape."""
        if self.layout == "same":
            return [flax_shape]
        if self.layout == "linear":
            return [tuple(reversed(flax_shape))]
        if self.layout == "conv":
            height, width, in_channels, out_channels = flax_shape
            return [(out_channels, in_channels, height, width)]
        if self.layout == "qkv_weight":
            width_in, width_3 = flax_shape
            return [(width_3 // 3, width_in)] * 3
        if self.layout == "qkv_bias":
            return [(flax_shape[0] // 3,)] * 3
        raise AssertionError(self.layout)

    def convert(self, tensors: list[np.ndarray]) -> np.ndarray:
        if self.layout == "same":
            return tensors[0]
        if self.layout == "linear":
            return tensors[0].T
        if self.layout == "conv":
            return tensors[0].transpose(2, 3, 1, 0)
        if self.layout == "qkv_weight":
            return np.concatenate([t.T for t in tensors], axis=1)
        if self.layout == "qkv_bias":
            return np.concatenate(tensors, axis=0)
        raise AssertionError(self.layout)


def _openclip_block_rules(flax_prefix: tuple[str, ...], torch_prefix: str, layers: int) -> list[_Rule]:
    rules = []
    for i in range(layers):
        f, t = flax_prefix + ("transformer", f"resblocks_{i}"), f"{torch_prefix}transformer.resblocks.{i}."
        rules += [
            _Rule(f + ("attn", "in_proj", "kernel"), (t + "attn.in_proj_weight",), "linear"),
            _Rule(f + ("attn", "in_proj", "bias"), (t + "attn.in_proj_bias",), "same"),
            _Rule(f + ("attn", "out_proj", "kernel"), (t + "attn.out_proj.weight",), "linear"),
            _Rule(f + ("attn", "out_proj", "bias"), (t + "attn.out_proj.bias",), "same"),
            _Rule(f + ("c_fc", "kernel"), (t + "mlp.c_fc.weight",), "linear"),
            _Rule(f + ("c_fc", "bias"), (t + "mlp.c_fc.bias",), "same"),
            _Rule(f + ("c_proj", "kernel"), (t + "mlp.c_proj.weight",), "linear"),
            _Rule(f + ("c_proj", "bias"), (t + "mlp.c_proj.bias",), "same"),
        ]
        rules += _layer_norm_rules(f + ("ln_1",), t + "ln_1.")
        rules += _layer_norm_rules(f + ("ln_2",), t + "ln_2.")
    return rules


def _layer_norm_rules(flax_prefix: tuple[str, ...], torch_prefix: str) -> list[_Rule]:
    return [_Rule(flax_prefix + ("scale",), (torch_prefix + "weight",), "same"),
            _Rule(flax_prefix + ("bias",), (torch_prefix + "bias",), "same")]


def openclip_rules(config: clip.CLIPConfig) -> list[_Rule]:
    v, t = ("visual",), ("text",)
    return [
        _Rule(v + ("conv1", "kernel"), ("visual.conv1.weight",), "conv"),
        _Rule(v + ("class_embedding",), ("visual.class_embedding",), "same"),
        _Rule(v + ("positional_embedding",), ("visual.positional_embedding",), "same"),
        *_layer_norm_rules(v + ("ln_pre",), "visual.ln_pre."),
        *_openclip_block_rules(v, "visual.", config.vision.layers),
        *_layer_norm_rules(v + ("ln_post",), "visual.ln_post."),
        _Rule(v + ("proj",), ("visual.proj",), "same"),  # OpenCLIP stores it (width, embed): x @ proj
        _Rule(t + ("token_embedding", "embedding"), ("token_embedding.weight",), "same"),
        _Rule(t + ("positional_embedding",), ("positional_embedding",), "same"),
        *_openclip_block_rules(t, "", config.text.layers),
        *_layer_norm_rules(t + ("ln_final",), "ln_final."),
        _Rule(t + ("text_projection",), ("text_projection",), "same"),
        _Rule(("logit_scale",), ("logit_scale",), "same"),
    ]


def _hf_block_rules(flax_prefix: tuple[str, ...], torch_prefix: str, layers: int) -> list[_Rule]:
    rules = []
    for i in range(layers):
        f, t = flax_prefix + ("transformer", f"resblocks_{i}"), f"{torch_prefix}encoder.layers.{i}."
        attn = t + "self_attn."
        rules += [
            _Rule(f + ("attn", "in_proj", "kernel"), tuple(attn + f"{p}_proj.weight" for p in "qkv"), "qkv_weight"),
            _Rule(f + ("attn", "in_proj", "bias"), tuple(attn + f"{p}_proj.bias" for p in "qkv"), "qkv_bias"),
            _Rule(f + ("attn", "out_proj", "kernel"), (attn + "out_proj.weight",), "linear"),
            _Rule(f + ("attn", "out_proj", "bias"), (attn + "out_proj.bias",), "same"),
            _Rule(f + ("c_fc", "kernel"), (t + "mlp.fc1.weight",), "linear"),
            _Rule(f + ("c_fc", "bias"), (t + "mlp.fc1.bias",), "same"),
            _Rule(f + ("c_proj", "kernel"), (t + "mlp.fc2.weight",), "linear"),
            _Rule(f + ("c_proj", "bias"), (t + "mlp.fc2.bias",), "same"),
        ]
        rules += _layer_norm_rules(f + ("ln_1",), t + "layer_norm1.")
        rules += _layer_norm_rules(f + ("ln_2",), t + "layer_norm2.")
    return rules


def huggingface_rules(config: clip.CLIPConfig) -> list[_Rule]:
    v, t = ("visual",), ("text",)
    return [
        _Rule(v + ("conv1", "kernel"), ("vision_model.embeddings.patch_embedding.weight",), "conv"),
        _Rule(v + ("class_embedding",), ("vision_model.embeddings.class_embedding",), "same"),
        _Rule(v + ("positional_embedding",), ("vision_model.embeddings.position_embedding.weight",), "same"),
        *_layer_norm_rules(v + ("ln_pre",), "vision_model.pre_layrnorm."),  # sic: HF's spelling
        *_hf_block_rules(v, "vision_model.", config.vision.layers),
        *_layer_norm_rules(v + ("ln_post",), "vision_model.post_layernorm."),
        _Rule(v + ("proj",), ("visual_projection.weight",), "linear"),
        _Rule(t + ("token_embedding", "embedding"), ("text_model.embeddings.token_embedding.weight",), "same"),
        _Rule(t + ("positional_embedding",), ("text_model.embeddings.position_embedding.weight",), "same"),
        *_hf_block_rules(t, "text_model.", config.text.layers),
        *_layer_norm_rules(t + ("ln_final",), "text_model.final_layer_norm."),
        _Rule(t + ("text_projection",), ("text_projection.weight",), "linear"),
        _Rule(("logit_scale",), ("logit_scale",), "same"),
    ]


# ----------------------------------------------------------------------------------------------- checkpoint reading


class _SafetensorsFiles:
    """Read-only view of one or more safetensors files: keys and shapes from the headers, tensors on demand."""

    def __init__(self, paths: list[str]):
        self._handles = {}
        self._file_of_key: dict[str, str] = {}
        for path in paths:
            if not os.path.isfile(path):
                raise FileNotFoundError(f"checkpoint file {path!r} does not exist")
            handle = safe_open(path, framework="numpy")
            self._handles[path] = handle
            for key in handle.keys():
                if key in self._file_of_key:
                    raise CheckpointError(f"key {key!r} appears in both {self._file_of_key[key]!r} and {path!r}")
                self._file_of_key[key] = path

    def keys(self) -> list[str]:
        return list(self._file_of_key)

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self._handles[self._file_of_key[key]].get_slice(key).get_shape())

    def get(self, key: str) -> np.ndarray:
        return self._handles[self._file_of_key[key]].get_tensor(key)


def _convert(files: _SafetensorsFiles, rules: list[_Rule], model: clip.CLIP, ignored: tuple[str, ...],
             param_dtype: Any, source: str, block_patterns: tuple[str, str]) -> dict:
    """Checks keys and shapes against the model, then builds {'params': ...} in `param_dtype`."""
    expected_shapes = _flax_param_shapes(model)
    assert sorted(expected_shapes) == sorted(rule.flax_path for rule in rules), "conversion rules out of date"
    present = set(files.keys())
    needed = [key for rule in rules for key in rule.torch_keys]
    missing = [key for key in needed if key not in present]
    extra = sorted(present - set(needed) - set(ignored))
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing key(s): {_first(missing)}")
    if extra:
        problems.append(f"{len(extra)} unexpected key(s): {_first(extra)}")
    if problems:
        depths = [len({m.group(1) for k in present if (m := re.match(p, k))}) for p in block_patterns]
        expected = (model.config.vision.layers, model.config.text.layers)
        if tuple(depths) != expected:
            problems.append(f"the checkpoint has {depths[0]} vision and {depths[1]} text blocks, the configuration "
                            f"{expected[0]} and {expected[1]}")
        raise CheckpointError(f"{source} does not match the model configuration ({_describe(model.config)}): "
                              + "; ".join(problems))
    shape_errors = []
    for rule in rules:
        flax_shape = expected_shapes[rule.flax_path]
        for key, want in zip(rule.torch_keys, rule.torch_shapes(flax_shape)):
            got = files.shape(key)
            if got != tuple(want):
                shape_errors.append(f"{key}: checkpoint has shape {got}, the model expects {tuple(want)}")
    if shape_errors:
        raise CheckpointError(f"{source} has {len(shape_errors)} tensor(s) of the wrong shape for the model "
                              f"({_describe(model.config)}): " + "; ".join(shape_errors[:8]))
    params: dict = {}
    for rule in rules:
        value = rule.convert([files.get(key) for key in rule.torch_keys])
        if not jnp.issubdtype(value.dtype, jnp.floating):  # numpy alone does not know bfloat16
            raise CheckpointError(f"{rule.torch_keys[0]} has dtype {value.dtype}; expected floating point weights")
        dtype = jnp.float32 if rule.flax_path == ("logit_scale",) else param_dtype
        _set(params, rule.flax_path, jnp.asarray(value, dtype=dtype))
    return {"params": params}


def _flax_param_shapes(model: clip.CLIP) -> dict[tuple[str, ...], tuple[int, ...]]:
    cfg = model.config
    images = jax.ShapeDtypeStruct((1, cfg.vision.image_size, cfg.vision.image_size, 3), jnp.float32)
    token_ids = jax.ShapeDtypeStruct((1, cfg.text.context_length), jnp.int32)
    abstract = jax.eval_shape(model.init, jax.random.key(0), images, token_ids)["params"]
    flat = jax.tree_util.tree_flatten_with_path(abstract)[0]
    return {tuple(k.key for k in path): tuple(leaf.shape) for path, leaf in flat}


def _set(tree: dict, path: tuple[str, ...], value) -> None:
    for name in path[:-1]:
        tree = tree.setdefault(name, {})
    tree[path[-1]] = value


def _first(keys: list[str], limit: int = 6) -> str:
    shown = ", ".join(repr(k) for k in keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


def _describe(config: clip.CLIPConfig) -> str:
    v, t = config.vision, config.text
    return (f"embed_dim={config.embed_dim}, vision {v.layers} layers width {v.width} patch {v.patch_size} "
            f"image {v.image_size}, text {t.layers} layers width {t.width} vocab {t.vocab_size} "
            f"context {t.context_length}")


# --------------------------------------------------------------------------------------------------------- OpenCLIP


def from_openclip(safetensors_path: str, model_name_or_config: str | clip.CLIPConfig | Mapping, *,
                  dtype: Any = jnp.float32, param_dtype: Any = jnp.float32) -> tuple[clip.CLIP, dict]:
    """Loads an OpenCLIP ViT CLIP state dict saved as safetensors.

    `model_name_or_config`: a preset name ('ViT-B-32', 'ViT-B-16', 'ViT-L-14', '-quickgelu' variants: OpenAI's
    released weights need QuickGELU), a `CLIPConfig`, or an OpenCLIP model-config dict (with "quick_gelu" if set).
    Returns (model, {'params': ...}).
    """
    if isinstance(model_name_or_config, clip.CLIPConfig):
        config = model_name_or_config
    elif isinstance(model_name_or_config, str):
        config = clip.get_config(model_name_or_config)
    elif isinstance(model_name_or_config, Mapping):
        config = clip.config_from_openclip_dict(dict(model_name_or_config))
    else:
        raise TypeError(f"model_name_or_config must be a model name, CLIPConfig or OpenCLIP config dict, "
                        f"got {type(model_name_or_config).__name__}")
    if not str(safetensors_path).endswith(".safetensors"):
        raise ValueError(f"{safetensors_path!r} is not a .safetensors file; pickled checkpoints are not loaded "
                         "(convert them to safetensors where you trust them)")
    files = _SafetensorsFiles([str(safetensors_path)])
    _check_openclip_architecture(files, safetensors_path)
    model = clip.CLIP(config, dtype=dtype, param_dtype=param_dtype)
    return model, _convert(files, openclip_rules(config), model, _IGNORED_OPENCLIP, param_dtype,
                           f"OpenCLIP checkpoint {str(safetensors_path)!r}",
                           (r"visual\.transformer\.resblocks\.(\d+)\.", r"transformer\.resblocks\.(\d+)\."))


def _check_openclip_architecture(files: _SafetensorsFiles, path) -> None:
    keys = set(files.keys())
    if any(k.startswith("module.") for k in keys):
        raise CheckpointError(f"{path!r} has keys prefixed 'module.' (a DataParallel training checkpoint); "
                              "strip the prefix when exporting the state dict")
    if any(k.startswith(("vision_model.", "text_model.")) for k in keys):
        raise CheckpointError(f"{path!r} looks like a HuggingFace CLIPModel checkpoint (keys 'vision_model.*'); "
                              "use from_huggingface(checkpoint_dir)")
    if any(k.startswith("visual.layer1.") for k in keys):
        raise CheckpointError(f"{path!r} has a ModifiedResNet image tower (keys 'visual.layer1.*'); only ViT CLIP "
                              "is supported")
    if any(k.startswith(("visual.trunk.", "text.transformer.", "text.")) for k in keys):
        raise CheckpointError(f"{path!r} is an OpenCLIP CustomTextCLIP/timm model (keys 'visual.trunk.*' or "
                              "'text.*'); only the OpenAI-style ViT CLIP architecture is supported")
    signature = ("visual.conv1.weight", "visual.class_embedding", "token_embedding.weight", "ln_final.weight")
    absent = [k for k in signature if k not in keys]
    if absent:
        raise CheckpointError(f"{path!r} is not an OpenCLIP ViT CLIP checkpoint: it lacks {_first(absent)}; "
                              f"its keys start {_first(sorted(keys), 4)}")


# ------------------------------------------------------------------------------------------------------ HuggingFace


def config_from_huggingface_dict(hf_config: Mapping) -> clip.CLIPConfig:
    """A CLIPConfig from a HF CLIPModel config.json (transformers' CLIPConfig defaults fill absent fields)."""
    model_type = hf_config.get("model_type")
    if model_type != "clip":
        raise CheckpointError(f"config.json has model_type={model_type!r}; only HuggingFace 'clip' (CLIPModel) "
                              "checkpoints are supported")
    architectures = hf_config.get("architectures") or ["CLIPModel"]
    if "CLIPModel" not in architectures:
        raise CheckpointError(f"config.json has architectures={architectures!r}; expected a 'CLIPModel' checkpoint")
    vision = {**_HF_VISION_DEFAULTS, **(hf_config.get("vision_config") or {})}
    text = {**_HF_TEXT_DEFAULTS, **(hf_config.get("text_config") or {})}
    if vision["num_channels"] != 3:
        raise CheckpointError(f"vision_config.num_channels={vision['num_channels']}; only RGB (3) is supported")
    eos = text.get("eos_token_id")
    if isinstance(eos, (list, tuple)):
        if len(eos) != 1:
            raise CheckpointError(f"text_config.eos_token_id={eos!r}; expected a single id")
        eos = eos[0]
    # transformers keeps argmax pooling for configs written before its PR #24773, recognised by eos_token_id == 2.
    eos_token_id = None if eos is None or eos == 2 else int(eos)
    return clip.CLIPConfig(
        embed_dim=int(hf_config.get("projection_dim", 512)),
        vision=clip.CLIPVisionConfig(
            image_size=clip._square(vision["image_size"], "vision_config.image_size"),
            patch_size=clip._square(vision["patch_size"], "vision_config.patch_size"),
            width=vision["hidden_size"],
            layers=vision["num_hidden_layers"],
            heads=vision["num_attention_heads"],
            mlp_dim=vision["intermediate_size"],
            activation=_hf_activation(vision["hidden_act"], "vision_config.hidden_act"),
            layer_norm_eps=float(vision["layer_norm_eps"]),
        ),
        text=clip.CLIPTextConfig(
            context_length=text["max_position_embeddings"],
            vocab_size=text["vocab_size"],
            width=text["hidden_size"],
            layers=text["num_hidden_layers"],
            heads=text["num_attention_heads"],
            mlp_dim=text["intermediate_size"],
            activation=_hf_activation(text["hidden_act"], "text_config.hidden_act"),
            layer_norm_eps=float(text["layer_norm_eps"]),
            eos_token_id=eos_token_id,
        ),
    )


_HF_VISION_DEFAULTS = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                           num_channels=3, image_size=224, patch_size=32, hidden_act="quick_gelu", layer_norm_eps=1e-5)
_HF_TEXT_DEFAULTS = dict(vocab_size=49408, hidden_size=512, intermediate_size=2048, num_hidden_layers=12,
                         num_attention_heads=8, max_position_embeddings=77, hidden_act="quick_gelu",
                         layer_norm_eps=1e-5, eos_token_id=49407)
_HF_ACTIVATIONS = {"quick_gelu": "quick_gelu", "gelu": "gelu", "gelu_new": "gelu_tanh",
                   "gelu_pytorch_tanh": "gelu_tanh"}


def _hf_activation(name: str, field: str) -> str:
    if name not in _HF_ACTIVATIONS:
        raise CheckpointError(f"{field}={name!r} is not supported; allowed: {sorted(_HF_ACTIVATIONS)}")
    return _HF_ACTIVATIONS[name]


def from_huggingface(checkpoint_dir: str, *, dtype: Any = jnp.float32,
                     param_dtype: Any = jnp.float32) -> tuple[clip.CLIP, dict]:
    """Loads a directory written by HF `CLIPModel.save_pretrained` (config.json + model.safetensors, or shards with
    model.safetensors.index.json). Returns (model, {'params': ...})."""
    checkpoint_dir = os.fspath(checkpoint_dir)
    config_path = os.path.join(checkpoint_dir, "config.json")
    if not os.path.isfile(config_path):
        raise FileNotFoundError(f"{checkpoint_dir!r} has no config.json; expected a CLIPModel.save_pretrained folder")
    with open(config_path) as f:
        config = config_from_huggingface_dict(json.load(f))
    files = _SafetensorsFiles(_hf_weight_files(checkpoint_dir))
    model = clip.CLIP(config, dtype=dtype, param_dtype=param_dtype)
    return model, _convert(files, huggingface_rules(config), model, _IGNORED_HF, param_dtype,
                           f"HuggingFace checkpoint {checkpoint_dir!r}",
                           (r"vision_model\.encoder\.layers\.(\d+)\.", r"text_model\.encoder\.layers\.(\d+)\."))


def _hf_weight_files(checkpoint_dir: str) -> list[str]:
    single = os.path.join(checkpoint_dir, "model.safetensors")
    index = os.path.join(checkpoint_dir, "model.safetensors.index.json")
    if os.path.isfile(single):
        return [single]
    if os.path.isfile(index):
        with open(index) as f:
            shards = sorted(set(json.load(f)["weight_map"].values()))
        return [os.path.join(checkpoint_dir, shard) for shard in shards]
    if any(os.path.isfile(os.path.join(checkpoint_dir, n)) for n in ("pytorch_model.bin", "tf_model.h5",
                                                                      "flax_model.msgpack")):
        raise FileNotFoundError(f"{checkpoint_dir!r} has no model.safetensors, only a pickled/other-format checkpoint, "
                                "which is not loaded; save it with save_pretrained(..., safe_serialization=True)")
    raise FileNotFoundError(f"{checkpoint_dir!r} has no model.safetensors (or model.safetensors.index.json)")
