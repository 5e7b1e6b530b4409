"""The command line: bad configs exit 2 before writing anything, a SIGKILLed run resumes to the same bits, and a
NaN loss stops the run naming the step while the last good checkpoint stays loadable."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import optax
import pytest

from robust_jax.configs import digits
from robust_jax.core.train import restore_latest_state
from robust_jax.digits import study

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


def _final_params(workdir, config):
    model = study.build_model(config)
    import jax.numpy as jnp

    state = restore_latest_state(
        str(workdir),
        lambda key: (model.init(key, jnp.zeros((1, 8, 8, 1))), {}),
        optax.adam(config.learning_rate),
        mesh=None,
    )
    return jax.device_get(state)


@pytest.mark.slow
def test_sigkill_then_rerun_is_bitwise_identical(tmp_path):
    overrides = ["--config.num_steps=400", "--config.checkpoint_every=40", "--config.noise_sigma=0.25"]
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    assert _main([TINY, *overrides, f"--workdir={whole}"]).returncode == 0

    args = [sys.executable, "-m", "experiments.main", TINY, *overrides, f"--workdir={killed}"]
    proc = subprocess.Popen(args, cwd=REPO, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 180
    checkpoints = killed / "checkpoints"
    while time.time() < deadline:
        steps = [int(p.name) for p in checkpoints.iterdir() if p.name.isdigit()] if checkpoints.exists() else []
        if any(40 <= s < 400 for s in steps):
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "results.json").exists(), "the run finished before it could be killed"

    rerun = _main([TINY, *overrides, f"--workdir={killed}"])
    assert rerun.returncode == 0, rerun.stderr[-2000:]

    config = digits.get_config("tiny")
    a, b = _final_params(whole, config), _final_params(killed, config)
    assert int(a.step) == int(b.step) == 400
    for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params), strict=True):
        np.testing.assert_array_equal(x, y)
    metrics_a = json.loads((whole / "results.json").read_text())["metrics"]
    metrics_b = json.loads((killed / "results.json").read_text())["metrics"]
    assert metrics_a == metrics_b
    logged = [json.loads(line)["step"] for line in (killed / "metrics.jsonl").read_text().splitlines()]
    assert logged == sorted(set(logged)), "resumed run must not log a step twice"


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
    state = _final_params(workdir, config)
    assert int(state.step) <= bad_step
    assert all(np.all(np.isfinite(leaf)) for leaf in jax.tree.leaves(state.params))
