"""Resumption of the rRCM parts after SIGKILL: certification of the smoothed rRCM classifier through
certify_dataset (the rerun's TSV equals an uninterrupted run's), and rRCM pretraining through experiments.main
(the resumed run's parameters and results are bitwise those of an uninterrupted run)."""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from robust_jax.smoothing import certification_path, certify_dataset, read_certification_log

REPO = pathlib.Path(__file__).resolve().parents[2]
SETTINGS = dict(sigma=0.25, n0=16, n=128, alpha=0.01, batch_size=64, every=60, show_progress=False)
SEED = 4321


def rrcm_classifier():
    """A tiny rRCM classifier with a random head, its certification apply_fn, and test digits."""
    import jax.numpy as jnp

    from robust_jax.data.digits import load_digits_splits
    from robust_jax.smoothing.rrcm_apply import rrcm_apply_fn
    from tests.smoothing.rrcm_tiny_model import IMAGE_SHAPE, init_key, tiny_rrcm_net

    model = tiny_rrcm_net(num_classes=10)
    params = jax.jit(lambda k: model.init(k, jnp.zeros((1, *IMAGE_SHAPE)), 1.0, project=False))(init_key())["params"]
    head = params["backbone"]["head"]
    head["kernel"] = jax.random.normal(jax.random.key(7), head["kernel"].shape)
    test = load_digits_splits(0.2, seed=0)["test"]
    return rrcm_apply_fn(model, SETTINGS["sigma"]), {"params": params}, test["image"], test["label"]


_CHILD = """
import sys, time
sys.path.insert(0, {repo!r})
import jax
from robust_jax.smoothing import dataset
from tests.smoothing.test_rrcm_resume import SETTINGS, SEED, rrcm_classifier

real_certify = dataset.certify_unchecked
def slow_certify(*args, **kwargs):
    result = real_certify(*args, **kwargs)
    time.sleep(0.4)
    return result
dataset.certify_unchecked = slow_certify
apply_fn, variables, images, labels = rrcm_classifier()
dataset.certify_dataset(apply_fn, variables, images, labels, key=jax.random.key(SEED), workdir={workdir!r},
                        **SETTINGS)
"""


def _without_seconds(path):
    return [line.rsplit("\t", 1)[0] for line in open(path).read().splitlines()]


def _certify(workdir):
    apply_fn, variables, images, labels = rrcm_classifier()
    return certify_dataset(apply_fn, variables, images, labels, key=jax.random.key(SEED), workdir=str(workdir),
                           **SETTINGS)


@pytest.mark.slow  # about 25 s on an idle 2-core CPU (a child process compiles the network and certification)
def test_sigkill_during_rrcm_certification_then_rerun_gives_the_uninterrupted_tsv(tmp_path):
    workdir = tmp_path / "killed"
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD.format(repo=str(REPO), workdir=str(workdir))],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu"}, stderr=subprocess.PIPE)
    path = certification_path(str(workdir), SETTINGS["sigma"])
    total = len(range(0, 360, SETTINGS["every"]))
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and child.poll() is None:
        if os.path.exists(path) and open(path).read().count("\n") >= 1 + 2:
            break
        time.sleep(0.02)
    assert child.poll() is None, child.stderr.read().decode()[-2000:]
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    child.stderr.close()
    finished_before_kill = len(read_certification_log(path))
    assert 2 <= finished_before_kill < total

    _certify(workdir)
    resumed = _without_seconds(path)
    assert resumed == _without_seconds(_certify(tmp_path / "uninterrupted"))
    assert len(resumed) == 1 + total
    # The classifier is not constant: the certified predictions differ between examples.
    assert len({line.split("\t")[2] for line in resumed[1:]}) > 1


def _env():
    return {**os.environ, "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu", "JAX_NUM_CPU_DEVICES": "1"}


ARGS = ["--config=rrcm:tiny", "--config.methods=('rrcm',)", "--config.sigmas=(0.5,)",
        "--config.rrcm.pretrain_steps=30", "--config.checkpoint_every=5", "--config.certify_every=120"]


def _command(workdir):
    return [sys.executable, "-m", "experiments.main", *ARGS, f"--workdir={workdir}"]


def _run(workdir):
    result = subprocess.run(_command(workdir), cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads((workdir / "results.json").read_text())


def _pretrained(workdir):
    from robust_jax.configs import rrcm
    from robust_jax.core.train import restore_latest_state
    from robust_jax.smoothing import rrcm_method
    from robust_jax.smoothing.rrcm_losses import make_pretrain_init_fn

    block = rrcm.get_config("tiny").rrcm
    block.pretrain_steps = 30
    network = rrcm_method.build_network(block, 0, (8, 8, 1))
    state = restore_latest_state(str(workdir / "rrcm" / "pretrain"), make_pretrain_init_fn(network, (8, 8, 1)),
                                 rrcm_method.pretrain_optimizer(block))
    return jax.device_get((state.params, state.model_state, state.opt_state))


@pytest.mark.slow
def test_sigkill_mid_pretraining_then_rerun_is_bitwise_identical(tmp_path):
    whole = _run(tmp_path / "whole")
    killed = tmp_path / "killed"
    checkpoints = killed / "rrcm" / "pretrain" / "checkpoints"
    process = subprocess.Popen(_command(killed), cwd=REPO, env=_env(), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.time() + 400
    while time.time() < deadline and process.poll() is None:
        steps = [int(p.name) for p in checkpoints.iterdir() if p.name.isdigit()] if checkpoints.exists() else []
        if any(5 <= step < 30 for step in steps):
            break
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (killed / "results.json").exists(), "the run finished before it could be killed"
    assert not (killed / "rrcm" / "pretrain" / "checkpoints" / "30").exists()
    resumed = _run(killed)
    assert resumed["metrics"] == whole["metrics"]
    for a, b in zip(jax.tree.leaves(_pretrained(tmp_path / "whole")), jax.tree.leaves(_pretrained(killed))):
        np.testing.assert_array_equal(a, b)
    history = [json.loads(line)["step"] for line in open(killed / "rrcm" / "pretrain" / "metrics.jsonl")]
    assert history == sorted(set(history)) and history[-1] == 30
