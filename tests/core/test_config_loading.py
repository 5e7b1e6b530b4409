"""core.config_loading: overrides parsed as their field's type, the config locked."""

import pytest

from robust_jax.core import checks
from robust_jax.core.config_loading import load_config


def test_overrides_are_parsed_as_the_field_type_and_locked():
    config = load_config("digits:tiny", [("batch_size", "16"), ("learning_rate", "1e-2"), ("features", "(4,8)")])
    assert config.batch_size == 16 and config.learning_rate == 0.01 and config.features == (4, 8)
    with pytest.raises(AttributeError):
        config.new_field = 1  # locked: a typo cannot add a field
    with pytest.raises(checks.ConfigError, match=r"config\.learning_rate='fast' .*expected float"):
        load_config("digits:tiny", [("learning_rate", "fast")])
    with pytest.raises(checks.ConfigError, match=r"no field 'depth'"):
        load_config("digits:tiny", [("depth", "3")])
