"""The in-context learning study: ZFB's linear self-attention trained to its global minimum, checked against the
theory, and every model under the shift suite.

Stages (each training stage resumes from its own checkpoints in a sub-directory of the workdir):
  1. LSA (full parametrisation, the paper's initialisation) trained by SGD on fresh prompts with a fixed
     non-isotropic Λ; compared with the global minimum (u₋₁U₁₁ = Γ⁻¹, the other entries zero) and with the
     Theorem 4.2 test error.
  2. LSA trained with a fresh random diagonal Λ per prompt; compared with the varying-covariance minimum A.
  3. Covariate scaling: LSA and least squares on covariates scaled by c.
  4. The shift suite (Garg et al.'s protocol: identity training covariance) for the LSA at its closed-form
     minimum, the baselines and Garg's GPT-2 (trained here with their curriculum and loss over all prefixes);
     error-vs-examples curves as PNG.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import Mesh

from robust_jax.core import checks
from robust_jax.core import mesh as mesh_lib
from robust_jax.core.config import loop_config
from robust_jax.core.train import Training, drive, train
from robust_jax.data.array_batches import IndexBatches
from robust_jax.icl import baselines, theory
from robust_jax.icl.evaluate import normalized_squared_error, summarize_errors
from robust_jax.icl.gpt2 import Curriculum, gpt2_model, training_functions
from robust_jax.icl.lsa import LinearSelfAttention, lsa_predict, squared_loss
from robust_jax.icl.tasks import PromptSpec, apply_shift, prompts_at, sample_prompts

SHIFTS = ("none", "noisy_labels", "nonlinear_labels", "query_orthogonal", "query_other_distribution", "scale",
          "skewed", "subspace", "orthant", "prompt_length")


def check_config(config: ml_collections.ConfigDict, device_count: int | None = None) -> None:
    device_count = jax.device_count() if device_count is None else device_count
    dim = checks.check_int("config.dim", config.dim, minimum=1)
    checks.check_int("config.n_context", config.n_context, minimum=1)
    if len(config.train_eigenvalues) != dim:
        raise checks.ConfigError(
            f"config.train_eigenvalues={tuple(config.train_eigenvalues)!r} is not allowed: needs dim={dim} entries")
    for i, value in enumerate(config.train_eigenvalues):
        checks.check_float(f"config.train_eigenvalues[{i}]", value, positive=True)  # Λ positive definite
    for name in ("lsa_steps", "lsa_batch_size", "varying_steps", "varying_batch_size", "num_test_prompts",
                 "num_shift_prompts"):
        checks.check_int(f"config.{name}", config[name], minimum=1)
    for name in ("lsa_batch_size", "varying_batch_size"):
        checks.check_divisible(f"config.{name}", config[name], device_count, "the device count")
    for name in ("lsa_learning_rate", "varying_learning_rate", "init_scale"):
        checks.check_float(f"config.{name}", config[name], positive=True)
    checks.check_int("config.test_context", config.test_context, minimum=1)
    for i, c in enumerate(config.covariate_scales):
        checks.check_float(f"config.covariate_scales[{i}]", c, positive=True)
    for i, shift in enumerate(config.shifts):
        checks.check_choice(f"config.shifts[{i}]", shift, SHIFTS)
    checks.check_float("config.label_noise_std", config.label_noise_std, non_negative=True)
    checks.check_choice("config.gpt2_size", config.gpt2_size, ("tiny", "small", "standard"))
    checks.check_int("config.gpt2_points", config.gpt2_points, minimum=2)


def lsa_model(config) -> tuple[LinearSelfAttention, Callable]:
    """(the LSA in the full parametrisation with the paper's initialisation, its init_fn)."""
    model = LinearSelfAttention(dim=config.dim, reduced=False, init_scale=config.init_scale)

    def init_fn(key):
        n, dim = config.n_context, config.dim
        return model.init(key, jnp.zeros((1, n, dim)), jnp.zeros((1, n)), jnp.zeros((1, dim))), {}

    return model, init_fn


def lsa_optimizer(steps: int, learning_rate: float) -> optax.GradientTransformation:
    """SGD at a constant rate for the first half, then cosine decay to zero."""
    half = steps // 2
    return optax.sgd(optax.join_schedules(
        [optax.constant_schedule(learning_rate), optax.cosine_decay_schedule(learning_rate, steps - half)], [half]))


def lsa_loss_fn(model: LinearSelfAttention, spec: PromptSpec) -> Callable:
    """The core loss of LSA training: squared error of the query prediction on the prompts of `spec` drawn on device
    for the batch's prompt indices ({"index": (B,)})."""

    def loss_fn(params, model_state, batch, key, step, constants):
        del step, constants
        prompts = prompts_at(key, spec, batch["index"])
        predictions = model.apply(params, prompts.xs_BxMxD, prompts.ys_BxM, prompts.x_query_BxD)
        return squared_loss(predictions, prompts.target_B), ({}, model_state)

    return loss_fn


def _index_batches(batch_size: int) -> Callable[[], IndexBatches]:
    return lambda: IndexBatches(batch_size=batch_size, process_index=jax.process_index(),
                                process_count=jax.process_count())


def lsa_specs(config) -> dict[str, PromptSpec]:
    """The prompt distributions of the two LSA trainings: a fixed non-isotropic Λ ("lsa"), a fresh Exp(1) diagonal
    per prompt ("lsa_varying")."""
    covariance = np.diag(np.asarray(config.train_eigenvalues, np.float64))
    return {"lsa": PromptSpec(dim=config.dim, n_context=config.n_context, covariance=covariance),
            "lsa_varying": PromptSpec(dim=config.dim, n_context=config.n_context, covariance="random_diagonal")}


def load_data(config: ml_collections.ConfigDict) -> None:
    """The ICL study has no dataset: every step draws fresh prompts on device."""
    del config


def trainings(config: ml_collections.ConfigDict, workdir: str, data: None):
    """The study's trainings (`core.train.Training`): the two LSA stages by SGD (the discrete version of the paper's
    gradient flow) on fresh prompts, constant rate for the first half, then cosine decay to zero, which averages out
    the sampling noise of the final iterates; then Garg et al.'s GPT-2 ("gpt2", when config.num_steps > 0), driven
    by the train block, on identity-covariance prompts of config.gpt2_points points with their curriculum and loss
    over all prefixes. The GPT-2 accepts prompts as long as the shift suite's, but positions past the training length
    are never trained (ZFB's error spike for M > N)."""
    del workdir, data
    model, init_fn = lsa_model(config)
    stages = {"lsa": (config.lsa_steps, config.lsa_batch_size, config.lsa_learning_rate, "LSA"),
              "lsa_varying": (config.varying_steps, config.varying_batch_size, config.varying_learning_rate,
                              "LSA varying")}
    for name, spec in lsa_specs(config).items():
        steps, batch_size, learning_rate, desc = stages[name]
        yield Training(name=name, init_fn=init_fn, loss_fn=lsa_loss_fn(model, spec),
                       optimizer=lsa_optimizer(steps, learning_rate),
                       loop=loop_config(config, num_steps=steps, micro_batch_size=0),
                       batches=_index_batches(batch_size), desc=desc, model=model)
    if config.num_steps > 0:
        gpt2, gpt2_init, gpt2_loss = gpt2_setup(config, max(shift_prefixes(config)) + 1)
        yield Training(name="gpt2", init_fn=gpt2_init, loss_fn=gpt2_loss, optimizer=optax.adam(config.learning_rate),
                       loop=loop_config(config), batches=_index_batches(config.batch_size), desc="GPT-2",
                       model=gpt2)


def weights_of(params) -> tuple[np.ndarray, np.ndarray]:
    """(W^KQ, W^PV) of trained LSA parameters, in float64."""
    params = jax.device_get(params["params"])
    return np.asarray(params["w_kq"], np.float64), np.asarray(params["w_pv"], np.float64)


def minimum_errors(w_kq: np.ndarray, w_pv: np.ndarray, target: np.ndarray) -> dict:
    """Relative Frobenius error of u₋₁U₁₁ against `target`, and the largest entry that should be zero relative to
    the largest entry of either matrix."""
    dim = target.shape[0]
    product = w_pv[dim, dim] * w_kq[:dim, :dim]
    should_be_zero = np.concatenate([
        np.delete(w_kq.ravel(), [i * (dim + 1) + j for i in range(dim) for j in range(dim)]),
        np.delete(w_pv.ravel(), [dim * (dim + 1) + dim]),
    ])
    largest = max(np.abs(w_kq).max(), np.abs(w_pv).max())
    return {
        "rel_err": float(np.linalg.norm(product - target) / np.linalg.norm(target)),
        "zero_entries_max_rel": float(np.abs(should_be_zero).max() / largest),
    }


_lsa_predict = jax.jit(lsa_predict)
_one_step_gd = jax.jit(baselines.one_step_gradient_descent)
# Module-level jitted predictors: compiled once per prompt shape, then reused by every shift and scale.
_BASELINES = {
    "least_squares": jax.jit(baselines.least_squares),
    "averaging": jax.jit(baselines.averaging),
    "nearest_neighbours": jax.jit(baselines.nearest_neighbours),
    "zero": jax.jit(baselines.zero_estimator),
}
_normalized_squared_error = jax.jit(normalized_squared_error)


def _predictors(minimum_weights, gd_step_size) -> dict:
    min_kq, min_pv = (jnp.asarray(w, jnp.float32) for w in minimum_weights)
    return {
        "lsa_minimum": functools.partial(_lsa_predict, min_kq, min_pv),
        **_BASELINES,
        "gradient_descent_1": lambda xs, ys, xq: _one_step_gd(xs, ys, xq, gd_step_size),
    }


def evaluate_prompts(predictors: dict, spec: PromptSpec, *, key, num_prompts: int, prefixes, chunk: int = 2000):
    """{model: {k: per-prompt normalised squared errors (numpy)}} on the first k context points of each prompt."""
    errors = {name: {k: [] for k in prefixes} for name in predictors}
    for start in range(0, num_prompts, chunk):
        prompts = sample_prompts(jax.random.fold_in(key, start), spec, chunk)
        for k in prefixes:
            xs, ys = prompts.xs_BxMxD[:, :k], prompts.ys_BxM[:, :k]
            for name, predict in predictors.items():
                predictions = predict(xs, ys, prompts.x_query_BxD)
                errors[name][k].append(_normalized_squared_error(predictions, prompts.w_BxD, prompts.x_query_BxD))
    return {name: {k: np.concatenate(jax.device_get(v))[:num_prompts] for k, v in by_k.items()}
            for name, by_k in errors.items()}


def shift_prefixes(config) -> tuple[int, ...]:
    """The numbers of in-context examples the shift suite evaluates."""
    dim = config.dim
    return tuple(sorted({1, dim // 2 or 1, dim, 2 * dim, config.n_context, config.test_context}))


def gpt2_setup(config, max_points: int) -> tuple:
    """(Garg et al.'s GPT-2 for prompts of up to max_points points, init_fn, loss_fn) on identity-covariance prompts
    of config.gpt2_points points with their curriculum (optional)."""
    dim = config.dim
    model = gpt2_model(config.gpt2_size, dim, max_points=max_points)
    spec = PromptSpec(dim=dim, n_context=config.gpt2_points - 1)
    curriculum = (Curriculum.garg(dim, points_end=config.gpt2_points) if config.gpt2_curriculum
                  else Curriculum.fixed(dim, config.gpt2_points))
    return (model, *training_functions(model, spec, curriculum))


def gpt2_predictor(model, params) -> Callable:
    """The trained GPT-2 as a predictor (xs, ys, x_query) -> ŷ."""

    @jax.jit
    def predict(params, xs_BxMxD, ys_BxM, x_query_BxD):
        points = jnp.concatenate([xs_BxMxD, x_query_BxD[:, None]], axis=1)
        labels = jnp.concatenate([ys_BxM, jnp.zeros_like(ys_BxM[:, :1])], axis=1)
        return model.apply(params, points, labels)[:, -1]

    return functools.partial(predict, params)


def shifted_spec(config, base: PromptSpec, shift: str) -> PromptSpec:
    """The shift's test distribution; "skewed" and "subspace" replace the covariance with their own."""
    if shift in ("skewed", "subspace"):
        base = dataclasses.replace(base, covariance="identity")
    if shift == "none":
        return base
    if shift == "scale":
        return apply_shift(base, "scale", c=max(config.covariate_scales))
    if shift == "noisy_labels":
        return apply_shift(base, "noisy_labels", noise_std=config.label_noise_std)
    if shift == "prompt_length":
        return apply_shift(base, "prompt_length", n_context=2 * base.n_context)
    if shift == "query_orthogonal":
        return apply_shift(dataclasses.replace(base, n_context=min(base.n_context, base.dim - 1)), "query_orthogonal")
    return apply_shift(base, shift)


def plot_curves(curves: dict, path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6, 4))
    for name, by_k in curves.items():
        ks = sorted(by_k)
        means = [by_k[k]["mean"] for k in ks]
        axes.plot(ks, means, label=name, marker=".")
        axes.fill_between(ks, [by_k[k]["low"] for k in ks], [by_k[k]["high"] for k in ks], alpha=0.2)
    axes.set_xlabel("in-context examples")
    axes.set_ylabel("normalised squared error")
    axes.set_yscale("log")
    axes.set_title(title)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def run(config: ml_collections.ConfigDict, workdir: str, *, mesh: Mesh | None = None) -> dict:
    mesh = mesh_lib.make_data_mesh() if mesh is None else mesh
    dim, n_context = config.dim, config.n_context
    spec = lsa_specs(config)["lsa"]
    covariance = spec.covariance
    metrics: dict = {}
    trained = {name: result.state.params for name, (_, result) in
               drive(trainings(config, workdir, None), lambda t: train(t, workdir, mesh=mesh)).items()}

    # 1. LSA to the global minimum, fixed non-isotropic covariance.
    lsa_weights = weights_of(trained["lsa"])
    inverse_gamma = np.linalg.inv(np.asarray(theory.gamma(covariance, n_context), np.float64))
    errors = minimum_errors(*lsa_weights, inverse_gamma)
    metrics["lsa_minimum_rel_err"] = errors["rel_err"]
    metrics["lsa_zero_entries_max_rel"] = errors["zero_entries_max_rel"]

    # Theorem 4.2: squared error (ŷ − <w, x_q>)², not normalised, on fresh prompts of length M.
    test_spec = dataclasses.replace(spec, n_context=config.test_context)
    key = jax.random.key(config.seed + 100)
    predictor = {"lsa": functools.partial(_lsa_predict, *(jnp.asarray(w, jnp.float32) for w in lsa_weights))}
    lsa_errors = evaluate_prompts(predictor, test_spec, key=key, num_prompts=config.num_test_prompts,
                                  prefixes=(config.test_context,))["lsa"][config.test_context] * dim
    summary = summarize_errors(lsa_errors, confidence=0.9, seed=config.seed)
    metrics["lsa_test_mse"] = summary["mean"]
    metrics["lsa_test_mse_interval"] = [summary["low"], summary["high"]]
    metrics["theory_test_mse"] = float(theory.expected_test_error(covariance, n_context, config.test_context))
    metrics["lsa_vs_theory_rel_diff"] = abs(metrics["lsa_test_mse"] / metrics["theory_test_mse"] - 1)

    # 2. Varying covariance: a fresh Exp(1) diagonal per prompt.
    varying_weights = weights_of(trained["lsa_varying"])
    diagonals = np.random.default_rng(config.seed).exponential(1.0, size=(config.varying_minimum_samples, dim))
    a_kq, a_pv = (np.asarray(w, np.float64) for w in theory.varying_covariance_minimum(diagonals, n_context))
    matrix_a = a_pv[dim, dim] * a_kq[:dim, :dim]
    metrics["varying_minimum_rel_err"] = minimum_errors(*varying_weights, matrix_a)["rel_err"]

    # 3. Covariate scaling of the LSA trained on Λ, against least squares.
    lsa_and_least_squares = {
        "lsa": functools.partial(_lsa_predict, *(jnp.asarray(w, jnp.float32) for w in lsa_weights)),
        "least_squares": _BASELINES["least_squares"],
    }
    scale_table = {}
    for c in config.covariate_scales:
        scaled = apply_shift(test_spec, "scale", c=c)
        errs = evaluate_prompts(lsa_and_least_squares, scaled,
                                key=jax.random.fold_in(key, int(c * 1000)), num_prompts=config.num_shift_prompts,
                                prefixes=(config.test_context,))
        scale_table[f"c={c:g}"] = {name: float(np.mean(v[config.test_context])) for name, v in errs.items()}
    metrics["covariate_scale_table"] = scale_table

    # 4. The shift suite, Garg et al.'s protocol: identity training covariance, every model on the same prompts.
    identity = PromptSpec(dim=dim, n_context=n_context)
    prefixes = shift_prefixes(config)
    tuning = sample_prompts(jax.random.key(config.seed + 200), identity, 4096)
    gd_step_size = baselines.tune_gradient_descent_step_size(
        tuning.xs_BxMxD, tuning.ys_BxM, tuning.x_query_BxD, tuning.target_B)
    predictors = _predictors(theory.global_minimum(np.eye(dim), n_context), gd_step_size)
    if "gpt2" in trained:
        predictors["gpt2"] = gpt2_predictor(gpt2_setup(config, max(prefixes) + 1)[0], trained["gpt2"])
    shift_table = {}
    intervals = {}
    for shift in config.shifts:
        shifted = shifted_spec(config, dataclasses.replace(identity, n_context=max(prefixes)), shift)
        ks = tuple(k for k in prefixes if k <= shifted.n_context)
        errs = evaluate_prompts(predictors, shifted, key=jax.random.fold_in(key, 10_000 + SHIFTS.index(shift)),
                                num_prompts=config.num_shift_prompts, prefixes=ks)
        curves = {name: {k: summarize_errors(v, seed=config.seed) for k, v in by_k.items()}
                  for name, by_k in errs.items()}
        shift_table[shift] = {name: {f"k={k}": float(curves[name][k]["mean"]) for k in ks} for name in curves}
        intervals[shift] = {name: {f"k={k}": [float(curves[name][k]["low"]), float(curves[name][k]["high"])]
                                   for k in ks} for name in curves}
        if jax.process_index() == 0:
            plot_curves(curves, os.path.join(workdir, f"errors_{shift}.png"), f"shift: {shift} (d={dim}, N={n_context})")
    metrics["shift_table"] = shift_table
    metrics["shift_table_90ci"] = intervals
    if "gpt2" in predictors and "none" in shift_table:
        metrics["gpt2_error_at_2d"] = shift_table["none"]["gpt2"][f"k={2 * dim}"]
    return {"metrics": metrics}
