"""Digits: a small CNN on scikit-learn's 8x8 digits (optionally with Gaussian-noise augmentation).

Command:
  python -m experiments.main --config=digits:cpu --workdir=workdirs/digits

Presets:
  tiny   a few seconds; tests and Colab. Test accuracy is not meaningful.
  cpu    (default) 1,500 Adam steps at batch 128. About 30 s on a 2-core CPU (26 s in `make reproduce`, 2026-11-30).
         Expected: test accuracy about 0.98 (at least 0.98 - 0.01).
  noisy  like cpu with Gaussian-noise augmentation at sigma = 0.25, 3,000 steps (the base classifier for randomized
         smoothing).

Override any field with --config.<field>=<value>, e.g. --config.learning_rate=3e-4.
Measurements and history: docs/results/digits.md
"""

import ml_collections

from robust_jax.core.config import new_config

PRESETS = ("tiny", "cpu", "noisy")


def get_config(preset: str = "cpu") -> ml_collections.ConfigDict:
    config, preset = new_config("digits", preset, PRESETS, num_steps=1500, batch_size=128, learning_rate=1e-3,
                                log_every=50, checkpoint_every=500)
    config.eval_batch_size = 512
    config.noise_sigma = 0.0
    config.test_fraction = 0.2
    config.features = (32, 64)
    config.hidden = 128
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
