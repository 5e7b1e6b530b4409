"""Running a study: check the config once, write `config.json`, run, write `results.json`; and opening a run again.

A study is a package `robust_jax.<study>` listed in `STUDIES`, with a config file `robust_jax/configs/<study>.py`
and a module `robust_jax.<study>.study` that has
  * `check_config(config)`: the study's own fields (the train block is checked here, for every study),
  * `run(config, workdir, *, mesh=None) -> {"metrics": ...}`: the study's results only (no timings), so two runs of
    the same config compare equal; `mesh` is the 1-D data mesh to run on (default: every device),
  * `load_data(config)`: the data its trainings read (None for a study that generates its data in the step),
  * `trainings(config, workdir, data)`: the generator that declares its trainings (`core.train.Training`), which
    `run` trains and `load_run` restores (`core.train.drive`),
  * optionally `AUTO_BATCH_SIZE = True` when batch_size 0 means "the study's rule".
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import time
from typing import Any

import jax
import ml_collections
from jax.sharding import Mesh

from robust_jax.core.checks import ConfigError
from robust_jax.core.config import check_train_block
from robust_jax.core.train import drive, has_checkpoint, restore

# Every study, in the order the reproduction runs them.
STUDIES = ("digits", "icl", "smoothing", "sde", "omniview")


def load_study(name):
    if name not in STUDIES:
        raise ConfigError(f"config.study={name!r} is not allowed: must be one of {list(STUDIES)}")
    return importlib.import_module(f"robust_jax.{name}.study")


def check(config: ml_collections.ConfigDict, workdir: str | None = None, *, mesh: Mesh | None = None):
    """Every check that can fail before work starts, run once; returns the study module.

    Batch sizes are checked against the devices of `mesh` (default: every device). A workdir that already holds a
    run of a different config is refused: resuming it would mix two experiments.
    """
    if "study" not in config:
        raise ConfigError("config.study is missing: the config must name its study")
    study = load_study(config.study)
    device_count = jax.device_count() if mesh is None else mesh.size
    check_train_block(config, device_count, auto_batch_size=getattr(study, "AUTO_BATCH_SIZE", False))
    study.check_config(config, device_count)
    changed = changed_fields(config, workdir) if workdir else None
    if changed:
        raise ConfigError(
            f"--workdir={workdir!r} holds a run with a different config (fields {changed} differ): "
            "use a new workdir, or the same config to resume"
        )
    return study


def changed_fields(config: ml_collections.ConfigDict, workdir: str) -> list[str] | None:
    """The top-level fields in which `config` differs from the `config.json` saved in `workdir` (sorted; [] when
    they agree), or None when the workdir holds no config."""
    saved = os.path.join(workdir, "config.json")
    if not os.path.exists(saved):
        return None
    with open(saved) as f:
        previous = json.load(f)
    current = json.loads(config.to_json_best_effort())
    return sorted(k for k in set(previous) | set(current) if previous.get(k) != current.get(k))


def run_checked(study, config: ml_collections.ConfigDict, workdir: str, *, mesh: Mesh | None = None) -> dict:
    """Runs a study whose config `check` passed (resuming if the workdir holds checkpoints) on `mesh` (default: a
    data mesh over every device); returns results."""
    start = time.perf_counter()
    if jax.process_index() == 0:
        os.makedirs(workdir, exist_ok=True)
        with open(os.path.join(workdir, "config.json"), "w") as f:
            f.write(config.to_json_best_effort(indent=2, sort_keys=True) + "\n")
    output = study.run(config, workdir, mesh=mesh)
    results = {
        "study": config.study,
        "preset": config.get("preset", None),
        "metrics": output["metrics"],
        "wall_s": time.perf_counter() - start,
        "devices": jax.device_count() if mesh is None else mesh.size,
        "jax_version": jax.__version__,
    }
    if jax.process_index() == 0:
        tmp = os.path.join(workdir, "results.json.tmp")
        with open(tmp, "w") as f:
            json.dump(results, f, indent=2, sort_keys=True)
            f.write("\n")
        os.replace(tmp, os.path.join(workdir, "results.json"))
    return results


def run_study(config: ml_collections.ConfigDict, workdir: str, *, mesh: Mesh | None = None) -> dict:
    """Checks the config once, then runs the study in `workdir` (resuming if it holds checkpoints); returns the
    results (also written to `workdir/results.json`). What `python -m experiments.main` does.

    mesh: the devices to run on, as a 1-D data mesh (`robust_jax.core.mesh.make_data_mesh(devices)`); default every
    device of every process."""
    return run_checked(check(config, workdir, mesh=mesh), config, workdir, mesh=mesh)


@dataclasses.dataclass
class Run:
    """A finished or interrupted run, opened again: `robust_jax.load_run(workdir)`.

    config: its config (locked). model, params, history: dicts by training name (the trainings' folders in the
    workdir, e.g. "classifier", "gaussian/sigma=0.25"): the trained model (a Flax module or an apply function), what
    it applies to (restored from the latest checkpoint), and the `metrics.jsonl` rows of that training, one dict per
    logged step. results: the `results.json` contents (None while the run is unfinished).
    """

    workdir: str
    config: ml_collections.ConfigDict
    model: dict[str, Any]
    params: dict[str, Any]
    results: dict | None
    history: dict[str, list[dict]]

    @property
    def metrics(self) -> dict | None:
        return None if self.results is None else self.results["metrics"]


def read_history(path: str) -> list[dict]:
    if not os.path.exists(path):
        return []
    rows = []
    with open(path) as f:
        for line in f:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line cut short by a kill
    return rows


def load_run(workdir: str) -> Run:
    """Opens the run in `workdir`: its config, and per training (as the study declares them, up to the first that has
    no checkpoint yet) its model, restored parameters and metric history; the results once the run has finished."""
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{workdir!r} holds no run: no config.json (was it written by run_study?)")
    with open(path) as f:
        fields = json.load(f, object_hook=lambda d: {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})
    config = ml_collections.ConfigDict(fields)  # JSON turned the tuples into lists; they are tuples again
    config.lock()
    study = load_study(config.study)
    declared = study.trainings(config, workdir, study.load_data(config))
    restored = drive(declared, lambda t: restore(t, workdir) if has_checkpoint(t, workdir) else None)
    models, params, history = {}, {}, {}
    for name, (training, result) in restored.items():
        if training.model is None:
            continue
        models[name] = training.model
        params[name] = training.variables(result.state.params, result.state.model_state)
        history[name] = read_history(os.path.join(workdir, name, "metrics.jsonl"))
    results = None
    if os.path.exists(os.path.join(workdir, "results.json")):
        with open(os.path.join(workdir, "results.json")) as f:
            results = json.load(f)
    return Run(workdir=workdir, config=config, model=models, params=params, results=results, history=history)
