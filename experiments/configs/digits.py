"""Digits: a small CNN on scikit-learn's 8x8 digits (optionally with Gaussian-noise augmentation).

Command:
  python -m experiments.main --config=experiments/configs/digits.py:cpu --workdir=workdirs/digits

Presets:
  tiny  a few seconds; for tests and Colab. Test accuracy is not meaningful.
  cpu   (default) 1,500 Adam steps at batch 128; about 30 s on a 2-core CPU; test accuracy about 0.98.
  noisy like cpu with Gaussian-noise augmentation at sigma = 0.25 (the base classifier for randomized smoothing).

Override any field with --config.<field>=<value>, e.g. --config.learning_rate=3e-4.
"""

import ml_collections

PRESETS = ("tiny", "cpu", "noisy")


def get_config(preset: str = "cpu") -> ml_collections.ConfigDict:
    from robust_jax.core.config_checks import check_preset

    preset = check_preset(preset, PRESETS)
    config = ml_collections.ConfigDict()
    config.study = "digits"
    config.preset = preset
    config.seed = 0
    config.num_steps = 1500
    config.batch_size = 128
    config.eval_batch_size = 512
    config.learning_rate = 1e-3
    config.noise_sigma = 0.0
    config.test_fraction = 0.2
    config.features = (32, 64)
    config.hidden = 128
    config.log_every = 50
    config.checkpoint_every = 500
    config.keep_checkpoints = 2
    config.fsdp_min_size = 0  # 0: parameters replicated
    if preset == "tiny":
        config.num_steps = 20
        config.batch_size = 64
        config.features = (8, 16)
        config.hidden = 32
        config.log_every = 5
        config.checkpoint_every = 10
    elif preset == "noisy":
        config.noise_sigma = 0.25
        config.num_steps = 3000
    return config
