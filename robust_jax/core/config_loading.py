"""Checks of `--config=path.py:preset` and `--config.field=value` arguments, before absl/ml_collections parse them.

config_flags does the real loading and overriding; this module only makes sure that whatever it would reject is
reported as one line naming the field, the value and what is allowed (its own errors name neither clearly).
"""

from __future__ import annotations

import ast
import importlib.util
import os

import ml_collections

from robust_jax.core.config_checks import ConfigError


def load_config_file(spec: str) -> ml_collections.ConfigDict:
    """`path.py[:preset]` -> the config that file's `get_config(preset)` returns."""
    path, _, preset = spec.partition(":")
    if not os.path.isfile(path):
        configs = os.path.join(os.path.dirname(path) or ".", "")
        available = sorted(f for f in os.listdir(configs) if f.endswith(".py")) if os.path.isdir(configs) else []
        raise ConfigError(f"--config={spec!r}: no config file {path!r} (files there: {available})")
    module_spec = importlib.util.spec_from_file_location("_checked_config", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config(preset) if preset else module.get_config()


def parse_override(config: ml_collections.ConfigDict, dotted: str, text: str):
    """Checks that `dotted` names a field of `config` and that `text` can be read as that field's type."""
    node = config
    parts = dotted.split(".")
    for depth, part in enumerate(parts):
        if not isinstance(node, ml_collections.ConfigDict) or part not in node:
            where = ".".join(parts[:depth]) or "config"
            fields = sorted(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
            raise ConfigError(f"config.{dotted}={text!r} is not allowed: no field {part!r} in {where} (fields: {fields})")
        node = node[part]
    current = node
    try:
        if isinstance(current, bool):
            if text.lower() not in ("true", "false", "1", "0"):
                raise ValueError
        elif isinstance(current, int):
            int(text)
        elif isinstance(current, float):
            float(text)
        elif isinstance(current, (tuple, list)):
            value = ast.literal_eval(text)
            if not isinstance(value, (tuple, list, int, float, str)):
                raise ValueError
    except (ValueError, SyntaxError):
        raise ConfigError(
            f"config.{dotted}={text!r} is not allowed: expected {type(current).__name__} like {current!r}"
        ) from None


def check_arguments(argv: list[str]) -> None:
    """Raises ConfigError for a missing config file, an unknown preset or field, or a value of the wrong type."""
    spec = None
    overrides = []
    for arg in argv[1:]:
        if arg.startswith("--config="):
            spec = arg.split("=", 1)[1]
        elif arg.startswith("--config.") and "=" in arg:
            name, text = arg[len("--config.") :].split("=", 1)
            overrides.append((name, text))
    if spec is None:
        raise ConfigError("--config is required (e.g. --config=experiments/configs/digits.py:cpu)")
    config = load_config_file(spec)
    for name, text in overrides:
        parse_override(config, name, text)
