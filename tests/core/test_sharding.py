"""The same training run on 1 device and on 8 CPU devices gives the same parameters."""

import pytest
import jax
import numpy as np

from robust_jax.configs import digits
from robust_jax.core.mesh import make_data_mesh
from robust_jax.core.train import drive, train
from robust_jax.digits import study


def _train(workdir, devices, **overrides):
    """The digits study's metrics and its trained state, on the given devices."""
    config = digits.get_config("tiny")
    config.update(overrides)
    mesh = make_data_mesh(devices)
    metrics = study.run(config, str(workdir), mesh=mesh)["metrics"]
    # The run is finished, so training again only reads the checkpoint back, laid out on the mesh.
    trained = drive(study.trainings(config, str(workdir), study.load_data(config)),
                    lambda training: train(training, str(workdir), mesh=mesh))
    return {"metrics": metrics, "state": trained["classifier"][1].state}


@pytest.mark.slow
def test_one_device_matches_eight(tmp_path):
    assert jax.device_count() == 8
    one = _train(tmp_path / "one", jax.devices()[:1], noise_sigma=0.25)
    eight = _train(tmp_path / "eight", jax.devices(), noise_sigma=0.25)
    leaves_one = jax.tree.leaves(jax.device_get(one["state"].params))
    leaves_eight = jax.tree.leaves(jax.device_get(eight["state"].params))
    for a, b in zip(leaves_one, leaves_eight, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=0)
    assert one["metrics"]["test_accuracy"] == eight["metrics"]["test_accuracy"]


def test_fsdp_matches_replicated(tmp_path):
    """Sharding the larger weights over 'data' changes where they live, not what is computed."""
    replicated = _train(tmp_path / "rep", jax.devices())
    fsdp = _train(tmp_path / "fsdp", jax.devices(), fsdp_min_size=64)
    sharded = [leaf.sharding.spec for leaf in jax.tree.leaves(fsdp["state"].params)]
    assert any("data" in tuple(spec) for spec in sharded)
    for a, b in zip(jax.tree.leaves(replicated["state"].params), jax.tree.leaves(fsdp["state"].params), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5, rtol=0)
