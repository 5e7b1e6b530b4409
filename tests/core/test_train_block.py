"""The train block: the same training fields in every study's config, checked once, and meaning the same thing
(FSDP gives the same training as replicated parameters outside digits too)."""

import jax
import numpy as np
import pytest

import robust_jax
from robust_jax.core import run as run_lib
from robust_jax.core.checks import ConfigError
from robust_jax.core.config import TRAIN_FIELDS
from robust_jax.core.config_loading import load_config
from robust_jax.core.mesh import make_data_mesh
from robust_jax.core.train import train

PRESETS = [(study, preset) for study in robust_jax.STUDIES
           for preset in robust_jax.core.config_loading.config_module(study).PRESETS]


@pytest.mark.parametrize("study,preset", PRESETS, ids=[f"{s}:{p}" for s, p in PRESETS])
def test_every_config_has_the_train_block(study, preset):
    config = robust_jax.get_config(study, preset)
    assert config.study == study and config.preset == preset
    assert set(TRAIN_FIELDS) <= set(config)
    assert ("num_steps" in config) != ("epochs" in config)


@pytest.mark.parametrize("study", robust_jax.STUDIES)
def test_train_block_overrides_are_accepted_and_checked_for_every_study(study):
    overrides = [("fsdp_min_size", "4096"), ("keep_checkpoints", "3"), ("checkpoint_every", "7")]
    if study != "omniview":  # a contrastive loss cannot be accumulated over micro-batches
        tiny = robust_jax.get_config(study, "tiny")
        overrides.append(("micro_batch_size", str(tiny.batch_size or 8)))
    config = load_config(f"{study}:tiny", overrides)
    run_lib.check(config)
    assert (config.fsdp_min_size, config.keep_checkpoints, config.checkpoint_every) == (4096, 3, 7)
    for field, text, match in [("keep_checkpoints", "0", "must be >= 1"), ("fsdp_min_size", "-1", "must be >= 0"),
                               ("micro_batch_size", "-2", "must be >= 0")]:
        with pytest.raises(ConfigError, match=rf"config\.{field}={text} is not allowed: {match}"):
            run_lib.check(load_config(f"{study}:tiny", [(field, text)]))


def _icl_gpt2_params(workdir, fsdp_min_size):
    from robust_jax.icl import study

    config = robust_jax.get_config("icl", "tiny")
    config.num_steps, config.fsdp_min_size = 12, fsdp_min_size
    gpt2 = [training for training in study.trainings(config, str(workdir), None) if training.name == "gpt2"][0]
    params = train(gpt2, str(workdir), mesh=make_data_mesh()).state.params
    specs = [tuple(leaf.sharding.spec) for leaf in jax.tree.leaves(params)]
    assert any("data" in spec for spec in specs) == (fsdp_min_size > 0)
    return params


def _sde_cell_params(workdir, fsdp_min_size):
    from robust_jax.data.timeseries import prepare_timeseries
    from robust_jax.sde import study
    from robust_jax.sde.training import cell_training

    config = robust_jax.get_config("sde", "tiny")
    config.fsdp_min_size, config.epochs = fsdp_min_size, 3
    data = prepare_timeseries("BasicMotions", 0.0, 0)
    model = study.build_model(config, "lsde", data.num_classes)
    training = cell_training("lsde", model, data, study.protocol_from(config), seed=0)
    params = jax.device_get(train(training, str(workdir), mesh=make_data_mesh()).state.params)
    # The head's first Linear feeds a BatchNorm, which removes any constant shift: the exact gradient of its bias and
    # of the readout's last bias (which only shifts that Linear's output) is 0, so what they get is float rounding,
    # which Adam scales up to lr-sized steps (it differs as much between 1 and 8 replicated devices).
    del params["head"]["Dense_0"]["bias"], params["readout_net"]["out"]["bias"]
    return params


@pytest.mark.slow
@pytest.mark.parametrize("train_fn", [_icl_gpt2_params, _sde_cell_params], ids=["icl_gpt2", "sde_cell"])
def test_fsdp_matches_replicated_outside_digits(tmp_path, train_fn):
    """Sharding the large leaves over the 8 devices changes where they live, not what is computed (up to float
    rounding: Adam divides by the gradient's size, so a parameter whose gradient is near 0 moves by up to 1e-4)."""
    assert jax.device_count() == 8
    replicated = train_fn(tmp_path / "replicated", 0)
    sharded = train_fn(tmp_path / "fsdp", 64)
    leaves = jax.tree.leaves(replicated)
    assert any(leaf.size >= 64 and any(d % 8 == 0 for d in leaf.shape) for leaf in leaves), "nothing to shard"
    for a, b in zip(leaves, jax.tree.leaves(sharded), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-4)
