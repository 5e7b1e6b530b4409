"""Loading a config once: `study:preset` or `path.py:preset`, then `field=value` overrides, then locked.

The command line and notebooks share this path (`robust_jax.get_config`, `experiments/main.py`): the config file
is executed once, each override is parsed as its field's type and set once, and the result is locked so a typo in
a field name fails instead of adding a field. Every error is a `ConfigError` naming the field, the value and what
is allowed; the command line prints it on one line and exits with status 2.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import os
import pkgutil

import ml_collections

from robust_jax.core.checks import ConfigError

CONFIG_PACKAGE = "robust_jax.configs"


def config_names() -> list[str]:
    """The config files in robust_jax/configs: one per study, and others that name the study they run in
    config.study (e.g. `rrcm`, the smoothing study's method comparison)."""
    package = importlib.import_module(CONFIG_PACKAGE)
    return sorted(info.name for info in pkgutil.iter_modules(package.__path__) if not info.name.startswith("_"))


def config_module(name: str):
    """The module `robust_jax/configs/<name>.py` (ConfigError listing the config files)."""
    names = config_names()
    if name not in names:
        raise ConfigError(f"config.study={name!r} is not allowed: must be one of the config files {names}")
    return importlib.import_module(f"{CONFIG_PACKAGE}.{name}")


def _module_from_path(path: str):
    if not os.path.isfile(path):
        folder = os.path.dirname(path) or "."
        available = sorted(f for f in os.listdir(folder) if f.endswith(".py")) if os.path.isdir(folder) else []
        raise ConfigError(f"--config={path!r} is not allowed: no such config file (files there: {available})")
    spec = importlib.util.spec_from_file_location(f"_config_{abs(hash(os.path.abspath(path)))}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def get_config(study_or_path: str, preset: str | None = None) -> ml_collections.ConfigDict:
    """A study's preset (`get_config("smoothing", "tiny")`, from any working directory), or a config file's
    (`get_config("my_configs/x.py", "cpu")`); unlocked, so a notebook can change fields before running it."""
    if study_or_path.endswith(".py") or os.sep in study_or_path:
        module = _module_from_path(study_or_path)
    else:
        module = config_module(study_or_path)
    return module.get_config(preset) if preset else module.get_config()


def _parse_value(dotted: str, current, text: str):
    """`text` read as the type of the field's current value."""
    try:
        if isinstance(current, bool):
            if text.lower() not in ("true", "false", "1", "0"):
                raise ValueError
            return text.lower() in ("true", "1")
        if isinstance(current, int):
            return int(text)
        if isinstance(current, float):
            return float(text)
        if isinstance(current, str):
            return text
        if isinstance(current, (tuple, list)):
            value = ast.literal_eval(text)
            value = tuple(value) if isinstance(value, (tuple, list)) else (value,)
            if current and isinstance(current[0], float):  # (1, 2) for a tuple of floats means (1.0, 2.0)
                value = tuple(float(v) if isinstance(v, int) and not isinstance(v, bool) else v for v in value)
            return value
        return ast.literal_eval(text) if current is not None else _literal_or_text(text)
    except (ValueError, SyntaxError):
        raise ConfigError(
            f"config.{dotted}={text!r} is not allowed: expected {type(current).__name__} like {current!r}"
        ) from None


def _literal_or_text(text: str):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def apply_override(config: ml_collections.ConfigDict, dotted: str, text: str) -> None:
    """Sets `config.<dotted>` from its text form, checking that the field exists and the text has its type."""
    node = config
    parts = dotted.split(".")
    for depth, part in enumerate(parts):
        if not isinstance(node, ml_collections.ConfigDict) or part not in node:
            where = ".".join(parts[:depth]) or "config"
            fields = sorted(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
            raise ConfigError(f"config.{dotted}={text!r} is not allowed: no field {part!r} in {where} "
                              f"(fields: {fields})")
        if depth < len(parts) - 1:
            node = node[part]
    field = parts[-1]
    node[field] = _parse_value(dotted, node[field], text)


def load_config(spec: str, overrides: list[tuple[str, str]] = ()) -> ml_collections.ConfigDict:
    """`study[:preset]` or `path.py[:preset]` with `(field, text)` overrides applied, locked."""
    source, _, preset = spec.partition(":")
    if not source:
        raise ConfigError("--config='' is not allowed: give study:preset (e.g. digits:tiny) or path.py:preset")
    config = get_config(source, preset or None)
    for dotted, text in overrides:
        apply_override(config, dotted, text)
    config.lock()
    return config
