"""The notebook entry points: `robust_jax.get_config` from any directory, `robust_jax.load_run` on a finished run."""

import json
import os
import subprocess
import sys

import jax.numpy as jnp
import numpy as np

import robust_jax
from robust_jax.data.digits import load_digits_splits


def test_get_config_works_from_another_directory(tmp_path):
    code = ("import robust_jax; c = robust_jax.get_config('smoothing', 'tiny'); "
            "print(c.study, c.preset, c.num_steps, len(c.sigmas))")
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                            env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["smoothing", "tiny", "30", "2"]


def test_load_run_restores_parameters_that_reproduce_the_test_accuracy(tmp_path):
    workdir = str(tmp_path / "digits")
    config = robust_jax.get_config("digits", "tiny")
    results = robust_jax.run_study(config, workdir)
    run = robust_jax.load_run(workdir)
    assert json.loads(run.config.to_json_best_effort()) == json.loads(config.to_json_best_effort())
    assert run.config.features == tuple(config.features)  # tuples come back as tuples, not JSON lists
    assert run.metrics == results["metrics"]
    assert [row["step"] for row in run.history][-1] == config.num_steps
    # The test accuracy recomputed here, from the restored parameters and the test split, batch by batch in numpy.
    test = load_digits_splits(config.test_fraction, seed=config.seed)["test"]
    logits = np.asarray(run.model.apply(run.params, jnp.asarray(test["image"])))
    accuracy = float(np.mean(np.argmax(logits, -1) == test["label"]))
    assert accuracy == results["metrics"]["test_accuracy"]
