"""The PyTorch references of the benchmarks: the CLIP reference is open_clip's ViT-B-32 geometry with GELU; given
the same weights, the CLIP and ICL references compute what ours compute (image embeddings, logits and the train
step's loss); and each reference runs in its own process against ours (experiments/benchmarks/alternate.py), on the
same sizes."""

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


def test_clip_reference_computes_what_ours_computes_from_the_same_weights(tmp_path):
    """The benchmark's reference model (tiny preset), its weights perturbed so that every one matters, read through the
    HuggingFace importer into the benchmark's own model (built from our config, not from the reference's): the same
    image embeddings (the forward timed) and the same contrastive
    loss (the train step timed) on the benchmark's kind of inputs."""
    torch = require("torch")
    transformers = require("transformers")
    from robust_jax.models import clip_import

    config = clip_lib.get_config("tiny")
    torch.manual_seed(0)
    reference = transformers.CLIPModel(clip_throughput.hf_clip_config(config)).eval()
    with torch.no_grad():
        for parameter in reference.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    reference.save_pretrained(tmp_path, safe_serialization=True)
    _, variables = clip_import.from_huggingface(tmp_path)
    model = clip_lib.CLIP(config)  # the benchmark's model, with the reference's weights

    rng = np.random.default_rng(0)
    size = config.vision.image_size
    images = rng.normal(size=(3, size, size, 3)).astype(np.float32)
    token_ids = clip_throughput.caption_token_ids(rng, 3, config.text.context_length, config.text.vocab_size)
    images_nchw = torch.from_numpy(images.transpose(0, 3, 1, 2).copy())
    with torch.no_grad():
        reference_embeddings = reference.get_image_features(pixel_values=images_nchw)
        reference_loss = clip_throughput.reference_contrastive_loss(reference, images_nchw,
                                                                    torch.from_numpy(token_ids).long())
    reference_embeddings = getattr(reference_embeddings, "pooler_output", reference_embeddings).numpy()
    encode_image, _ = clip_lib.jit_encoders(model)
    np.testing.assert_allclose(encode_image(variables, images), reference_embeddings, atol=1e-4, rtol=0)
    loss = jax.jit(lambda v: clip_throughput.contrastive_loss(model, v, images, token_ids))(variables)
    assert float(loss) == pytest.approx(float(reference_loss), rel=1e-4)
    assert float(loss) > 0.5  # not a degenerate batch: the perturbed towers do not match captions to images


def test_icl_reference_computes_what_ours_computes_from_the_same_weights():
    """Garg et al.'s PyTorch model as the benchmark builds it, its weights copied into ours (read-in, GPT-2 backbone,
    read-out): the loss of the study's step (training_functions, fixed curriculum) equals the reference's loss on
    the prompts our step draws."""
    torch = require("torch")
    require("transformers")
    import jax.numpy as jnp

    from robust_jax.icl.gpt2 import Curriculum, curriculum_points_at, gpt2_model, training_functions
    from robust_jax.icl.tasks import PromptSpec
    from robust_jax.models.transformer import params_from_huggingface_gpt2

    torch.manual_seed(0)
    read_in, backbone, read_out = modules = icl_throughput.torch_reference_model("tiny")
    model = gpt2_model("tiny", dim=icl_throughput.DIM, max_points=icl_throughput.N_POINTS)
    params = {"params": {
        "read_in_kernel": jnp.asarray(read_in.weight.detach().numpy().T),
        "read_in_bias": jnp.asarray(read_in.bias.detach().numpy()),
        "backbone": params_from_huggingface_gpt2(backbone.state_dict(), model.n_layer)["params"],
        "read_out": {"kernel": jnp.asarray(read_out.weight.detach().numpy().T),
                     "bias": jnp.asarray(read_out.bias.detach().numpy())}}}
    spec = PromptSpec(dim=icl_throughput.DIM, n_context=icl_throughput.N_POINTS - 1)
    curriculum = Curriculum.fixed(icl_throughput.DIM, icl_throughput.N_POINTS)
    init_fn, loss_fn = training_functions(model, spec, curriculum)
    expected_shapes = jax.tree.map(jnp.shape, jax.eval_shape(init_fn, jax.random.key(0))[0])
    assert jax.tree.map(jnp.shape, params) == expected_shapes

    batch = {"index": jnp.arange(8)}
    key = jax.random.key(3)
    loss, _ = jax.jit(loss_fn)(params, {}, batch, key, jnp.int32(0), None)
    xs, ys = curriculum_points_at(key, spec, batch["index"], icl_throughput.DIM)
    with torch.no_grad():
        reference_loss = icl_throughput.torch_reference_loss(
            modules, torch.from_numpy(np.asarray(xs)), torch.from_numpy(np.asarray(ys)))
    assert float(loss) == pytest.approx(float(reference_loss), rel=1e-4)


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
