"""SIGKILL in the middle of an SDE cell and of the ICL GPT-2 training, then the same command: the results are
bitwise identical to an uninterrupted run (the digits case is in test_main.py)."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))


def _env():
    env = dict(os.environ)
    env["JAX_PLATFORMS"] = "cpu"
    env["JAX_NUM_CPU_DEVICES"] = "1"
    return env


def _command(args, workdir):
    return [sys.executable, "-m", "experiments.main", *args, f"--workdir={workdir}"]


def _run(args, workdir):
    result = subprocess.run(_command(args, workdir), cwd=REPO, env=_env(), capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads((workdir / "results.json").read_text())


def _kill_after_checkpoint(args, workdir, checkpoints, first, last):
    """Starts the run and SIGKILLs it once `checkpoints` holds a step in [first, last)."""
    proc = subprocess.Popen(_command(args, workdir), cwd=REPO, env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 400
    while time.time() < deadline and proc.poll() is None:
        steps = [int(p.name) for p in checkpoints.iterdir() if p.name.isdigit()] if checkpoints.exists() else []
        if any(first <= s < last for s in steps):
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (workdir / "results.json").exists(), "the run finished before it could be killed"


def _assert_same_results(whole, resumed):
    assert whole["metrics"] == resumed["metrics"]


@pytest.mark.slow
def test_sigkill_mid_sde_cell_then_rerun_is_bitwise_identical(tmp_path):
    # One cell of 40 epochs, 3 steps each, checkpointed every 2 epochs; early stopping off so the cell runs long.
    args = ["--config=sde:tiny", "--config.models=('lsde',)", "--config.missing_rates=(0.5,)",
            "--config.epochs=40", "--config.checkpoint_every=2", "--config.patience=100"]
    whole = _run(args, tmp_path / "whole")
    killed = tmp_path / "killed"
    cell = killed / "BasicMotions" / "missing=0.5" / "lsde" / "seed=0" / "checkpoints"
    _kill_after_checkpoint(args, killed, cell, first=6, last=120)  # past epoch 2, before the last
    _assert_same_results(whole, _run(args, killed))


@pytest.mark.slow
def test_sigkill_mid_icl_gpt2_training_then_rerun_is_bitwise_identical(tmp_path):
    args = ["--config=icl:tiny", "--config.shifts=('none',)", "--config.num_steps=200",
            "--config.checkpoint_every=20"]
    whole = _run(args, tmp_path / "whole")
    killed = tmp_path / "killed"
    _kill_after_checkpoint(args, killed, killed / "gpt2" / "checkpoints", first=20, last=200)
    _assert_same_results(whole, _run(args, killed))
