"""The opening every config file shares, and the train block: the same training fields in every study's config.

A config file's `get_config(preset)` starts with `new_config(study, preset, presets, ...)`, which checks the
preset and adds the train block:

  seed               the run's seed (initialisation, data order, noise)
  batch_size         global batch, split over all devices
  num_steps | epochs the training length: steps, or passes over the data for epoch-based studies (sde)
  learning_rate      the peak learning rate of the study's schedule
  log_every          steps between metric lines
  checkpoint_every   steps (epochs for epoch-based studies) between checkpoints
  keep_checkpoints   how many checkpoints to keep
  fsdp_min_size      0: parameters replicated; N: leaves with >= N elements sharded over the devices (FSDP)
  micro_batch_size   0: the whole batch at once; m: the gradient accumulated over micro-batches of m examples

`check_train_block` checks these fields for every study (the study's `check_config` checks its own fields), and
`loop_config` turns them into the train loop's settings, so a field means the same in every study.
"""

from __future__ import annotations

import ml_collections

from robust_jax.core import checks
from robust_jax.core.train import TrainLoopConfig

TRAIN_FIELDS = ("seed", "batch_size", "learning_rate", "log_every", "checkpoint_every", "keep_checkpoints",
                "fsdp_min_size", "micro_batch_size")


def new_config(study: str, preset: str | None, presets, *, batch_size: int, learning_rate: float,
               num_steps: int | None = None, epochs: int | None = None, log_every: int = 50,
               checkpoint_every: int = 500, keep_checkpoints: int = 2, fsdp_min_size: int = 0,
               micro_batch_size: int = 0, seed: int = 0, default_preset: str = "cpu"
               ) -> tuple[ml_collections.ConfigDict, str]:
    """(a config naming the study and preset with the train block filled in, the checked preset name)."""
    preset = checks.check_preset(preset, presets, default_preset)
    if (num_steps is None) == (epochs is None):
        raise ValueError("a train block has num_steps or epochs, not both")
    config = ml_collections.ConfigDict()
    config.study = study
    config.preset = preset
    config.seed = seed
    config.batch_size = batch_size
    if num_steps is not None:
        config.num_steps = num_steps
    else:
        config.epochs = epochs
    config.learning_rate = learning_rate
    config.log_every = log_every
    config.checkpoint_every = checkpoint_every
    config.keep_checkpoints = keep_checkpoints
    config.fsdp_min_size = fsdp_min_size
    config.micro_batch_size = micro_batch_size
    return config, preset


def check_train_block(config: ml_collections.ConfigDict, device_count: int, *, auto_batch_size: bool = False) -> None:
    """Checks the train block. auto_batch_size: batch_size 0 means "the study's rule" (sde's reference rule)."""
    missing = [name for name in TRAIN_FIELDS if name not in config]
    if "num_steps" not in config and "epochs" not in config:
        missing.append("num_steps or epochs")
    if missing:
        raise checks.ConfigError(f"config is missing the train block fields {missing} "
                                 "(build configs with robust_jax.core.config.new_config)")
    checks.check_int("config.seed", config.seed, minimum=0)
    if not (auto_batch_size and config.batch_size == 0):
        checks.check_int("config.batch_size", config.batch_size, minimum=1)
        checks.check_divisible("config.batch_size", config.batch_size, device_count, "the device count")
    if "num_steps" in config:
        checks.check_int("config.num_steps", config.num_steps, minimum=0)
    else:
        checks.check_int("config.epochs", config.epochs, minimum=1)
    checks.check_float("config.learning_rate", config.learning_rate, positive=True)
    checks.check_int("config.log_every", config.log_every, minimum=1)
    checks.check_int("config.checkpoint_every", config.checkpoint_every, minimum=1)
    checks.check_int("config.keep_checkpoints", config.keep_checkpoints, minimum=1)
    checks.check_int("config.fsdp_min_size", config.fsdp_min_size, minimum=0)
    checks.check_int("config.micro_batch_size", config.micro_batch_size, minimum=0)
    if config.micro_batch_size and config.batch_size:
        checks.check_divisible("config.batch_size", config.batch_size, config.micro_batch_size,
                               "config.micro_batch_size")


def loop_config(config: ml_collections.ConfigDict, *, num_steps: int | None = None, steps_per_epoch: int = 1,
                seed: int | None = None, **overrides) -> TrainLoopConfig:
    """The train loop's settings from the train block. num_steps: this training's length (default the block's
    num_steps, or epochs x steps_per_epoch); for epoch-based blocks checkpoint_every counts epochs."""
    if num_steps is None:
        num_steps = config.num_steps if "num_steps" in config else config.epochs * steps_per_epoch
    checkpoint_every = config.checkpoint_every * (1 if "num_steps" in config else steps_per_epoch)
    settings = dict(
        num_steps=num_steps,
        seed=config.seed if seed is None else seed,
        log_every=config.log_every,
        checkpoint_every=checkpoint_every,
        keep_checkpoints=config.keep_checkpoints,
        fsdp_min_size=config.fsdp_min_size,
        micro_batch_size=config.micro_batch_size,
    )
    settings.update(overrides)
    return TrainLoopConfig(**settings)
