"""The SIGKILL harness every resume test uses: run a command line to the end in one workdir; run it again in another,
SIGKILL it once a chosen training has a checkpoint inside a window of steps, and run it again there; then compare the
two workdirs training by training (`compare_runs`): the whole state of every training (parameters, optimizer state,
model state) bit for bit, the logged metrics row for row, and results.json but its wall time.

By default the runs inherit the test environment (XLA's single-threaded kernels, as tests/conftest.py sets them);
`user_build=True` runs them as a user does, with XLA's default threading and optimisation level.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_TEST_ONLY_XLA_FLAGS = ("--xla_cpu_multi_thread_eigen=false", "--xla_backend_optimization_level=0")


def environment(user_build: bool = False, **extra) -> dict:
    env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_NUM_CPU_DEVICES="1", PYTHONPATH=REPO, **extra)
    if user_build:
        flags = [flag for flag in env.get("XLA_FLAGS", "").split() if flag not in _TEST_ONLY_XLA_FLAGS]
        env["XLA_FLAGS"] = " ".join(flags)
    return env


def command(args, workdir) -> list[str]:
    return [sys.executable, "-m", "experiments.main", *args, f"--workdir={workdir}"]


def run(args, workdir, *, user_build: bool = False, timeout: float = 900) -> dict:
    """Runs the command line to the end; returns its results.json."""
    result = subprocess.run(command(args, workdir), cwd=REPO, env=environment(user_build), capture_output=True,
                            text=True, timeout=timeout)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads((workdir / "results.json").read_text())


def checkpoint_steps(directory) -> list[int]:
    return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit()) if directory.exists() else []


def kill_inside(args, workdir, training: str, first: int, last: int, *, user_build: bool = False,
                timeout: float = 600) -> int:
    """Starts the command line and SIGKILLs it once `workdir/<training>/checkpoints` holds a step in [first, last);
    asserts that the kill landed there (the run had not finished, and the newest checkpoint is inside the window);
    returns that step."""
    checkpoints = workdir / training / "checkpoints"
    process = subprocess.Popen(command(args, workdir), cwd=REPO, env=environment(user_build),
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + timeout
    while time.time() < deadline and process.poll() is None:
        if any(first <= step < last for step in checkpoint_steps(checkpoints)):
            break
        time.sleep(0.02)
    finished = process.poll()
    process.send_signal(signal.SIGKILL)
    stderr = process.communicate()[1]
    assert finished is None, f"the run ended (status {finished}) before it could be killed: {stderr[-2000:]}"
    assert not (workdir / "results.json").exists(), "the run finished before it could be killed"
    steps = checkpoint_steps(checkpoints)
    assert steps and first <= steps[-1] < last, f"killed with checkpoints {steps}, not inside [{first}, {last})"
    return steps[-1]


def _metrics_rows(path) -> list[dict]:
    rows = []
    with open(path) as f:
        for line in f:
            rows.append(json.loads(line))
    return rows


def compare_runs(config, whole, resumed) -> list[str]:
    """Asserts that two finished workdirs of `config` hold the same run: every training's whole state bit for bit
    (`core.train.restore_state`), its metrics.jsonl rows (the same steps, each logged once, the same values) and
    results.json but its wall time. Returns the names of the trainings compared."""
    from robust_jax.core.run import load_study
    from robust_jax.core.train import drive, restore, restore_state

    study = load_study(config.study)
    # Walked as run and load_run walk it: a later training may be declared from an earlier one's parameters.
    declared = drive(study.trainings(config, str(whole), study.load_data(config)), lambda t: restore(t, str(whole)))
    names = []
    for training, _ in declared.values():
        a, b = (jax.device_get(restore_state(training, str(workdir))) for workdir in (whole, resumed))
        assert jax.tree.structure(a) == jax.tree.structure(b), training.name
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=training.name)
        rows_a = _metrics_rows(whole / training.name / "metrics.jsonl")
        rows_b = _metrics_rows(resumed / training.name / "metrics.jsonl")
        steps = [row["step"] for row in rows_b]
        assert steps == sorted(set(steps)), f"{training.name}: a step was logged twice"
        differing = [(a, b) for a, b in zip(rows_a, rows_b) if a != b]
        assert len(rows_a) == len(rows_b) and not differing, (
            f"{training.name}: {len(rows_a)} vs {len(rows_b)} rows; first differing: {differing[:1]}")
        names.append(training.name)
    results_a, results_b = (json.loads((workdir / "results.json").read_text()) for workdir in (whole, resumed))
    results_a.pop("wall_s"), results_b.pop("wall_s")
    assert results_a == results_b
    return names
