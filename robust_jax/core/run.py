"""Running a study: check the config, write `config.json`, run, write `results.json`.

A study is a module `robust_jax.<study>.study` with `check_config(config)` and `run(config, workdir) -> dict`
whose "metrics" entry holds the study's results only (no timings), so two runs of the same config compare equal.
"""

from __future__ import annotations

import importlib
import json
import os
import pkgutil
import time

import jax
import ml_collections

import robust_jax
from robust_jax.core.config_checks import ConfigError


def available_studies() -> list[str]:
    root = os.path.dirname(robust_jax.__file__)
    return sorted(
        info.name
        for info in pkgutil.iter_modules([root])
        if info.ispkg and os.path.exists(os.path.join(root, info.name, "study.py"))
    )


def load_study(name):
    studies = available_studies()
    if name not in studies:
        raise ConfigError(f"config.study={name!r} is not allowed: must be one of {studies}")
    return importlib.import_module(f"robust_jax.{name}.study")


def check(config: ml_collections.ConfigDict, workdir: str | None = None):
    """Every check that can fail before work starts; returns the study module.

    A workdir that already holds a run of a different config is refused: resuming it would mix two experiments.
    """
    if "study" not in config:
        raise ConfigError("config.study is missing: the config must name its study")
    study = load_study(config.study)
    study.check_config(config)
    saved = os.path.join(workdir, "config.json") if workdir else None
    if saved and os.path.exists(saved):
        with open(saved) as f:
            previous = json.load(f)
        current = json.loads(config.to_json_best_effort())
        changed = sorted(k for k in set(previous) | set(current) if previous.get(k) != current.get(k))
        if changed:
            raise ConfigError(
                f"--workdir={workdir!r} holds a run with a different config (fields {changed} differ): "
                "use a new workdir, or the same config to resume"
            )
    return study


def run_study(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Checks the config, then runs the study in `workdir` (resuming if it holds checkpoints); returns results."""
    study = check(config, workdir)
    start = time.perf_counter()
    if jax.process_index() == 0:
        os.makedirs(workdir, exist_ok=True)
        with open(os.path.join(workdir, "config.json"), "w") as f:
            f.write(config.to_json_best_effort(indent=2, sort_keys=True) + "\n")
    output = study.run(config, workdir)
    results = {
        "study": config.study,
        "preset": config.get("preset", None),
        "metrics": output["metrics"],
        "wall_s": time.perf_counter() - start,
        "devices": jax.device_count(),
        "jax_version": jax.__version__,
    }
    if jax.process_index() == 0:
        tmp = os.path.join(workdir, "results.json.tmp")
        with open(tmp, "w") as f:
            json.dump(results, f, indent=2, sort_keys=True)
            f.write("\n")
        os.replace(tmp, os.path.join(workdir, "results.json"))
    return results
