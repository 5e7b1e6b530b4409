"""A missing test requirement skips locally and fails under CI."""

import pytest

from tests import requirements


def test_a_missing_requirement_skips_outside_ci_and_fails_under_ci(monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception):
        requirements.require("no_such_module_for_robust_jax_tests")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(ImportError):
        requirements.require("no_such_module_for_robust_jax_tests")
    assert requirements.require("json").dumps([1]) == "[1]"
