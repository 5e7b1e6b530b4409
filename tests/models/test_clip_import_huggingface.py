"""HuggingFace import: parity with a tiny random transformers.CLIPModel (torch CPU, fp32), and checkpoint errors.

torch and transformers are test-only dependencies; the tests skip when they are not installed.
"""

import json
import os

import jax
import numpy as np
import pytest
from tests.requirements import require

torch = require("torch", reason="HF parity tests need torch (test-only dependency)")
transformers = require("transformers", reason="HF parity tests need transformers (test-only dependency)")

from safetensors.numpy import load_file, save_file  # noqa: E402

from robust_jax.models import clip, clip_import  # noqa: E402

VOCAB, BOS, EOS = 100, 97, 98


def _save_tiny_clip(directory, eos_token_id, hidden_act, seed):
    torch.manual_seed(seed)
    config = transformers.CLIPConfig(
        text_config=dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=77, hidden_act=hidden_act,
                         bos_token_id=BOS, eos_token_id=eos_token_id, pad_token_id=0),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                           image_size=32, patch_size=8, hidden_act=hidden_act),
        projection_dim=16,
    )
    model = transformers.CLIPModel(config).eval()
    with torch.no_grad():  # HF initialises biases to 0 and LayerNorms to 1: perturb so every weight matters
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    model.save_pretrained(directory, safe_serialization=True)
    return model


@pytest.fixture(scope="module", params=[("eos_id", "quick_gelu"), ("legacy_argmax", "gelu")], ids=lambda p: p[0])
def hf_checkpoint(request, tmp_path_factory):
    pooling, hidden_act = request.param
    directory = tmp_path_factory.mktemp(f"hf_clip_{pooling}")
    # eos_token_id == 2 marks configs written before transformers PR #24773: they pool at argmax(input_ids).
    eos_token_id = EOS if pooling == "eos_id" else 2
    model = _save_tiny_clip(directory, eos_token_id, hidden_act, seed=len(pooling))
    return pooling, directory, model


def _inputs():
    rng = np.random.default_rng(0)
    images_nchw = rng.standard_normal((3, 3, 32, 32)).astype(np.float32)
    token_ids = np.zeros((4, 77), np.int64)
    for row, length in enumerate([2, 6, 20, 77]):
        token_ids[row, 0] = BOS
        token_ids[row, 1:length - 1] = rng.integers(1, 97, length - 2)
        token_ids[row, length - 1] = EOS
    token_ids[2, 3] = 99  # an id above the end-of-text id: argmax pooling and eos-id pooling disagree on this row
    return images_nchw, token_ids


def _features(output):
    """transformers 5 returns a ModelOutput whose pooler_output is projected; 4.x returned the tensor."""
    return getattr(output, "pooler_output", output).numpy()


def test_huggingface_parity(hf_checkpoint):
    pooling, directory, hf_model = hf_checkpoint
    images_nchw, token_ids = _inputs()
    with torch.no_grad():
        image_features = _features(hf_model.get_image_features(pixel_values=torch.from_numpy(images_nchw)))
        text_features = _features(hf_model.get_text_features(input_ids=torch.from_numpy(token_ids)))
        outputs = hf_model(input_ids=torch.from_numpy(token_ids), pixel_values=torch.from_numpy(images_nchw))

    model, variables = clip_import.from_huggingface(directory)
    assert model.config.text.eos_token_id == (EOS if pooling == "eos_id" else None)
    assert model.config.vision.activation == ("quick_gelu" if pooling == "eos_id" else "gelu")
    encode_image, encode_text = clip.jit_encoders(model)
    images_nhwc = images_nchw.transpose(0, 2, 3, 1)
    np.testing.assert_allclose(encode_image(variables, images_nhwc), image_features, atol=1e-4, rtol=0)
    np.testing.assert_allclose(encode_text(variables, token_ids), text_features, atol=1e-4, rtol=0)
    logits_per_image, logits_per_text = jax.jit(model.apply)(variables, images_nhwc, token_ids)
    np.testing.assert_allclose(logits_per_image, outputs.logits_per_image.numpy(), atol=1e-4, rtol=0)
    np.testing.assert_allclose(logits_per_text, outputs.logits_per_text.numpy(), atol=1e-4, rtol=0)
    assert float(variables["params"]["logit_scale"]) == pytest.approx(float(hf_model.logit_scale.detach()), abs=1e-7)


def _copy_checkpoint(source, destination, config_changes=None, **tensor_changes):
    os.makedirs(destination, exist_ok=True)
    with open(os.path.join(source, "config.json")) as f:
        config = json.load(f)
    config.update(config_changes or {})
    with open(os.path.join(destination, "config.json"), "w") as f:
        json.dump(config, f)
    tensors = load_file(os.path.join(source, "model.safetensors"))
    for key, value in tensor_changes.items():
        key = key.replace("__", ".")
        if value is None:
            del tensors[key]
        else:
            tensors[key] = value
    save_file(tensors, os.path.join(destination, "model.safetensors"))
    return destination


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    directory = tmp_path_factory.mktemp("hf_clip_errors")
    _save_tiny_clip(directory, EOS, "quick_gelu", seed=0)
    return directory


def test_errors_name_the_key_and_shapes(saved, tmp_path):
    missing = _copy_checkpoint(saved, tmp_path / "missing",
                               text_model__encoder__layers__1__self_attn__k_proj__weight=None)
    with pytest.raises(clip_import.CheckpointError,
                       match=r"missing key\(s\): 'text_model.encoder.layers.1.self_attn.k_proj.weight'"):
        clip_import.from_huggingface(missing)
    extra = _copy_checkpoint(saved, tmp_path / "extra", vision_model__head__weight=np.zeros(3, np.float32))
    with pytest.raises(clip_import.CheckpointError, match=r"unexpected key\(s\): 'vision_model.head.weight'"):
        clip_import.from_huggingface(extra)
    wrong_shape = _copy_checkpoint(saved, tmp_path / "shape",
                                   vision_model__encoder__layers__0__self_attn__v_proj__weight=np.zeros((32, 16),
                                                                                                         np.float32))
    with pytest.raises(clip_import.CheckpointError, match=r"v_proj.weight: checkpoint has shape \(32, 16\), "
                                                          r"the model expects \(32, 32\)"):
        clip_import.from_huggingface(wrong_shape)
    # A position_ids buffer, written by older transformers versions, carries no weights and is accepted.
    with_buffer = _copy_checkpoint(saved, tmp_path / "buffer",
                                   text_model__embeddings__position_ids=np.arange(77)[None].astype(np.int64))
    clip_import.from_huggingface(with_buffer)


def test_other_architectures_and_formats(saved, tmp_path):
    siglip = _copy_checkpoint(saved, tmp_path / "siglip", {"model_type": "siglip"})
    with pytest.raises(clip_import.CheckpointError, match="model_type='siglip'"):
        clip_import.from_huggingface(siglip)
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_text((saved / "config.json").read_text())
    (pickled / "pytorch_model.bin").write_bytes(b"not unpickled")
    with pytest.raises(FileNotFoundError, match="pickled"):
        clip_import.from_huggingface(pickled)
    with pytest.raises(FileNotFoundError, match="config.json"):
        clip_import.from_huggingface(tmp_path)
