"""Two local processes (jax.distributed on 127.0.0.1, CPU collectives), each feeding half of every batch, reach the
same parameters as one process that feeds the whole batch."""

import os
import subprocess
import sys

import numpy as np
import portpicker
import pytest

WORKER = os.path.join(os.path.dirname(__file__), "multihost_worker.py")
REPO = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))


def _env():
    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)
    env["JAX_PLATFORMS"] = "cpu"
    return env


@pytest.mark.slow
def test_two_processes_match_one(tmp_path):
    port = portpicker.pick_unused_port()
    procs = [
        subprocess.Popen(
            [sys.executable, WORKER, str(i), "2", str(port), str(tmp_path / "two"), str(tmp_path / "two.npz")],
            cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        for i in range(2)
    ]
    outputs = [p.communicate(timeout=240)[0] for p in procs]
    for p, out in zip(procs, outputs):
        assert p.returncode == 0, out[-3000:]
    one = subprocess.run(
        [sys.executable, WORKER, "0", "1", "0", str(tmp_path / "one"), str(tmp_path / "one.npz")],
        cwd=REPO, env=_env(), capture_output=True, text=True, timeout=240,
    )
    assert one.returncode == 0, one.stdout[-3000:] + one.stderr[-3000:]

    two_params, one_params = np.load(tmp_path / "two.npz"), np.load(tmp_path / "one.npz")
    assert sorted(two_params.files) == sorted(one_params.files)
    for name in one_params.files:
        np.testing.assert_allclose(two_params[name], one_params[name], atol=1e-5, rtol=0, err_msg=name)
    # Both processes trained: the checkpoint written jointly by the two processes is complete.
    assert (tmp_path / "two" / "classifier" / "checkpoints" / "12").is_dir()
