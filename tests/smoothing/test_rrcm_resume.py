"""Resumption of the rRCM parts after SIGKILL: certification of the smoothed rRCM classifier through
certify_dataset (the rerun's TSV equals an uninterrupted run's), and the trainings of the rRCM and denoised methods
through experiments.main, killed inside the rRCM pretraining, its fine-tuning and each denoised stage (every
training's state, logged losses and results equal an uninterrupted run's, bit for bit: tests/sigkill.py)."""

import os
import pathlib
import signal
import subprocess
import sys
import time

import jax
import pytest

from robust_jax.smoothing import certification_path, certify_dataset, read_certification_log
from tests import sigkill

REPO = pathlib.Path(__file__).resolve().parents[2]
SETTINGS = dict(sigma=0.25, n0=16, n=128, alpha=0.01, batch_size=64, every=60, show_progress=False)
SEED = 4321


def rrcm_classifier():
    """A tiny rRCM classifier with a random head, its certification apply_fn, and test digits."""
    import jax.numpy as jnp

    from robust_jax.data.digits import load_digits_splits
    from robust_jax.smoothing.methods.rrcm.apply import rrcm_apply_fn
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


ARGS = ["--config=rrcm:tiny", "--config.methods=('rrcm',)", "--config.sigmas=(0.5,)",
        "--config.rrcm.pretrain_steps=30", "--config.checkpoint_every=5", "--config.certify_every=120"]


@pytest.mark.slow
def test_sigkill_mid_pretraining_then_rerun_is_bitwise_identical(tmp_path):
    """Killed inside the pretraining, run again: every training (pretraining and fine-tuning) ends in the state of a
    run never killed, bit for bit, with the same logged losses and results."""
    args = ARGS
    sigkill.run(args, tmp_path / "whole")
    sigkill.kill_inside(args, tmp_path / "killed", "rrcm/pretrain", first=5, last=30)
    sigkill.run(args, tmp_path / "killed")
    trainings = sigkill.compare_runs(_config(), tmp_path / "whole", tmp_path / "killed")
    assert trainings == ["rrcm/pretrain", "rrcm/sigma=0.5"]


@pytest.mark.slow
def test_sigkill_mid_fine_tuning_and_mid_denoised_stages_then_rerun_is_bitwise_identical(tmp_path):
    """The same for one run killed in turn inside each of the denoised methods' stages (the denoiser, the clean
    classifier, the fine-tuning on denoised images) and then inside the rRCM fine-tuning, before it ends."""
    args = [ARGS[0], "--config.methods=('denoised','denoised_finetuned','rrcm')", "--config.rrcm.finetune_steps=40",
            "--config.denoised.denoiser_steps=40", "--config.denoised.classifier_steps=40",
            "--config.denoised.finetune_steps=40", *ARGS[2:]]
    sigkill.run(args, tmp_path / "whole")
    for training in ("denoised/denoiser", "denoised/classifier", "denoised_finetuned/sigma=0.5", "rrcm/sigma=0.5"):
        sigkill.kill_inside(args, tmp_path / "killed", training, first=5, last=40)
    sigkill.run(args, tmp_path / "killed")
    trainings = sigkill.compare_runs(_config(args), tmp_path / "whole", tmp_path / "killed")
    assert trainings == ["denoised/denoiser", "denoised/classifier", "denoised_finetuned/sigma=0.5",
                         "rrcm/pretrain", "rrcm/sigma=0.5"]


def _config(args=ARGS):
    from robust_jax.core.config_loading import load_config

    return load_config("rrcm:tiny", [tuple(arg[len("--config."):].split("=", 1)) for arg in args[1:]])
