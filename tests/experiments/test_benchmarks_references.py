"""The PyTorch references of the benchmarks: the CLIP reference is open_clip's ViT-B-32 geometry with GELU, and each
reference runs in its own process against ours (experiments/benchmarks/alternate.py), on the same sizes."""

import json
import math

import jax
import numpy as np
import pytest

from experiments.benchmarks import clip_throughput, icl_throughput
from robust_jax.models import clip as clip_lib
from tests.requirements import require


def _our_parameter_count(name: str) -> int:
    model = clip_lib.CLIP(clip_lib.get_config(name))
    shapes = jax.eval_shape(lambda key: clip_lib.init_params(model, key), jax.random.key(0))
    return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(shapes))


def test_clip_reference_has_open_clip_vit_b_32_geometry_with_gelu():
    torch = require("torch")
    transformers = require("transformers")
    config = clip_throughput.hf_clip_config(clip_lib.get_config("ViT-B-32"))
    vision, text = config.vision_config, config.text_config
    assert (vision.image_size, vision.patch_size, vision.hidden_size, vision.num_hidden_layers,
            vision.num_attention_heads, vision.intermediate_size) == (224, 32, 768, 12, 12, 3072)
    assert (text.max_position_embeddings, text.vocab_size, text.hidden_size, text.num_hidden_layers,
            text.num_attention_heads, text.intermediate_size) == (77, 49408, 512, 12, 8, 2048)
    assert config.projection_dim == vision.projection_dim == text.projection_dim == 512
    assert vision.hidden_act == text.hidden_act == "gelu"  # open_clip's ViT-B-32, not HF's default QuickGELU
    assert text.eos_token_id == 49407
    with torch.device("meta"):  # shapes only: no 151M parameters allocated
        reference = transformers.CLIPModel(config)
    reference_count = sum(p.numel() for p in reference.parameters())
    # open_clip's ViT-B-32 has 151,277,313 parameters; the same model on both sides has the same count.
    assert reference_count == _our_parameter_count("ViT-B-32") == 151_277_313


def test_caption_tokens_end_with_the_pooled_end_of_text_id():
    ids = clip_throughput.caption_token_ids(np.random.default_rng(0), 5, 77, 49408)
    assert ids.shape == (5, 77) and ids.dtype == np.int32
    assert np.all(ids[:, -1] == 49407) and np.all(ids[:, :-1] < 49407) and np.all(ids >= 1)
    # ours pools at argmax(ids), HF's CLIP at the first end-of-text id: the same (last) position
    assert np.all(np.argmax(ids, axis=1) == 76) and np.all(np.argmax(ids == 49407, axis=1) == 76)


def _last_json(capsys) -> dict:
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    return json.loads(lines[-1])


@pytest.mark.slow
def test_clip_comparison_alternates_separate_processes(capsys):
    require("transformers")
    clip_throughput.main(["--model=tiny", "--forward_batch=2", "--train_batch=2", "--seconds=0", "--repeats=1",
                          "--with_torch_reference", "--pairs=1"])
    results = _last_json(capsys)["results"]
    for name in ("forward_images_per_s", "train_images_per_s"):
        assert results[name] > 0 and results[f"{name}_vs_torch"] > 0


@pytest.mark.slow
def test_icl_comparison_alternates_separate_processes(capsys):
    require("transformers")
    icl_throughput.main(["--sizes=tiny", "--seconds=0", "--repeats=1", "--with_torch_reference", "--pairs=1"])
    results = _last_json(capsys)["results"]
    assert results["tiny_steps_per_s"] > 0 and results["tiny_steps_per_s_vs_torch"] > 0
    assert "standard_steps_per_s" not in results


def test_arguments_are_checked_before_any_work():
    with pytest.raises(SystemExit):
        icl_throughput.parse_args(["--sizes=huge"])
    with pytest.raises(SystemExit):
        clip_throughput.parse_args(["--train_batch=0"])
    assert icl_throughput.parse_args(["--sizes=tiny", "--micro_batch_size=8"]).sizes == ["tiny"]
