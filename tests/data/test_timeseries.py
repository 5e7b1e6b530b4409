"""The missing-data pipeline of the stable neural SDE study: corruption, splits, normalisation, Hermite path."""

import jax.numpy as jnp
import numpy as np
import pytest

from robust_jax.data import timeseries as ts_lib
from tests.requirements import require


@pytest.fixture(scope="module")
def basic_motions():
    return ts_lib.prepare_timeseries("BasicMotions", missing_rate=0.3, seed=3)


def test_offline_datasets_are_the_shipped_ones():
    names = ts_lib.offline_datasets()
    for name in ("ACSF1", "ArrowHead", "BasicMotions", "GunPoint", "ItalyPowerDemand", "JapaneseVowels", "OSULeaf"):
        assert name in names


@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize("rate", [0.0, 0.3, 0.5, 0.7])
def test_drop_observations_counts_and_seed(rate, per_channel):
    rng = np.random.default_rng(0)
    values = rng.normal(size=(11, 37, 3))
    dropped = ts_lib.drop_observations(values, rate, seed=5, per_channel=per_channel)
    expected = int(37 * rate)
    np.testing.assert_array_equal(np.isnan(dropped).sum(axis=1), np.full((11, 3), expected))
    kept = ~np.isnan(dropped)
    np.testing.assert_array_equal(dropped[kept], values[kept])  # nothing else touched
    np.testing.assert_array_equal(np.isnan(ts_lib.drop_observations(values, rate, 5, per_channel=per_channel)),
                                  np.isnan(dropped))
    if expected:
        other = ts_lib.drop_observations(values, rate, seed=6, per_channel=per_channel)
        assert not np.array_equal(np.isnan(other), np.isnan(dropped))
        shared = np.all(np.isnan(dropped) == np.isnan(dropped[..., :1]))
        assert shared != per_channel  # the reference drops the same time points in every channel of a series
    assert not np.isnan(values).any()  # the input is not modified


def test_prepared_dataset(basic_motions):
    data = basic_motions
    n, length, channels = data.values.shape
    assert (n, length, channels) == (80, 100, 1 + 6) and data.num_classes == 4
    # The time channel is linspace(0, 1, L) and never corrupted.
    np.testing.assert_allclose(data.values[..., 0], np.broadcast_to(np.linspace(0, 1, length), (n, length)), atol=1e-7)
    np.testing.assert_array_equal(np.isnan(data.values[..., 1:]).sum(axis=1), np.full((n, 6), int(length * 0.3)))
    again = ts_lib.prepare_timeseries("BasicMotions", missing_rate=0.3, seed=3)
    np.testing.assert_array_equal(np.isnan(again.values), np.isnan(data.values))
    # Splits: disjoint, complete, 0.7 / 0.15 / 0.15 and stratified (20 series per class).
    splits = data.splits
    assert sorted(np.concatenate(list(splits.values())).tolist()) == list(range(n))
    assert [len(splits[s]) for s in ("train", "valid", "test")] == [56, 12, 12]
    np.testing.assert_array_equal(np.bincount(data.labels[splits["train"]]), [14, 14, 14, 14])
    # Normalised with training statistics only: training rows have mean 0 and std 1 per data channel.
    train = data.values[splits["train"]][..., 1:]
    np.testing.assert_allclose(np.nanmean(train, axis=(0, 1)), 0.0, atol=1e-5)
    np.testing.assert_allclose(np.nanstd(train, axis=(0, 1), ddof=1), 1.0, atol=1e-3)
    assert not np.allclose(np.nanmean(data.values[splits["test"]][..., 1:], axis=(0, 1)), 0.0, atol=1e-3)


def test_hermite_path_interpolates_observations(basic_motions):
    data = basic_motions
    times = jnp.asarray(data.times)
    coeffs = tuple(jnp.asarray(c) for c in data.coeffs)
    path = np.asarray(ts_lib.hermite_evaluate(times, coeffs, times))  # (N, L, C)
    seen = ~np.isnan(data.values)
    np.testing.assert_allclose(path[seen], data.values[seen], atol=1e-5)
    # Between knots it is a cubic whose end points meet the neighbouring knots (continuity).
    mid = np.asarray(ts_lib.hermite_evaluate(times, coeffs, (times[:-1] + times[1:]) / 2))
    assert np.isfinite(mid).all()


def test_fill_follows_the_reference():
    times = jnp.linspace(0.0, 1.0, 6)
    x = jnp.array([np.nan, 1.0, np.nan, np.nan, 4.0, np.nan])[:, None]
    filled = np.asarray(ts_lib.fill_missing(times, x))[:, 0]
    # Leading NaN: first observation; interior: linear in time; trailing: last observation (forward fill).
    np.testing.assert_allclose(filled, [1.0, 1.0, 2.0, 3.0, 4.0, 4.0], atol=1e-6)


def test_hermite_matches_torchcde_with_missing_values(basic_motions):
    torch = require("torch")
    torchcde = require("torchcde")
    data = basic_motions  # 30% of the time points dropped: leading, interior and trailing gaps
    assert np.isnan(data.values[:, 0, 1:]).any() and np.isnan(data.values[:, -1, 1:]).any()
    theirs = torchcde.hermite_cubic_coefficients_with_backward_differences(
        torch.tensor(data.values, dtype=torch.float64), t=torch.tensor(data.times, dtype=torch.float64)).numpy()
    a, b, two_c, three_d = np.split(theirs, 4, axis=-1)  # torchcde: a + b s + (2c / 2) s^2 + (3d / 3) s^3
    d, c, b_ours, a_ours = data.coeffs
    for mine, reference in ((a_ours, a), (b_ours, b), (c, two_c / 2), (d, three_d / 3)):
        np.testing.assert_allclose(mine, reference, rtol=1e-4, atol=1e-4 * np.abs(reference).max())


def test_hermite_matches_diffrax_without_missing_values():
    diffrax = require("diffrax")
    times = jnp.linspace(0.0, 1.0, 17)
    values = np.random.default_rng(1).normal(size=(3, 17, 2))
    ours = ts_lib.hermite_coefficients(times, values)
    theirs = diffrax.backward_hermite_coefficients(times, jnp.asarray(values).transpose(1, 0, 2))
    for mine, reference in zip(ours, theirs):
        reference = np.asarray(reference).transpose(1, 0, 2)
        np.testing.assert_allclose(np.asarray(mine), reference, rtol=1e-4, atol=1e-4 * np.abs(reference).max())
    # Backward differences: the derivative at t_i is (x_i - x_{i-1}) / dt.
    b = np.asarray(ours[2])
    np.testing.assert_allclose(b[:, 1:], np.diff(values, axis=1)[:, :-1] / (1 / 16), rtol=1e-4, atol=1e-4)


def test_variable_length_series_are_resampled_to_the_longest():
    raw = ts_lib.load_ucr_uea("JapaneseVowels")
    assert raw.values.shape == (640, 29, 12)
    assert not np.isnan(raw.values).any()
    assert raw.from_test_file.sum() == 370


@pytest.mark.parametrize("rate", [-0.1, 1.0, 1.5, float("nan")])
def test_bad_missing_rate(rate):
    with pytest.raises(ValueError, match="missing_rate"):
        ts_lib.drop_observations(np.zeros((2, 5, 1)), rate, seed=0)
    with pytest.raises(ValueError, match="missing_rate"):
        ts_lib.prepare_timeseries("BasicMotions", missing_rate=rate)


def test_unknown_dataset_lists_offline_sets():
    with pytest.raises(ValueError, match="not available offline.*BasicMotions.*GunPoint"):
        ts_lib.load_ucr_uea("NoSuchDataset")


def test_all_nan_channel_is_rejected():
    values = np.random.default_rng(0).normal(size=(4, 10, 3))
    values[2, :, 1] = np.nan
    with pytest.raises(ValueError, match="series 2 has channel 1 entirely NaN"):
        ts_lib.hermite_coefficients(np.linspace(0, 1, 10), values)


def test_bad_split_name():
    with pytest.raises(ValueError, match="split="):
        ts_lib.prepare_timeseries("BasicMotions", split="random")
