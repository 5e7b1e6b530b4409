"""Test-only requirements (torch, transformers, torchsde, ...): skipped where they are not installed, except under CI
(the environment variable CI set to true or 1), where a missing one fails the test: a broken install must not pass as
green."""

from __future__ import annotations

import importlib
import os

import pytest


def under_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def require(module: str, reason: str | None = None):
    """The module, imported; where it is missing, a skip (or, under CI, the ImportError)."""
    if under_ci():
        return importlib.import_module(module)
    return pytest.importorskip(module, reason=reason)
