"""SIGKILL in the middle of a training, then the same command: every training's state, its logged metrics and the
results equal those of a run never killed, bit for bit (tests/sigkill.py). The digits case is in test_main.py, the
rRCM and omniview cases beside their studies' tests."""

import pytest

from robust_jax.core.config_loading import load_config
from tests import sigkill


def _config(args):
    name = args[0].split("=", 1)[1]
    overrides = [tuple(arg[len("--config."):].split("=", 1)) for arg in args[1:]]
    return load_config(name, overrides)


@pytest.mark.slow
def test_sigkill_mid_sde_cell_then_rerun_is_bitwise_identical(tmp_path):
    # One training of two cells (seeds 0, 1) of 40 epochs, 3 steps each, checkpointed every 2 epochs; early stopping
    # off so it runs long.
    args = ["--config=sde:tiny", "--config.models=('lsde',)", "--config.missing_rates=(0.5,)",
            "--config.seeds=(0,1)", "--config.epochs=40", "--config.checkpoint_every=2", "--config.patience=100"]
    sigkill.run(args, tmp_path / "whole")
    training = "BasicMotions/lsde"
    sigkill.kill_inside(args, tmp_path / "killed", training, first=6, last=120)  # past epoch 2, before the last
    sigkill.run(args, tmp_path / "killed")
    assert sigkill.compare_runs(_config(args), tmp_path / "whole", tmp_path / "killed") == [training]


@pytest.mark.slow
def test_sigkill_mid_icl_gpt2_training_then_rerun_is_bitwise_identical(tmp_path):
    args = ["--config=icl:tiny", "--config.shifts=('none',)", "--config.num_steps=200",
            "--config.checkpoint_every=20"]
    sigkill.run(args, tmp_path / "whole")
    sigkill.kill_inside(args, tmp_path / "killed", "gpt2", first=20, last=200)
    sigkill.run(args, tmp_path / "killed")
    assert sigkill.compare_runs(_config(args), tmp_path / "whole", tmp_path / "killed") == [
        "lsa", "lsa_varying", "gpt2"]
