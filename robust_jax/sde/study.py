"""The missing-data robustness study of stable neural SDEs (Oh, Lim & Kim, ICLR 2024).

For every dataset x missing rate x model x seed (a cell): drop int(L * rate) time points per series, split
0.7 / 0.15 / 0.15 (stratified, seeded), build the Hermite control path, train with the reference protocol
(`robust_jax.sde.training`) and record the test accuracy at the epoch the protocol selects (by default the lowest
validation loss, as the reference code selects it). The claim under test: LSDE / LNSDE / GSDE keep their accuracy as
the missing rate grows, while the naive neural SDE degrades or diverges.

The cells of one model on one dataset (every missing rate and seed: their arrays have the same shapes) train as one
program, `training.member_training`: their parameters stacked, the step `jax.vmap`-ed over them, each cell with its
own keys, data order, evaluation and early stopping, so each gets what it would get alone, up to float rounding.
Workdir layout: `<dataset>/<model>/` holds one such training (checkpoints, metrics.jsonl with one value per cell,
TensorBoard, cell_result.json with one record per cell, in `member_cells` order); a finished one is never trained
again, an interrupted one resumes from its checkpoint. The report: `accuracy.md` (table) and
`accuracy_vs_missing.png`. `load_run` gives each training's parameters with the leading cell axis (`cell_variables`
takes one cell's).

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
  units["drop_0_to_50"], units["accuracy_missing_0.5"]   the drop, and the accuracy at 50% missing, per (dataset,
                                                         seed): the units the paper's claims are judged on
                                                         (core/verdicts.py has the contract): ids
                                                         "<dataset>/seed=<seed>", one series per model (only when
                                                         both rates are in the grid)
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
from robust_jax.core.train import fit_independent
from robust_jax.data.timeseries import offline_datasets, prepare_timeseries
from robust_jax.sde.models import HEAD_INITS, MODELS, READOUTS, SOLVERS, SDEClassifier
from robust_jax.sde.training import SELECTIONS, Protocol, member_training, train_members


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
    checks.check_choice("config.readout", config.readout, READOUTS)
    checks.check_choice("config.selection", config.selection, SELECTIONS)


def build_model(config: ml_collections.ConfigDict, model: str, num_classes: int) -> SDEClassifier:
    return SDEClassifier(
        model,
        num_classes,
        hidden_dim=config.hidden_dim,
        hidden_hidden_dim=config.hidden_hidden_dim,
        num_hidden_layers=config.num_hidden_layers,
        theory=config.theory,
        solver=config.solver,
        head_init=config.head_init,
        readout=config.readout,
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
        weight_decay_scale=config.weight_decay_scale,
        last_layer_grad_scale=config.last_layer_grad_scale,
        selection=config.selection,
    )


def member_cells(config: ml_collections.ConfigDict) -> list[tuple[float, int]]:
    """(missing rate, seed) of each cell of a dataset's trainings, in their member order; each cell's seed
    (config.seed + an entry of config.seeds) sets its data split, corruption and training."""
    return [(rate, config.seed + offset) for rate in config.missing_rates for offset in config.seeds]


def cell_variables(variables, config: ml_collections.ConfigDict, rate: float, seed: int):
    """One cell's variables out of a training's (`load_run`'s params of "<dataset>/<model>")."""
    member = member_cells(config).index((rate, seed))
    return jax.tree.map(lambda leaf: leaf[member], variables)


def load_data(config: ml_collections.ConfigDict) -> None:
    """None: each dataset's cells are prepared where their trainings are declared (`trainings`)."""
    del config


def trainings(config: ml_collections.ConfigDict, workdir: str, data: None):
    """One training per (dataset, model), "<dataset>/<model>", whose members are the cells of `member_cells`."""
    del workdir, data
    protocol = protocol_from(config)
    cells = member_cells(config)
    for dataset in config.datasets:
        datas = [prepare_timeseries(dataset, rate, seed, use_intensity=config.use_intensity,
                                    allow_download=config.allow_download) for rate, seed in cells]
        for model_name in config.models:
            yield member_training(f"{dataset}/{model_name}", build_model(config, model_name, datas[0].num_classes),
                                  datas, protocol, [seed for _, seed in cells],
                                  desc=f"{dataset} {model_name} ({len(cells)} cells)")


def run(config: ml_collections.ConfigDict, workdir: str, *, mesh: Mesh | None = None) -> dict:
    mesh = mesh_lib.make_data_mesh() if mesh is None else mesh
    datasets, rates, models = list(config.datasets), list(config.missing_rates), list(config.models)
    seeds = [config.seed + offset for offset in config.seeds]
    cells = member_cells(config)
    accuracy = {}  # (dataset, rate, model, seed) -> test accuracy at the selected epoch
    diverged = []
    declared = list(trainings(config, workdir, None))  # independent: nothing is sent back
    with Progress(len(declared), "sde grid", interval_s=0.0) as progress:
        done = lambda training, records: progress.update(  # noqa: E731
            1, training=training.name, test_accuracy=float(np.mean([r["test_accuracy"] for r in records])))
        results = fit_independent(declared, lambda training: train_members(training, workdir, mesh=mesh),
                                  on_done=done)
    for training, records in zip(declared, results):
        dataset, model_name = training.name.split("/")
        for (rate, seed), record in zip(cells, records, strict=True):
            accuracy[dataset, rate, model_name, seed] = record["test_accuracy"]
            if record["diverged_at_epoch"] is not None:
                diverged.append(f"{dataset} {rate_name(rate)} {model_name} seed={seed} "
                                f"(epoch {record['diverged_at_epoch']})")
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
    units = paired_units(accuracy, datasets, rates, models, seeds)
    if units:
        metrics["units"] = units
    return metrics


DROP_UNITS = "drop_0_to_50"
HALF_MISSING_UNITS = "accuracy_missing_0.5"


def paired_units(accuracy: dict, datasets, rates, models, seeds) -> dict:
    """Unit sets (core/verdicts.py's contract), one unit per (dataset, seed), one series per model: DROP_UNITS, the
    accuracy at 0% minus at 50% missing, and HALF_MISSING_UNITS, the accuracy at 50% missing; {} when the grid lacks
    either rate. A dataset and seed fix the split and the corruption, so the models on one unit are paired."""
    if 0.0 not in rates or 0.5 not in rates:
        return {}
    units = [(d, s) for d in datasets for s in seeds]
    ids = [f"{d}/seed={s}" for d, s in units]
    return {
        DROP_UNITS: {"unit": "dataset/seed", "ids": ids, "values": {
            m: [float(accuracy[d, 0.0, m, s] - accuracy[d, 0.5, m, s]) for d, s in units] for m in models}},
        HALF_MISSING_UNITS: {"unit": "dataset/seed", "ids": ids, "values": {
            m: [float(accuracy[d, 0.5, m, s]) for d, s in units] for m in models}},
    }


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
