"""The missing-data robustness study of stable neural SDEs (Oh, Lim & Kim, ICLR 2024).

For every dataset x missing rate x model x seed: drop int(L * rate) time points per series, split 0.7 / 0.15 / 0.15
(stratified, seeded), build the Hermite control path, train with the reference protocol (`robust_jax.sde.training`)
and record the test accuracy at the epoch of best validation accuracy. The claim under test: LSDE / LNSDE / GSDE keep
their accuracy as the missing rate grows, while the naive neural SDE degrades or diverges.

Workdir layout: `<dataset>/missing=<rate>/<model>/seed=<seed>/` holds one cell (checkpoints, metrics.jsonl,
TensorBoard, cell_result.json); a finished cell is never trained again, an interrupted one resumes from its checkpoint,
so an interrupted grid picks up where it stopped. The report: `accuracy.md` (table) and `accuracy_vs_missing.png`.

The reference code's protocol options are config fields, off unless a preset sets them (the `paper` preset does):
head_init ('xavier'), weight_decay_scale (0.01: Adam's coupled L2 decay = 0.01 x learning rate) and
last_layer_grad_scale (100).

results.json metrics:
  accuracy[model]["missing=<rate>"]                      mean over datasets and seeds
  accuracy_std[model]["missing=<rate>"]                  std over seeds of the dataset-averaged accuracy
  accuracy_per_dataset[dataset][model]["missing=<rate>"] mean over seeds
  accuracy_std_per_dataset[dataset][model][...]          std over seeds (0 with one seed)
  drop_0_to_50[model]                                    accuracy at 0% minus at 50% missing, averaged over datasets
                                                         (only when both rates are in the grid)
  drop_0_to_50_std[model]                                std over seeds of that drop (dataset-averaged per seed)
  diverged                                               cells whose training loss became non-finite
"""

from __future__ import annotations

import os

import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh

from robust_jax.core import checks
from robust_jax.core import mesh as mesh_lib
from robust_jax.core.progress import Progress
from robust_jax.data.timeseries import offline_datasets, prepare_timeseries
from robust_jax.sde.models import HEAD_INITS, MODELS, SOLVERS, SDEClassifier
from robust_jax.sde.training import Protocol, restore_cell, train_cell


def rate_name(rate: float) -> str:
    return f"missing={rate:g}"


AUTO_BATCH_SIZE = True  # config.batch_size = 0: the reference's rule, per dataset
# The reference's protocol options (config fields) switched off, and as the reference's code sets them.
REFERENCE_OPTIONS_OFF = {"head_init": "default", "weight_decay_scale": 0.0, "last_layer_grad_scale": 1.0}
REFERENCE_OPTIONS_ON = {"head_init": "xavier", "weight_decay_scale": 0.01, "last_layer_grad_scale": 100.0}


def check_config(config: ml_collections.ConfigDict, device_count: int | None = None) -> None:
    device_count = jax.device_count() if device_count is None else device_count
    allow_download = bool(config.allow_download)
    available = offline_datasets()
    for i, name in enumerate(checks.check_nonempty_unique("config.datasets", config.datasets)):
        if not isinstance(name, str) or (name not in available and not allow_download):
            raise checks.ConfigError(
                f"config.datasets[{i}]={name!r} is not allowed: the offline UCR/UEA sets are {', '.join(available)} "
                "(set config.allow_download=True to let aeon fetch other archive names)"
            )
    for i, rate in enumerate(checks.check_nonempty_unique("config.missing_rates", config.missing_rates)):
        checks.check_float(f"config.missing_rates[{i}]", rate, non_negative=True, below=1.0)
    for i, model in enumerate(checks.check_nonempty_unique("config.models", config.models)):
        checks.check_choice(f"config.models[{i}]", model, MODELS)
    for i, seed in enumerate(checks.check_nonempty_unique("config.seeds", config.seeds)):
        checks.check_int(f"config.seeds[{i}]", seed, minimum=0)
    checks.check_int("config.hidden_dim", config.hidden_dim, minimum=1)
    checks.check_int("config.hidden_hidden_dim", config.hidden_hidden_dim, minimum=1)
    checks.check_int("config.num_hidden_layers", config.num_hidden_layers, minimum=1)
    checks.check_choice("config.solver", config.solver, SOLVERS)
    checks.check_choice("config.theory", config.theory, (False, True))
    checks.check_choice("config.use_intensity", config.use_intensity, (False, True))
    checks.check_int("config.patience", config.patience, minimum=1)
    checks.check_int("config.early_stopping_start", config.early_stopping_start, minimum=0)
    checks.check_int("config.lr_step_epochs", config.lr_step_epochs, minimum=1)
    checks.check_float("config.lr_decay", config.lr_decay, positive=True)
    checks.check_int("config.eval_batch_size", config.eval_batch_size, minimum=1)
    checks.check_divisible("config.eval_batch_size", config.eval_batch_size, device_count, "the device count")
    checks.check_choice("config.head_init", config.head_init, HEAD_INITS)
    checks.check_float("config.weight_decay_scale", config.weight_decay_scale, non_negative=True)
    checks.check_float("config.last_layer_grad_scale", config.last_layer_grad_scale, positive=True)


def _protocol_option(config: ml_collections.ConfigDict, name: str):
    """A reference-protocol field; runs saved before the fields existed trained without the options."""
    return config.get(name, REFERENCE_OPTIONS_OFF[name])


def build_model(config: ml_collections.ConfigDict, model: str, num_classes: int) -> SDEClassifier:
    return SDEClassifier(
        model,
        num_classes,
        hidden_dim=config.hidden_dim,
        hidden_hidden_dim=config.hidden_hidden_dim,
        num_hidden_layers=config.num_hidden_layers,
        theory=config.theory,
        solver=config.solver,
        head_init=_protocol_option(config, "head_init"),
    )


def protocol_from(config: ml_collections.ConfigDict) -> Protocol:
    return Protocol(
        epochs=config.epochs,
        patience=config.patience,
        early_stopping_start=config.early_stopping_start,
        learning_rate=config.learning_rate,
        lr_step_epochs=config.lr_step_epochs,
        lr_decay=config.lr_decay,
        batch_size=config.batch_size,
        eval_batch_size=config.eval_batch_size,
        checkpoint_every_epochs=config.checkpoint_every,
        log_every_epochs=config.log_every,
        keep_checkpoints=config.keep_checkpoints,
        fsdp_min_size=config.fsdp_min_size,
        micro_batch_size=config.micro_batch_size,
        weight_decay_scale=_protocol_option(config, "weight_decay_scale"),
        last_layer_grad_scale=_protocol_option(config, "last_layer_grad_scale"),
    )


def cell_name(dataset: str, rate: float, model: str, seed: int) -> str:
    return os.path.join(dataset, rate_name(rate), model, f"seed={seed}")


def restore(config: ml_collections.ConfigDict, workdir: str):
    """({cell: model}, {cell: variables of its latest checkpoint}, metrics.jsonl of the first cell) of an SDE run,
    cells named "<dataset>/missing=<rate>/<model>/seed=<seed>" as in the workdir; untrained cells are left out."""
    protocol = protocol_from(config)
    models, variables = {}, {}
    for dataset in config.datasets:
        for rate in config.missing_rates:
            for seed in (config.seed + offset for offset in config.seeds):
                cells = {name: cell_name(dataset, rate, name, seed) for name in config.models}
                if not any(os.path.isdir(os.path.join(workdir, cell, "checkpoints")) for cell in cells.values()):
                    continue
                data = prepare_timeseries(dataset, rate, seed, use_intensity=config.use_intensity,
                                          allow_download=config.allow_download)
                for model_name, cell in cells.items():
                    if os.path.isdir(os.path.join(workdir, cell, "checkpoints")):
                        models[cell] = build_model(config, model_name, data.num_classes)
                        variables[cell] = restore_cell(os.path.join(workdir, cell), models[cell], data, protocol)
    first = cell_name(config.datasets[0], config.missing_rates[0], config.models[0], config.seed + config.seeds[0])
    return models, variables, os.path.join(workdir, first, "metrics.jsonl")


def run(config: ml_collections.ConfigDict, workdir: str, *, mesh: Mesh | None = None) -> dict:
    mesh = mesh_lib.make_data_mesh() if mesh is None else mesh
    protocol = protocol_from(config)
    datasets, rates, models = list(config.datasets), list(config.missing_rates), list(config.models)
    seeds = [config.seed + offset for offset in config.seeds]  # each cell's seed: data split, corruption, training
    accuracy = {}  # (dataset, rate, model, seed) -> test accuracy at the best validation epoch
    diverged = []
    total = len(datasets) * len(rates) * len(models) * len(seeds)
    with Progress(total, "sde grid", interval_s=0.0) as progress:
        for dataset in datasets:
            for rate in rates:
                for seed in seeds:
                    data = prepare_timeseries(dataset, rate, seed, use_intensity=config.use_intensity,
                                              allow_download=config.allow_download)
                    for model_name in models:
                        cell = os.path.join(workdir, cell_name(dataset, rate, model_name, seed))
                        desc = f"{dataset} {rate_name(rate)} {model_name} seed={seed}"
                        result = train_cell(cell, build_model(config, model_name, data.num_classes), data, protocol,
                                            seed, mesh=mesh, desc=desc)
                        accuracy[dataset, rate, model_name, seed] = result["test_accuracy"]
                        if result["diverged_at_epoch"] is not None:
                            diverged.append(f"{desc} (epoch {result['diverged_at_epoch']})")
                        progress.update(1, cell=desc, test_accuracy=result["test_accuracy"],
                                        best_epoch=result["best_epoch"])
    metrics = summarise(accuracy, datasets, rates, models, seeds)
    metrics["diverged"] = diverged
    if jax.process_index() == 0:
        write_report(metrics, rates, models, workdir)
    return {"metrics": metrics}


def summarise(accuracy: dict, datasets, rates, models, seeds) -> dict:
    """Means and standard deviations of the grid of test accuracies (see the module docstring)."""
    grid = np.array([[[[accuracy[d, r, m, s] for s in seeds] for r in rates] for m in models] for d in datasets],
                    dtype=np.float64)  # (dataset, model, rate, seed)
    per_dataset_mean, per_dataset_std = grid.mean(-1), grid.std(-1)
    seed_curves = grid.mean(0)  # (model, rate, seed): the dataset-averaged accuracy of each seed
    metrics = {
        "accuracy": {m: {rate_name(r): float(seed_curves[i, j].mean()) for j, r in enumerate(rates)}
                     for i, m in enumerate(models)},
        "accuracy_std": {m: {rate_name(r): float(seed_curves[i, j].std()) for j, r in enumerate(rates)}
                         for i, m in enumerate(models)},
        "accuracy_per_dataset": {
            d: {m: {rate_name(r): float(per_dataset_mean[k, i, j]) for j, r in enumerate(rates)}
                for i, m in enumerate(models)} for k, d in enumerate(datasets)},
        "accuracy_std_per_dataset": {
            d: {m: {rate_name(r): float(per_dataset_std[k, i, j]) for j, r in enumerate(rates)}
                for i, m in enumerate(models)} for k, d in enumerate(datasets)},
    }
    if 0.0 in rates and 0.5 in rates:
        clean, half = rates.index(0.0), rates.index(0.5)
        metrics["drop_0_to_50"] = {
            m: float(np.mean(per_dataset_mean[:, i, clean] - per_dataset_mean[:, i, half])) for i, m in enumerate(models)
        }
        # Each seed's dataset-averaged drop: its spread is the seed noise the claim has to beat.
        seed_drops = seed_curves[:, clean] - seed_curves[:, half]  # (model, seed)
        metrics["drop_0_to_50_std"] = {m: float(seed_drops[i].std()) for i, m in enumerate(models)}
    return metrics


def accuracy_table(metrics: dict, rates, models) -> str:
    header = "| model | " + " | ".join(f"{r:g}" for r in rates) + (
        " | drop 0→0.5 |" if "drop_0_to_50" in metrics else " |")
    lines = ["Test accuracy (mean over datasets and seeds ± std over seeds) by missing rate", "", header,
             "|" + "---|" * (len(rates) + 1 + ("drop_0_to_50" in metrics))]
    for m in models:
        cells = [f"{metrics['accuracy'][m][rate_name(r)]:.3f} ± {metrics['accuracy_std'][m][rate_name(r)]:.3f}"
                 for r in rates]
        if "drop_0_to_50" in metrics:
            cells.append(f"{metrics['drop_0_to_50'][m]:+.3f} ± {metrics['drop_0_to_50_std'][m]:.3f}")
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_report(metrics: dict, rates, models, workdir: str) -> None:
    """accuracy.md and accuracy_vs_missing.png: the dataset average and one panel per dataset."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "accuracy.md"), "w") as f:
        f.write(accuracy_table(metrics, rates, models))
    panels = [("mean over datasets", metrics["accuracy"], metrics["accuracy_std"])] + [
        (d, metrics["accuracy_per_dataset"][d], metrics["accuracy_std_per_dataset"][d])
        for d in metrics["accuracy_per_dataset"]]
    columns = min(4, len(panels))
    rows = -(-len(panels) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(4 * columns, 3.2 * rows), squeeze=False)
    for ax, (title, means, stds) in zip(axes.flat, panels):
        for m in models:
            mean = np.array([means[m][rate_name(r)] for r in rates])
            std = np.array([stds[m][rate_name(r)] for r in rates])
            ax.errorbar(rates, mean, yerr=std, marker="o", capsize=3, label=m)
        ax.set_title(title)
        ax.set_xlabel("missing rate")
        ax.set_ylabel("test accuracy")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(os.path.join(workdir, "accuracy_vs_missing.png"), dpi=100)
    plt.close(figure)
