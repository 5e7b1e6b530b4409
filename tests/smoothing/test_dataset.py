"""Dataset certification: one TSV line per example, and resuming gives the lines an uninterrupted run gives."""

import os
import pathlib
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from robust_jax.smoothing import certification_path, certify_dataset, load_certification_results, read_certification_log
from robust_jax.smoothing.dataset import HEADER

from .linear_classifier import halfspace_logits, hyperplane, point_at_distance

SETTINGS = dict(sigma=0.5, n0=20, n=200, alpha=0.01, batch_size=64, every=2, show_progress=False)
EXAMPLES = 14  # every 2nd -> 7 certified


def _dataset():
    params = hyperplane()
    distances = np.linspace(-0.6, 0.6, EXAMPLES)
    images = np.stack([point_at_distance(params, distance) for distance in distances])
    labels = (distances > 0).astype(np.int64)
    labels[4] = 1 - labels[4]  # one wrong label, so the correct column is not constant
    return params, images, labels


def _without_seconds(path):
    lines = open(path).read().splitlines()
    return [line.rsplit("\t", 1)[0] for line in lines]


def _certify(workdir, key, **overrides):
    params, images, labels = _dataset()
    return certify_dataset(halfspace_logits, params, images, labels, key=key, workdir=str(workdir),
                           **{**SETTINGS, **overrides})


@pytest.fixture
def uninterrupted(tmp_path, key):
    return _without_seconds(_certify(tmp_path / "uninterrupted", key))


def test_log_has_one_line_per_certified_example(uninterrupted):
    assert uninterrupted[0] == HEADER.rsplit("\t", 1)[0]
    rows = [line.split("\t") for line in uninterrupted[1:]]
    assert [int(row[0]) for row in rows] == list(range(0, EXAMPLES, 2))
    _, _, labels = _dataset()
    for index, label, prediction, radius, correct in rows:
        assert int(label) == labels[int(index)]
        assert int(correct) == (int(prediction) == int(label))
        assert (int(prediction) == -1) == (float(radius) == 0.0)
    assert any(row[4] == "0" for row in rows) and any(row[4] == "1" for row in rows)


def test_resume_after_a_limit_and_a_truncated_line_matches_uninterrupted_run(tmp_path, key, uninterrupted):
    workdir = tmp_path / "resumed"
    path = _certify(workdir, key, max_new_examples=3)
    assert len(read_certification_log(path)) == 3
    with open(path, "a") as log:
        log.write("6\t1\t1\t0.12")  # what a kill in the middle of a write leaves
    assert len(read_certification_log(path)) == 3
    _certify(workdir, key, max_new_examples=2)
    _certify(workdir, key)
    assert _without_seconds(path) == uninterrupted
    assert _certify(workdir, key) == path  # nothing left: no new lines
    assert _without_seconds(path) == uninterrupted


def test_truncated_header_is_rewritten(tmp_path, key, uninterrupted):
    workdir = tmp_path / "header"
    workdir.mkdir()
    path = certification_path(str(workdir), SETTINGS["sigma"])
    open(path, "w").write(HEADER[:7])
    _certify(workdir, key)
    assert _without_seconds(path) == uninterrupted


def test_resume_with_other_settings_is_refused(tmp_path, key):
    _certify(tmp_path, key, max_new_examples=1)
    with pytest.raises(ValueError, match="n=300"):
        _certify(tmp_path, key, n=300)
    with pytest.raises(ValueError, match="key"):
        _certify(tmp_path, jax.random.fold_in(key, 1))


def test_malformed_complete_line_is_an_error_not_silently_dropped(tmp_path, key):
    path = _certify(tmp_path, key, max_new_examples=1)
    with open(path, "a") as log:
        log.write("garbage\n")
    with pytest.raises(ValueError, match="malformed"):
        _certify(tmp_path, key)


def test_results_load_for_the_report(tmp_path, key):
    results = load_certification_results(_certify(tmp_path, key))
    _, _, labels = _dataset()
    np.testing.assert_array_equal(results.labels, labels[::2])
    assert len(results.predictions) == len(results.radii) == len(labels[::2])


@pytest.mark.parametrize(
    "overrides, name",
    [({"every": 0}, "every"), ({"sigma": -1.0}, "sigma"), ({"max_new_examples": -1}, "max_new_examples")],
)
def test_bad_dataset_arguments_raise_before_any_file_is_written(tmp_path, key, overrides, name):
    with pytest.raises(ValueError, match=name):
        _certify(tmp_path / "bad", key, **overrides)
    assert not (tmp_path / "bad").exists()


# The child certifies slowly (a sleep after each example) so that it is killed part-way.
_CHILD = """
import sys, time
sys.path.insert(0, {tests_dir!r})
import jax
from robust_jax.smoothing import dataset
from smoothing.linear_classifier import halfspace_logits
from smoothing.test_dataset import SETTINGS, _dataset

real_certify = dataset.certify_unchecked
def slow_certify(*args, **kwargs):
    result = real_certify(*args, **kwargs)
    time.sleep(0.3)
    return result
dataset.certify_unchecked = slow_certify
params, images, labels = _dataset()
dataset.certify_dataset(halfspace_logits, params, images, labels, key=jax.random.key({seed}),
                        workdir={workdir!r}, **SETTINGS)
"""


def test_sigkill_during_certification_then_resume(tmp_path):
    seed = 1234
    key = jax.random.key(seed)
    workdir = tmp_path / "killed"
    repo_root = pathlib.Path(__file__).resolve().parents[2]
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD.format(tests_dir=str(repo_root / "tests"), seed=seed, workdir=str(workdir))],
        cwd=repo_root, env={**os.environ, "PYTHONPATH": str(repo_root), "JAX_PLATFORMS": "cpu"},
        stderr=subprocess.PIPE,
    )
    path = certification_path(str(workdir), SETTINGS["sigma"])
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and child.poll() is None:
        if os.path.exists(path) and open(path).read().count("\n") >= 1 + 2:
            break
        time.sleep(0.02)
    assert child.poll() is None, child.stderr.read().decode()[-2000:]
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    child.stderr.close()
    finished_before_kill = len(read_certification_log(path))
    assert 2 <= finished_before_kill < EXAMPLES // 2

    _certify(workdir, key)
    assert _without_seconds(path) == _without_seconds(_certify(tmp_path / "uninterrupted", key))
