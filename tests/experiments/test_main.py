"""The command line: bad configs exit 2 before writing anything, a SIGKILLed run resumes to the same bits, and a
NaN loss stops the run naming the step while the last good checkpoint stays loadable."""

import os
import re
import subprocess
import sys

import jax
import numpy as np
import pytest

from robust_jax.configs import digits
from robust_jax.core.config_loading import load_config
from robust_jax.core.train import restore_state
from robust_jax.digits import study
from tests import sigkill

REPO = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))
TINY = "--config=digits:tiny"


def _env(devices=1):
    env = dict(os.environ)
    env["JAX_PLATFORMS"] = "cpu"
    env["JAX_NUM_CPU_DEVICES"] = str(devices)
    return env


def _main(args, devices=1, timeout=240):
    return subprocess.run(
        [sys.executable, "-m", "experiments.main", *args],
        cwd=REPO, env=_env(devices), capture_output=True, text=True, timeout=timeout,
    )


BAD_CONFIGS = [
    ([TINY, "--config.study=nosuchstudy"], 1, r"config\.study='nosuchstudy'.*one of"),
    (["--config=digits:huge"], 1, r"preset='huge'.*one of"),
    ([TINY, "--config.no_such_field=3"], 1, r"no_such_field"),
    ([TINY, "--config.batch_size=abc"], 1, r"batch_size.*abc"),
    ([TINY, "--config.learning_rate=-0.1"], 1, r"config\.learning_rate=-0\.1.*must be > 0"),
    ([TINY, "--config.batch_size=0"], 1, r"config\.batch_size=0.*must be >= 1"),
    ([TINY, "--config.batch_size=12"], 8, r"config\.batch_size=12.*divisible by the device count \(8\)"),
    (["--config=nosuchfile:cpu"], 1, r"nosuchfile"),
]


@pytest.mark.parametrize("args,devices,pattern", BAD_CONFIGS, ids=[str(i) for i in range(len(BAD_CONFIGS))])
def test_bad_config_exits_2_and_writes_nothing(tmp_path, args, devices, pattern):
    workdir = tmp_path / "run"
    result = _main([*args, f"--workdir={workdir}"], devices=devices)
    assert result.returncode == 2, result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert re.search(pattern, lines[0]), lines[0]
    assert not workdir.exists()


@pytest.mark.slow
def test_sigkill_then_rerun_is_bitwise_identical_in_the_users_build(tmp_path):
    """Killed and run again as a user runs it (XLA's default threading and optimisation level): the same state,
    optimizer included, the same logged losses and the same results as a run never killed."""
    args = [TINY, "--config.num_steps=400", "--config.checkpoint_every=40", "--config.noise_sigma=0.25"]
    sigkill.run(args, tmp_path / "whole", user_build=True)
    sigkill.kill_inside(args, tmp_path / "killed", "classifier", first=40, last=400, user_build=True)
    sigkill.run(args, tmp_path / "killed", user_build=True)
    config = load_config("digits:tiny", [("num_steps", "400"), ("checkpoint_every", "40"), ("noise_sigma", "0.25")])
    assert sigkill.compare_runs(config, tmp_path / "whole", tmp_path / "killed") == ["classifier"]


def test_nan_loss_stops_with_step_and_keeps_good_checkpoint(tmp_path):
    workdir = tmp_path / "nan"
    result = _main([TINY, "--config.learning_rate=1e30", "--config.checkpoint_every=1", "--config.num_steps=20",
                    f"--workdir={workdir}"])
    assert result.returncode == 1
    match = re.search(r"loss became (nan|inf|-inf) at step (\d+)", result.stderr)
    assert match, result.stderr[-2000:]
    bad_step = int(match.group(2))
    assert not (workdir / "results.json").exists()
    config = digits.get_config("tiny")
    config.learning_rate = 1e30
    (training,) = study.trainings(config, str(workdir), None)
    state = jax.device_get(restore_state(training, str(workdir)))
    assert int(state.step) <= bad_step
    assert all(np.all(np.isfinite(leaf)) for leaf in jax.tree.leaves(state.params))
