"""OpenCLIP import: parity with open_clip 3.3.0's outputs (tests/testdata) and errors for checkpoints that do not fit."""

import json
from pathlib import Path

import jax
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from robust_jax.models import clip, clip_import

DATA = Path(__file__).resolve().parent.parent / "testdata"


def _reference(name):
    with open(DATA / f"openclip_tiny_{name}.json") as f:
        meta = json.load(f)
    return dict(meta["open_clip_config"], quick_gelu=meta["quick_gelu"]), np.load(DATA / f"openclip_tiny_{name}_io.npz")


@pytest.mark.parametrize("name", ["gelu", "quickgelu"])
def test_openclip_parity(name):
    model_config, io = _reference(name)
    model, variables = clip_import.from_openclip(DATA / f"openclip_tiny_{name}.safetensors", model_config)
    assert model.config.vision.activation == ("quick_gelu" if name == "quickgelu" else "gelu")
    encode_image, encode_text = clip.jit_encoders(model)
    image_embeddings = encode_image(variables, io["images_nchw"].transpose(0, 2, 3, 1))
    text_embeddings = encode_text(variables, io["token_ids"])
    np.testing.assert_allclose(image_embeddings, io["image_embeddings"], atol=1e-4, rtol=0)
    np.testing.assert_allclose(text_embeddings, io["text_embeddings"], atol=1e-4, rtol=0)
    assert float(variables["params"]["logit_scale"]) == float(io["logit_scale"])
    # The model's logits from the reference embeddings.
    image = io["image_embeddings"] / np.linalg.norm(io["image_embeddings"], axis=1, keepdims=True)
    text = io["text_embeddings"] / np.linalg.norm(io["text_embeddings"], axis=1, keepdims=True)
    logits_per_image, logits_per_text = jax.jit(model.apply)(variables, io["images_nchw"].transpose(0, 2, 3, 1),
                                                             io["token_ids"])
    np.testing.assert_allclose(logits_per_image, np.exp(io["logit_scale"]) * image @ text.T, atol=1e-3, rtol=0)
    np.testing.assert_allclose(logits_per_text, logits_per_image.T)


def test_the_activation_matters():
    """GELU weights run with QuickGELU must miss the reference: the parity test can fail."""
    model_config, io = _reference("gelu")
    model, variables = clip_import.from_openclip(DATA / "openclip_tiny_gelu.safetensors", dict(model_config,
                                                                                                 quick_gelu=True))
    image_embeddings = clip.jit_encoders(model)[0](variables, io["images_nchw"].transpose(0, 2, 3, 1))
    assert np.abs(image_embeddings - io["image_embeddings"]).max() > 1e-3


def test_preset_name_and_param_dtype():
    model, variables = clip_import.from_openclip(DATA / "openclip_tiny_quickgelu.safetensors", "tiny",
                                                 param_dtype=np.float16)
    assert model.config == clip.get_config("tiny")
    kernel = variables["params"]["text"]["transformer"]["resblocks_1"]["c_fc"]["kernel"]
    assert kernel.dtype == np.float16 and kernel.shape == (40, 160)
    assert variables["params"]["logit_scale"].dtype == np.float32


@pytest.fixture(scope="module")
def state_dict():
    return load_file(DATA / "openclip_tiny_quickgelu.safetensors")


def _load_modified(tmp_path, state_dict, model_name="tiny", **changes):
    tensors = dict(state_dict)
    for key, value in changes.items():
        key = key.replace("__", ".")
        if value is None:
            del tensors[key]
        else:
            tensors[key] = value
    path = tmp_path / "modified.safetensors"
    save_file(tensors, path)
    return clip_import.from_openclip(path, model_name)


def test_missing_key(tmp_path, state_dict):
    with pytest.raises(clip_import.CheckpointError, match=r"1 missing key\(s\): 'visual.ln_post.bias'"):
        _load_modified(tmp_path, state_dict, visual__ln_post__bias=None)


def test_extra_key(tmp_path, state_dict):
    with pytest.raises(clip_import.CheckpointError, match=r"unexpected key\(s\): 'visual.head.weight'"):
        _load_modified(tmp_path, state_dict, visual__head__weight=np.zeros((3, 3), np.float32))


def test_known_buffers_are_ignored(tmp_path, state_dict):
    _, variables = _load_modified(tmp_path, state_dict, attn_mask=np.zeros((77, 77), np.float32))
    np.testing.assert_array_equal(variables["params"]["visual"]["proj"], state_dict["visual.proj"])


def test_shape_mismatch_names_key_and_shapes(tmp_path, state_dict):
    with pytest.raises(clip_import.CheckpointError,
                       match=r"visual.proj: checkpoint has shape \(48, 16\), the model expects \(48, 32\)"):
        _load_modified(tmp_path, state_dict, visual__proj=np.zeros((48, 16), np.float32))
    # An OIHW conv weight in the wrong layout.
    with pytest.raises(clip_import.CheckpointError, match=r"visual.conv1.weight: checkpoint has shape \(8, 8, 3, 48\)"):
        _load_modified(tmp_path, state_dict,
                       visual__conv1__weight=state_dict["visual.conv1.weight"].transpose(2, 3, 1, 0).copy())


def test_wrong_model_config(state_dict):
    message = r"embed_dim=512.*missing key.*resblocks\.2\..*2 vision and 2 text blocks, the configuration 12 and 12"
    with pytest.raises(clip_import.CheckpointError, match=message):
        clip_import.from_openclip(DATA / "openclip_tiny_quickgelu.safetensors", "ViT-B-32")


def test_other_architectures(tmp_path, state_dict):
    hf_like = {"vision_model.embeddings.class_embedding": np.zeros(4, np.float32)}
    resnet = {"visual.layer1.0.conv1.weight": np.zeros((4, 4, 1, 1), np.float32), **state_dict}
    del resnet["visual.conv1.weight"]
    for tensors, message in [(hf_like, "from_huggingface"), (resnet, "ModifiedResNet"),
                             ({"weight": np.zeros(3, np.float32)}, "not an OpenCLIP ViT CLIP checkpoint")]:
        save_file(tensors, tmp_path / "other.safetensors")
        with pytest.raises(clip_import.CheckpointError, match=message):
            clip_import.from_openclip(tmp_path / "other.safetensors", "tiny")


def test_refuses_pickles_and_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="pickled checkpoints are not loaded"):
        clip_import.from_openclip(tmp_path / "open_clip_pytorch_model.bin", "tiny")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        clip_import.from_openclip(tmp_path / "absent.safetensors", "tiny")
    with pytest.raises(ValueError, match="unknown"):
        clip_import.from_openclip(DATA / "openclip_tiny_gelu.safetensors", "ViT-X")
