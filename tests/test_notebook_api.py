"""The notebook entry points: `robust_jax.get_config` from any directory, `robust_jax.load_run` on a finished run."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import robust_jax
from robust_jax.core import run as run_lib
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
    assert list(run.model) == list(run.params) == list(run.history) == ["classifier"]
    assert [row["step"] for row in run.history["classifier"]][-1] == config.num_steps
    # The test accuracy recomputed here, from the restored parameters and the test split, batch by batch in numpy.
    test = load_digits_splits(config.test_fraction, seed=config.seed)["test"]
    logits = np.asarray(run.model["classifier"].apply(run.params["classifier"], jnp.asarray(test["image"])))
    accuracy = float(np.mean(np.argmax(logits, -1) == test["label"]))
    assert accuracy == results["metrics"]["test_accuracy"]


# Each study's tiny preset cut to a few steps: the trainings, not their outcomes, are what load_run must give back.
_SHORT = {
    "digits": {"num_steps": 4},
    "icl": {"lsa_steps": 4, "varying_steps": 4, "num_steps": 2},
    "rrcm": {"num_steps": 2, "rrcm.pretrain_steps": 3, "rrcm.finetune_steps": 2, "denoised.denoiser_steps": 2,
             "denoised.classifier_steps": 2, "denoised.finetune_steps": 2},
    "sde": {"epochs": 1, "missing_rates": (0.0,)},
    "omniview": {"num_steps": 2, "steps_per_epoch": 1, "pretrain_num_steps": 2, "variants": ("ovt", "itc_only")},
}


@pytest.mark.slow
@pytest.mark.parametrize("config_name", list(_SHORT))
def test_load_run_gives_back_every_training_bit_for_bit(tmp_path, config_name, one_device):
    """Every study's trainings, trained here (as the study's run trains them) with the parameters kept in memory, then
    `load_run` on the workdir: the same training names, and for each the restored tree equal bit for bit to what
    `Training.variables` makes of the trained parameters. `rrcm` covers the smoothing study's three methods."""
    from robust_jax.core.run import load_study
    from robust_jax.core.train import drive, train
    from robust_jax.omniview import tuning

    config = robust_jax.get_config(config_name, "tiny")
    for dotted, value in _SHORT[config_name].items():
        *parents, field = dotted.split(".")
        block = config
        for parent in parents:
            block = block[parent]
        block[field] = value
    workdir = str(tmp_path / config_name)
    study = run_lib.check(config, workdir, mesh=one_device)
    os.makedirs(workdir)
    with open(os.path.join(workdir, "config.json"), "w") as f:
        f.write(config.to_json_best_effort())

    def fit(training):
        if isinstance(training, tuning.VariantTraining):
            return tuning.tune(training, workdir, config, mesh=one_device)
        return train(training, workdir, mesh=one_device)

    trained = drive(study.trainings(config, workdir, study.load_data(config)), fit)
    run = robust_jax.load_run(workdir)
    expected = {name: t.variables(r.state.params, r.state.model_state) for name, (t, r) in trained.items()}
    assert set(run.params) == set(run.model) == set(run.history) == set(expected)
    assert len(expected) >= (1 if config_name == "digits" else 2)
    for name, tree in expected.items():
        restored = run.params[name]
        assert jax.tree.structure(restored) == jax.tree.structure(tree), name
        for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(tree), strict=True):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=name)
        assert run.history[name], name
    assert load_study(config.study) is study
