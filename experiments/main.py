"""Runs one study.

  python -m experiments.main --config=<study>:<preset> --workdir=DIR [--config.field=value ...] [--distributed]

`--config` takes a study name (`digits:cpu`, the configs in robust_jax/configs/) or a config file
(`path/to/config.py:preset`). The config is loaded once, overridden once and checked once; a bad config exits with
status 2 and one line naming the field, the value and what is allowed, before anything is written. On several
hosts, --distributed calls jax.distributed.initialize() (its settings come from the cluster environment: SLURM,
Cloud TPU, or JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID).
"""

from __future__ import annotations

import json
import logging
import sys

USAGE = __doc__.strip().splitlines()[2].strip()


def _exit(message: str, status: int = 2) -> None:
    print(message, file=sys.stderr)
    sys.exit(status)


def parse_arguments(argv: list[str]) -> tuple[str, list[tuple[str, str]], str, bool]:
    """(config spec, overrides, workdir, distributed); exits 2 on anything else."""
    spec, overrides, workdir, distributed = None, [], None, False
    for arg in argv:
        if arg in ("-h", "--help"):
            print(__doc__)
            sys.exit(0)
        name, has_value, value = arg.partition("=")
        if name == "--config" and has_value:
            spec = value
        elif name.startswith("--config.") and has_value:
            overrides.append((name[len("--config."):], value))
        elif name == "--workdir" and has_value:
            workdir = value
        elif arg == "--distributed":
            distributed = True
        else:
            _exit(f"config error: unknown argument {arg!r} (usage: {USAGE})")
    if spec is None:
        _exit("config error: --config is required (e.g. --config=digits:cpu)")
    if not workdir:
        _exit("config error: --workdir is required")
    return spec, overrides, workdir, distributed


def main(argv: list[str]) -> None:
    spec, overrides, workdir, distributed = parse_arguments(argv[1:])
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("robust_jax").setLevel(logging.INFO)
    import jax

    if distributed:
        jax.distributed.initialize()

    from robust_jax.core import run as run_lib
    from robust_jax.core.checks import ConfigError
    from robust_jax.core.config_loading import load_config
    from robust_jax.core.train import NonFiniteLossError

    try:
        config = load_config(spec, overrides)
        study = run_lib.check(config, workdir)
    except ConfigError as e:
        _exit(f"config error: {e}")
    try:
        results = run_lib.run_checked(study, config, workdir)
    except NonFiniteLossError as e:
        _exit(f"error: {e}", status=1)
    if jax.process_index() == 0:
        print(json.dumps(results, sort_keys=True))


if __name__ == "__main__":
    main(sys.argv)
