"""robust_jax/smoothing/methods/rrcm/noise_schedule.py: Karras levels against the formula evaluated in plain Python, the
discretisation curriculum's N at hand-computed steps, the level sampler's support, and the certification levels."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from robust_jax.smoothing.methods.rrcm.noise_schedule import (
    DiscretisationCurriculum,
    input_scale,
    karras_levels,
    level_sigma,
    nearest_level,
    sample_level_index,
    smoothing_level,
)


def _karras_python(num_levels):
    high, low = 80.0 ** (1 / 7), 0.002 ** (1 / 7)
    return [(high + i / (num_levels - 1) * (low - high)) ** 7 for i in range(num_levels)]


@pytest.mark.parametrize("num_levels", [2, 21, 41, 81])
def test_levels_follow_the_karras_formula(num_levels):
    expected = _karras_python(num_levels)
    np.testing.assert_allclose(karras_levels(num_levels), expected, rtol=1e-12)
    traced = jax.jit(lambda i, n: level_sigma(i, n))(jnp.arange(num_levels), jnp.int32(num_levels))
    np.testing.assert_allclose(traced, expected, rtol=2e-5)
    assert expected[0] == pytest.approx(80.0) and expected[-1] == pytest.approx(0.002)
    assert all(a > b for a, b in zip(expected, expected[1:]))


def test_input_scale_is_one_over_root_of_sigma_squared_plus_a_quarter():
    sigmas = [0.002, 0.5, 2.0, 80.0]
    np.testing.assert_allclose(input_scale(jnp.asarray(sigmas)), [1 / math.sqrt(s * s + 0.25) for s in sigmas],
                               rtol=1e-6)


def test_curriculum_levels_at_given_steps():
    # K = 1000: K' = ceil(1000 / log2(ceil(80 / 20) + 1)) = ceil(430.68) = 431; N = 21 at step 0 only (ceil(0) = 0).
    curriculum = DiscretisationCurriculum(total_steps=1000)
    assert curriculum.stage_length == 431
    assert curriculum.boundaries == (1, 432)
    expected = {0: 21, 1: 41, 430: 41, 431: 41, 432: 81, 999: 81, 5000: 81}
    assert {step: curriculum.num_levels(step) for step in expected} == expected
    traced = jax.jit(curriculum.num_levels)(jnp.asarray(list(expected), jnp.int32))
    np.testing.assert_array_equal(traced, list(expected.values()))
    # the cpu preset's 1,500 steps: K' = 647, so 81 levels on the last 852 steps (57%)
    cpu = DiscretisationCurriculum(total_steps=1500)
    assert cpu.stage_length == 647 and sum(cpu.num_levels(k) == 81 for k in range(1500)) == 852


def _official_num_levels(k, total_steps, s0, s1):
    """The official code's rule (rRCM, utils.py): K' = ceil(K / log2(ceil(s1 / s0) + 1)), N = min(s0 * 2^ceil(k / K'),
    s1) + 1, with s0 + 1 and s1 + 1 the start and end level counts."""
    stage = math.ceil(total_steps / math.log2(math.ceil(s1 / s0) + 1))
    return min(s0 * 2 ** math.ceil(k / stage), s1) + 1


@pytest.mark.parametrize(("total_steps", "start", "end"), [(1500, 21, 81), (300_000, 21, 81), (37, 11, 81),
                                                           (10, 3, 5), (7, 21, 41)])
def test_curriculum_is_the_official_rule_at_every_step(total_steps, start, end):
    curriculum = DiscretisationCurriculum(total_steps, start, end)
    steps = range(total_steps) if total_steps < 5000 else range(0, total_steps, 97)
    ours = [curriculum.num_levels(k) for k in steps]
    assert ours == [_official_num_levels(k, total_steps, start - 1, end - 1) for k in steps]
    traced = jax.jit(curriculum.num_levels)(jnp.asarray(list(steps), jnp.int32))
    np.testing.assert_array_equal(traced, ours)
    changes = [k for k in range(1, total_steps) if curriculum.num_levels(k) != curriculum.num_levels(k - 1)]
    assert changes == [b for b in curriculum.boundaries if b < total_steps]


def test_curriculum_with_equal_start_and_end_never_changes():
    curriculum = DiscretisationCurriculum(total_steps=10, start_levels=11, end_levels=11)
    assert curriculum.boundaries == ()
    assert [curriculum.num_levels(s) for s in (0, 9, 100)] == [11, 11, 11]


@pytest.mark.parametrize(("kwargs", "message"), [
    (dict(total_steps=100, start_levels=21, end_levels=11), "end_levels=11 is below start_levels=21"),
    (dict(total_steps=100, start_levels=1), "start_levels must be >= 2"),
    (dict(total_steps=0), "total_steps must be >= 1"),
    (dict(total_steps=10.5), "total_steps must be an integer"),
])
def test_bad_curriculum_is_a_clear_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DiscretisationCurriculum(**kwargs)


def test_level_index_is_uniform_on_zero_to_n_minus_two(key):
    keys = jax.random.split(key, 2000)
    indices = np.asarray(jax.jit(jax.vmap(sample_level_index, in_axes=(0, None)))(keys, jnp.int32(5)))
    counts = np.bincount(indices, minlength=5)
    assert counts[4] == 0 and indices.min() == 0
    # Each of the 4 values has probability 1/4: 500 expected, binomial sd ~19; 6 sd bounds.
    assert np.all(np.abs(counts[:4] - 500) < 6 * math.sqrt(2000 * 0.25 * 0.75))


@pytest.mark.parametrize(("sigma", "expected_level"), [(0.25, 0.49), (0.5, 0.97), (1.0, 2.00)])
def test_certification_level_for_common_sigmas(sigma, expected_level):
    levels = _karras_python(81)
    brute_force = min(range(81), key=lambda i: abs(levels[i] - 2 * sigma))
    index, level = smoothing_level(sigma, 81)
    assert index == brute_force
    assert level == pytest.approx(levels[brute_force], rel=1e-12)
    assert level == pytest.approx(expected_level, abs=0.01)
    assert nearest_level(2 * sigma, 81) == (index, level)


@pytest.mark.parametrize("level", [0.001, 81.0, -1.0, float("nan")])
def test_level_outside_the_schedule_is_a_clear_error(level):
    with pytest.raises(ValueError, match=r"level|finite"):
        nearest_level(level, 81)
    if level == 81.0:
        with pytest.raises(ValueError, match=r"level=81.0 is outside .*\[0.002, 80.0\]"):
            nearest_level(level, 81)


def test_sigma_outside_the_schedule_names_value_and_range():
    with pytest.raises(ValueError, match=r"sigma=50.0 .* must be in \[0.001, 40.0\]"):
        smoothing_level(50.0)
    with pytest.raises(ValueError, match=r"sigma must be a finite number > 0"):
        smoothing_level(0.0)
