"""Runs one study from a config file.

  python -m experiments.main --config=experiments/configs/<study>.py:<preset> --workdir=DIR [--config.field=value ...]

A bad config exits with status 2 and one line naming the field, the value and what is allowed, before anything is
written. On several hosts, pass --distributed to call jax.distributed.initialize() (its settings come from the
cluster environment: SLURM, Cloud TPU, or JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID).
"""

from __future__ import annotations

import json
import logging
import sys

from absl import flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file and preset: path.py:preset", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and results")
_DISTRIBUTED = flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() (multi-host runs)")


def _config_error(message: str) -> None:
    print(f"config error: {message}", file=sys.stderr)
    sys.exit(2)


def main(argv: list[str]) -> None:
    from robust_jax.core.config_checks import ConfigError
    from robust_jax.core.config_loading import check_arguments

    try:
        check_arguments(argv)
        flags.FLAGS(argv)
    except ConfigError as e:
        _config_error(str(e))
    except flags.Error as e:
        _config_error(str(e).splitlines()[0])
    if not _WORKDIR.value:
        _config_error("--workdir is required")

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("robust_jax").setLevel(logging.INFO)
    import jax

    if _DISTRIBUTED.value:
        jax.distributed.initialize()

    from robust_jax.core import run as run_lib
    from robust_jax.core.train import NonFiniteLossError

    try:
        run_lib.check(_CONFIG.value, _WORKDIR.value)
    except ConfigError as e:
        _config_error(str(e))
    try:
        results = run_lib.run_study(_CONFIG.value, _WORKDIR.value)
    except NonFiniteLossError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    if jax.process_index() == 0:
        print(json.dumps(results, sort_keys=True))


if __name__ == "__main__":
    main(sys.argv)
