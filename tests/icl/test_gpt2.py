"""Garg et al.'s in-context GPT-2: causality, read-out at the x positions, the prefix loss, the curriculum and a short
training run against the zero estimator."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from robust_jax.core.train import TrainLoopConfig, Training, train
from robust_jax.data.array_batches import IndexBatches
from robust_jax.icl import baselines
from robust_jax.icl.gpt2 import (
    Curriculum,
    InContextGPT2,
    baseline_prefix_errors,
    curriculum_at,
    curriculum_points,
    gpt2_model,
    interleave,
    prefix_errors,
    prefix_loss,
    training_functions,
)
from robust_jax.icl.tasks import PromptSpec, sample_prompts
from robust_jax.models.transformer import CausalTransformer

DIM, POINTS = 4, 7
MODEL = InContextGPT2(dim=DIM, max_points=POINTS, n_layer=2, n_head=2, n_embd=32)


@pytest.fixture
def params_and_points(key):
    init_key, x_key, y_key = jax.random.split(key, 3)
    xs_BxPxD = jax.random.normal(x_key, (3, POINTS, DIM))
    ys_BxP = jax.random.normal(y_key, (3, POINTS))
    return MODEL.init(init_key, xs_BxPxD, ys_BxP), xs_BxPxD, ys_BxP


def test_interleave_layout():
    xs_BxPxD = jnp.arange(12.0).reshape(1, 2, 6)[..., :3]
    ys_BxP = jnp.array([[10.0, 20.0]])
    tokens = np.asarray(interleave(xs_BxPxD, ys_BxP))
    assert tokens.shape == (1, 4, 3)
    np.testing.assert_array_equal(tokens[0, 0], np.asarray(xs_BxPxD[0, 0]))
    np.testing.assert_array_equal(tokens[0, 1], [10.0, 0.0, 0.0])
    np.testing.assert_array_equal(tokens[0, 3], [20.0, 0.0, 0.0])


def test_read_in_equals_linear_on_zero_padded_tokens(params_and_points):
    """The cheap y-token embedding is exactly Garg's Linear(d -> n_embd) applied to the zero-padded token."""
    params, xs_BxPxD, ys_BxP = params_and_points
    p = params["params"]
    tokens_BxTxD = interleave(xs_BxPxD, ys_BxP)
    embeds_BxTxE = tokens_BxTxD @ p["read_in_kernel"] + p["read_in_bias"]
    reference_hidden = CausalTransformer(n_positions=2 * POINTS, n_embd=32, n_layer=2, n_head=2).apply(
        {"params": p["backbone"]}, embeds_BxTxE
    )
    reference = reference_hidden[:, 0::2] @ p["read_out"]["kernel"] + p["read_out"]["bias"]
    np.testing.assert_allclose(np.asarray(MODEL.apply(params, xs_BxPxD, ys_BxP)), np.asarray(reference[..., 0]),
                               atol=1e-5)


def test_predictions_are_causal_and_read_at_x(params_and_points):
    params, xs_BxPxD, ys_BxP = params_and_points
    predictions_BxP = MODEL.apply(params, xs_BxPxD, ys_BxP)
    assert predictions_BxP.shape == (3, POINTS)
    # Changing y_i must not change prediction i (read at x_i, before y_i) nor any earlier one, but changes later ones.
    i = 3
    changed = MODEL.apply(params, xs_BxPxD, ys_BxP.at[:, i].add(5.0))
    np.testing.assert_array_equal(np.asarray(changed[:, : i + 1]), np.asarray(predictions_BxP[:, : i + 1]))
    assert np.abs(np.asarray(changed[:, i + 1 :] - predictions_BxP[:, i + 1 :])).min() > 1e-6
    # Changing x_i changes prediction i and later ones, never earlier ones.
    changed = MODEL.apply(params, xs_BxPxD.at[:, i].add(1.0), ys_BxP)
    np.testing.assert_array_equal(np.asarray(changed[:, :i]), np.asarray(predictions_BxP[:, :i]))
    assert np.abs(np.asarray(changed[:, i] - predictions_BxP[:, i])).min() > 1e-6
    # A shorter prompt gives the same predictions as the prefix of a longer one.
    shorter = MODEL.apply(params, xs_BxPxD[:, :4], ys_BxP[:, :4])
    np.testing.assert_allclose(np.asarray(shorter), np.asarray(predictions_BxP[:, :4]), atol=1e-6)


def test_prefix_loss_is_the_manual_mean(key):
    predictions_BxP, ys_BxP = jax.random.normal(key, (2, 5, 9))
    manual = np.mean([(predictions_BxP[b, i] - ys_BxP[b, i]) ** 2 for b in range(5) for i in range(9)])
    assert float(prefix_loss(predictions_BxP, ys_BxP)) == pytest.approx(manual, rel=1e-5)
    manual_masked = np.mean([(predictions_BxP[b, i] - ys_BxP[b, i]) ** 2 for b in range(5) for i in range(4)])
    assert float(prefix_loss(predictions_BxP, ys_BxP, 4)) == pytest.approx(manual_masked, rel=1e-5)
    assert float(jax.jit(prefix_loss)(predictions_BxP, ys_BxP, jnp.int32(4))) == pytest.approx(manual_masked, rel=1e-5)


def test_curriculum_schedule():
    curriculum = Curriculum.garg(20)
    assert curriculum_at(0, curriculum) == (5, 11)
    assert curriculum_at(1999, curriculum) == (5, 11)
    assert curriculum_at(2000, curriculum) == (6, 13)
    assert curriculum_at(30000, curriculum) == (20, 41)
    assert curriculum_at(10**6, curriculum) == (20, 41)
    traced = jax.jit(lambda step: curriculum_at(step, curriculum))
    assert tuple(int(v) for v in traced(jnp.int32(2000))) == (6, 13)
    assert Curriculum.garg(3) == Curriculum(dims_start=3, dims_end=3, points_start=7, points_end=7)
    with pytest.raises(ValueError, match="dims_start"):
        Curriculum(dims_start=6, dims_end=5, points_start=11, points_end=11)


def test_curriculum_points_zero_inactive_dims(key):
    spec = PromptSpec(dim=6, n_context=5)
    xs_BxPxD, ys_BxP = curriculum_points(key, spec, 4, jnp.int32(2))
    assert xs_BxPxD.shape == (4, 6, 6)
    assert np.all(np.asarray(xs_BxPxD[..., 2:]) == 0.0) and np.all(np.asarray(xs_BxPxD[..., :2]) != 0.0)
    prompts = sample_prompts(key, spec, 4)
    np.testing.assert_allclose(np.asarray(ys_BxP),
                               np.einsum("bpd,bd->bp", np.asarray(xs_BxPxD), np.asarray(prompts.w_BxD)), rtol=1e-5)


def test_bad_training_setup_is_rejected():
    model = gpt2_model("tiny", dim=5, max_points=11)
    with pytest.raises(ValueError, match="points_end"):
        training_functions(model, PromptSpec(dim=5, n_context=8), Curriculum.garg(5))
    with pytest.raises(ValueError, match="label"):
        training_functions(model, PromptSpec(dim=5, n_context=10, label_noise_std=0.1), Curriculum.garg(5))
    with pytest.raises(ValueError, match="size"):
        gpt2_model("huge", dim=5, max_points=11)


@pytest.mark.slow
def test_training_beats_zero_estimator(key, tmp_path):
    """Garg's model at d = 3, trained with the study's functions on the core train loop, leaves its initial plateau
    (y_hat ~ 0) and has about half the zero estimator's error at k = 2d by step 800 at lr 1e-3 (measured: 0.65 of it
    at step 600, 0.48 at step 800; the bound below is loose). At d = 5 the same takes about 2,000 steps."""
    dim = 3
    spec = PromptSpec(dim=dim, n_context=2 * dim)
    model = gpt2_model("tiny", dim=dim, max_points=2 * dim + 1)
    init_fn, loss_fn = training_functions(model, spec, Curriculum.garg(dim))
    trained = train(Training(name="gpt2", init_fn=init_fn, loss_fn=loss_fn, optimizer=optax.adam(1e-3),
                             batches=lambda: IndexBatches(batch_size=64),
                             loop=TrainLoopConfig(num_steps=800, log_every=400, checkpoint_every=800)),
                    str(tmp_path))
    state = trained.state
    assert int(state.step) == 800

    test_prompts = sample_prompts(key, spec, 256)
    errors_BxP = np.asarray(prefix_errors(model, state.params, test_prompts))
    zero_BxP = np.asarray(baseline_prefix_errors(baselines.zero_estimator, test_prompts))
    least_squares_BxP = np.asarray(baseline_prefix_errors(baselines.least_squares, test_prompts))
    assert errors_BxP.shape == zero_BxP.shape == (256, 2 * dim + 1)
    k = 2 * dim
    assert errors_BxP[:, k].mean() < 0.7 * zero_BxP[:, k].mean()
    assert least_squares_BxP[:, k].mean() < 1e-6  # k = 2d examples determine w exactly: a sanity check of the helper
