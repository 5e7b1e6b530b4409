"""UCR/UEA classification series with missing values, as the stable neural SDE study uses them (Oh, Lim & Kim 2024).

The pipeline, in order (`prepare_timeseries` runs all of it):
  1. `load_ucr_uea`: train and test files of one UCR/UEA problem through `aeon`, pooled; series of unequal length are
     linearly resampled to the longest length.
  2. `drop_observations`: the paper's missing-rate corruption. For each series, int(L * rate) time points drawn without
     replacement are set to NaN, so every data channel has exactly that many NaNs. Like the reference (and Kidger et
     al.'s NCDE code it builds on) the same time points are dropped in all channels of a series; `per_channel=True`
     draws them independently per channel instead. A `numpy.random.Generator(seed)` makes it reproducible.
  3. `add_time_channel` (linspace(0, 1, L), never corrupted) and optionally `observational_intensity`.
  4. `stratified_split` 0.7 / 0.15 / 0.15 of the pooled data, or the archive's own train/test split.
  5. `normalise`: per data channel, NaN-aware mean and standard deviation from the training rows only.
  6. `hermite_coefficients`: cubic Hermite spline with backward differences (Morrill et al. 2021) for the control path.

Missing values in step 6 follow the reference (torchcde's `hermite_cubic_coefficients_with_backward_differences`):
interior gaps are first filled by linear interpolation between the neighbouring observations, leading NaNs take the
first observation and trailing NaNs the last one (forward fill at the end), and the spline is fitted to the filled
grid. `diffrax.backward_hermite_coefficients` treats gaps differently (one cubic across a whole gap, leading NaNs kept),
so it would change the models' inputs relative to the reference; on a grid with no NaN the two agree exactly, which the
tests check. The coefficients are in diffrax's order (d, c, b, a), so `diffrax.CubicInterpolation(ts, coeffs)` reads
them too.
"""

from __future__ import annotations

import dataclasses
import functools
import os

import jax
import jax.numpy as jnp
import numpy as np

SPLIT_FRACTIONS = (0.7, 0.15, 0.15)


# ----------------------------------------------------------------------------------------------------------- loading
def _aeon_data_roots() -> list[str]:
    import aeon.datasets

    roots = [os.path.join(os.path.dirname(aeon.datasets.__file__), "data")]
    try:  # where aeon caches downloads; sets already there load offline too
        from aeon.datasets._data_loaders import _get_data_home

        roots.append(_get_data_home())
    except Exception:  # noqa: BLE001 - a private helper; the bundled sets are enough
        pass
    return roots


def _is_classification_file(path: str) -> bool:
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            line = line.strip().lower()
            if line.startswith("@classlabel"):
                return line.split()[1:2] == ["true"]
            if line.startswith("@data"):
                return False
    return False


@functools.cache
def offline_datasets() -> tuple[str, ...]:
    """UCR/UEA classification problems that load without a network: those shipped inside the aeon wheel
    (ACSF1, ArrowHead, BasicMotions, GunPoint, ItalyPowerDemand, JapaneseVowels, OSULeaf, PickupGestureWiimoteZ, ...)
    and any already in aeon's download cache."""
    names = set()
    for root in _aeon_data_roots():
        if not os.path.isdir(root):
            continue
        for name in os.listdir(root):
            train = os.path.join(root, name, f"{name}_TRAIN.ts")
            test = os.path.join(root, name, f"{name}_TEST.ts")
            if os.path.isfile(train) and os.path.isfile(test) and _is_classification_file(train):
                names.add(name)
    names.discard("UnitTest")  # aeon's own test fixture, not an archive problem
    return tuple(sorted(names))


def resample_series(series: np.ndarray, length: int) -> np.ndarray:
    """Linear resampling of one (channels, L_i) series onto `length` evenly spaced points of the same time span.
    NaNs already in the data are skipped (interpolated over) so they do not spread to their neighbours."""
    series = np.asarray(series, dtype=np.float64)
    if series.shape[-1] == length:
        return series
    source = np.linspace(0.0, 1.0, series.shape[-1])
    target = np.linspace(0.0, 1.0, length)
    out = np.full((series.shape[0], length), np.nan)
    for c, channel in enumerate(series):
        seen = ~np.isnan(channel)
        if seen.any():
            out[c] = np.interp(target, source[seen], channel[seen])
    return out


@dataclasses.dataclass(frozen=True)
class RawSeries:
    values: np.ndarray  # (N, L, D) float64; NaN where the archive itself has missing values
    labels: np.ndarray  # (N,) int32 in [0, num_classes)
    class_names: tuple[str, ...]
    from_test_file: np.ndarray  # (N,) bool: the row came from the archive's TEST file


def load_ucr_uea(name: str, *, allow_download: bool = False) -> RawSeries:
    """The train and test files of UCR/UEA problem `name`, pooled, as (N, L, D) with L the longest series length.

    Only the sets in `offline_datasets()` are accepted unless `allow_download=True`, in which case aeon fetches
    others from the archive (needs a network)."""
    available = offline_datasets()
    if name not in available and not allow_download:
        raise ValueError(
            f"dataset={name!r} is not available offline; the offline UCR/UEA classification sets are "
            f"{', '.join(available)} (pass allow_download=True to let aeon fetch other archive names)"
        )
    from aeon.datasets import load_classification

    parts, labels, origin = [], [], []
    for split in ("train", "test"):
        x, y = load_classification(name, split=split, load_equal_length=False, load_no_missing=False)
        series = [np.asarray(s, dtype=np.float64) for s in x]  # each (D, L_i)
        parts.extend(series)
        labels.extend(np.asarray(y).tolist())
        origin.extend([split == "test"] * len(series))
    length = max(s.shape[-1] for s in parts)
    values = np.stack([resample_series(s, length) for s in parts]).transpose(0, 2, 1)  # (N, L, D)
    class_names = tuple(sorted({str(label) for label in labels}, key=_natural_key))
    index = {c: i for i, c in enumerate(class_names)}
    return RawSeries(
        values=values,
        labels=np.array([index[str(label)] for label in labels], dtype=np.int32),
        class_names=class_names,
        from_test_file=np.array(origin, dtype=bool),
    )


def _natural_key(label: str):
    try:
        return (0, float(label), label)
    except ValueError:
        return (1, 0.0, label)


# ---------------------------------------------------------------------------------------------------- corruption
def check_missing_rate(missing_rate: float) -> float:
    rate = float(missing_rate)
    if not 0.0 <= rate < 1.0 or not np.isfinite(rate):
        raise ValueError(f"missing_rate={missing_rate!r} must be in [0, 1) (a fraction of time points dropped)")
    return rate


def drop_observations(values: np.ndarray, missing_rate: float, seed: int, *, per_channel: bool = False) -> np.ndarray:
    """Sets int(L * missing_rate) random time points of every series of (N, L, D) `values` to NaN (a copy).

    By default the dropped time points are shared by the channels of a series (the reference's choice); with
    `per_channel=True` each channel draws its own. Either way every channel loses exactly int(L * rate) points."""
    rate = check_missing_rate(missing_rate)
    values = np.array(values, dtype=np.float64, copy=True)
    n, length, channels = values.shape
    num_dropped = int(length * rate)
    if num_dropped == 0:
        return values
    rng = np.random.default_rng(seed)
    if per_channel:
        order = rng.random((n, channels, length)).argsort(axis=-1)[..., :num_dropped]  # (N, D, k)
        rows = np.arange(n)[:, None, None]
        cols = np.arange(channels)[None, :, None]
        values[rows, order, cols] = np.nan
    else:
        order = rng.random((n, length)).argsort(axis=-1)[:, :num_dropped]  # (N, k)
        values[np.arange(n)[:, None], order, :] = np.nan
    return values


def add_time_channel(values: np.ndarray, times: np.ndarray | None = None) -> np.ndarray:
    """(N, L, D) -> (N, L, 1 + D) with channel 0 the observation time (default linspace(0, 1, L))."""
    n, length, _ = values.shape
    times = np.linspace(0.0, 1.0, length) if times is None else np.asarray(times, dtype=np.float64)
    return np.concatenate([np.broadcast_to(times[None, :, None], (n, length, 1)), values], axis=-1)


def observational_intensity(values: np.ndarray) -> np.ndarray:
    """(N, L, D) -> (N, L, D): the cumulative count of observations per channel, divided by L so it stays in
    [0, 1] (the reference feeds the raw count; the scaling only keeps the inputs of Linear(X(t)) of order one)."""
    length = values.shape[1]
    return np.cumsum(~np.isnan(values), axis=1).astype(np.float64) / length


def check_observed(values: np.ndarray, *, what: str = "series") -> None:
    """Raises ValueError if some series has a channel with no observation at all (no path can be built)."""
    empty = np.all(np.isnan(values), axis=1)  # (N, C)
    if empty.any():
        row, channel = map(int, np.argwhere(empty)[0])
        raise ValueError(
            f"{what} {row} has channel {channel} entirely NaN ({int(empty.sum())} such channel(s) in all); "
            "every channel needs at least one observation to build the control path"
        )


# ------------------------------------------------------------------------------------------------ splits, scaling
def stratified_split(labels: np.ndarray, seed: int, fractions=SPLIT_FRACTIONS) -> dict[str, np.ndarray]:
    """Stratified train/validation/test indices of the pooled data (0.7 / 0.15 / 0.15 by default)."""
    from sklearn.model_selection import train_test_split

    train_fraction, valid_fraction, test_fraction = fractions
    if min(fractions) <= 0 or abs(sum(fractions) - 1.0) > 1e-9:
        raise ValueError(f"fractions={fractions} must be three positive numbers summing to 1")
    index = np.arange(len(labels))
    train, rest = train_test_split(index, train_size=train_fraction, stratify=labels, random_state=seed)
    valid, test = train_test_split(
        rest, train_size=valid_fraction / (valid_fraction + test_fraction), stratify=labels[rest], random_state=seed
    )
    return {"train": np.sort(train), "valid": np.sort(valid), "test": np.sort(test)}


def normalise(values: np.ndarray, train_index: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(x - mean) / (std + 1e-5) per channel with NaN-aware statistics of the training rows only."""
    train = values[train_index]
    mean = np.nanmean(train, axis=(0, 1))
    std = np.nanstd(train, axis=(0, 1), ddof=1)
    return (values - mean) / (std + 1e-5), mean, std


# ------------------------------------------------------------------------------------------------ control path
def fill_missing(ts: jax.Array, values: jax.Array) -> jax.Array:
    """Fills NaNs along axis -2 of (..., L, C) `values`: linear interpolation in time between the neighbouring
    observations, the first observation before it, the last one after it. A channel with no observation becomes 0."""
    length = values.shape[-2]
    seen = ~jnp.isnan(values)
    position = jnp.arange(length).reshape((length, 1))
    previous = jax.lax.cummax(jnp.where(seen, position, -1), axis=values.ndim - 2)
    following = jax.lax.cummin(jnp.where(seen, position, length), axis=values.ndim - 2, reverse=True)
    first = jnp.min(jnp.where(seen, position, length), axis=-2, keepdims=True)
    last = jnp.max(jnp.where(seen, position, -1), axis=-2, keepdims=True)
    previous = jnp.where(previous < 0, first, previous).clip(0, length - 1)
    following = jnp.where(following >= length, last, following).clip(0, length - 1)
    zeroed = jnp.where(seen, values, 0.0)
    before = jnp.take_along_axis(zeroed, previous, axis=-2)
    after = jnp.take_along_axis(zeroed, following, axis=-2)
    t = ts.reshape((length, 1))
    t_before, t_after = ts[previous], ts[following]
    span = t_after - t_before
    weight = jnp.where(span > 0, (t - t_before) / jnp.where(span > 0, span, 1.0), 0.0)
    return jnp.where(seen, values, before + weight * (after - before))


@jax.jit
def _hermite_coefficients(ts: jax.Array, values: jax.Array):
    x = fill_missing(ts, values)
    dt = (ts[1:] - ts[:-1]).reshape((-1, 1))
    slope = (x[..., 1:, :] - x[..., :-1, :]) / dt  # secant on each interval = derivative at its right knot
    # Derivative at the left knot: the backward difference, i.e. the previous interval's secant (first: its own).
    left_slope = jnp.concatenate([slope[..., :1, :], slope[..., :-1, :]], axis=-2)
    a = x[..., :-1, :]
    b = left_slope
    c = 2.0 * (slope - left_slope) / dt
    d = (left_slope - slope) / dt**2
    return d, c, b, a


def hermite_coefficients(ts, values):
    """Cubic Hermite coefficients with backward differences of (..., L, C) `values` observed at times `ts` (L,).

    Returns (d, c, b, a), each (..., L - 1, C): on [t_i, t_{i+1}] the path is a + b s + c s^2 + d s^3 with s = t - t_i.
    It passes through every observation, and its derivative at t_i is the backward difference (x_i - x_{i-1}) / dt,
    so the path up to t_i depends on the data up to t_i only."""
    if not isinstance(values, jax.core.Tracer):
        check_observed(np.asarray(values).reshape((-1,) + np.shape(values)[-2:]))
    ts = jnp.asarray(ts)
    if ts.ndim != 1 or ts.shape[0] != np.shape(values)[-2] or ts.shape[0] < 2:
        raise ValueError(f"ts has shape {ts.shape}; expected (L,) with L = values.shape[-2] = {np.shape(values)[-2]} >= 2")
    return _hermite_coefficients(ts, jnp.asarray(values))


def hermite_evaluate(ts: jax.Array, coeffs, t) -> jax.Array:
    """The Hermite path at time(s) `t`: (..., C) for a scalar t, (..., T, C) for t of shape (T,)."""
    d, c, b, a = coeffs
    t = jnp.asarray(t)
    index = jnp.clip(jnp.searchsorted(ts, t, side="right") - 1, 0, ts.shape[0] - 2)
    s = (t - ts[index])[..., None]
    take = lambda coeff: jnp.take(coeff, index, axis=-2)
    return take(a) + s * (take(b) + s * (take(c) + s * take(d)))


# -------------------------------------------------------------------------------------------------- everything
@dataclasses.dataclass(frozen=True)
class TimeSeriesData:
    name: str
    missing_rate: float
    times: np.ndarray  # (L,) observation times, linspace(0, 1, L)
    values: np.ndarray  # (N, L, C) float32 path channels: time, [intensity (D)], data (D) normalised, NaN = missing
    coeffs: tuple  # (d, c, b, a), each (N, L - 1, C) float32: the control path's Hermite coefficients
    labels: np.ndarray  # (N,) int32
    splits: dict  # {"train", "valid", "test"} -> sorted row indices
    class_names: tuple[str, ...]
    num_data_channels: int

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def num_channels(self) -> int:
        return self.values.shape[-1]

    def subset(self, split: str) -> dict[str, np.ndarray]:
        """The rows of one split as {"coeffs": (d, c, b, a), "label": ...} numpy arrays."""
        index = self.splits[split]
        return {"coeffs": tuple(c[index] for c in self.coeffs), "label": self.labels[index]}


def prepare_timeseries(
    name: str,
    missing_rate: float = 0.0,
    seed: int = 0,
    *,
    use_intensity: bool = False,
    split: str = "stratified",
    per_channel: bool = False,
    allow_download: bool = False,
) -> TimeSeriesData:
    """Loads, corrupts, splits, normalises and interpolates one dataset (see the module docstring for each step).

    `split="stratified"`: 0.7 / 0.15 / 0.15 of the pooled data (seeded); `split="original"`: the archive's train file
    for training and its test file for both validation and test."""
    check_missing_rate(missing_rate)
    if split not in ("stratified", "original"):
        raise ValueError(f"split={split!r} must be 'stratified' or 'original'")
    raw = load_ucr_uea(name, allow_download=allow_download)
    values = drop_observations(raw.values, missing_rate, seed, per_channel=per_channel)
    check_observed(values, what=f"{name} series")
    if split == "stratified":
        splits = stratified_split(raw.labels, seed)
    else:
        train = np.flatnonzero(~raw.from_test_file)
        test = np.flatnonzero(raw.from_test_file)
        splits = {"train": train, "valid": test, "test": test}
    values, _, _ = normalise(values, splits["train"])
    channels = [values]
    if use_intensity:
        channels.insert(0, observational_intensity(values))
    path = add_time_channel(np.concatenate(channels, axis=-1))
    times = np.linspace(0.0, 1.0, path.shape[1])
    coeffs = hermite_coefficients(times, path)
    return TimeSeriesData(
        name=name,
        missing_rate=float(missing_rate),
        times=times.astype(np.float32),
        values=path.astype(np.float32),
        coeffs=tuple(np.asarray(c, dtype=np.float32) for c in coeffs),
        labels=raw.labels,
        splits=splits,
        class_names=raw.class_names,
        num_data_channels=raw.values.shape[-1],
    )
