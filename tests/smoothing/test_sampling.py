"""robust_jax/smoothing/sampling.py: the smaller step used when fewer samples than a batch are asked for.

Checked against the documented noise layout evaluated directly (row r of batch 0 is N(0, I) drawn with
fold_in(fold_in(key, 0), r)), on 1 and 8 devices.
"""

import jax
import numpy as np
import pytest

from robust_jax.core.mesh import make_data_mesh
from robust_jax.smoothing import sample_counts
from robust_jax.smoothing.sampling import counting_step, counting_streams, step_batch_size

from .linear_classifier import DIMENSION, random_linear_logits, random_linear_params

SIGMA = 0.5


@pytest.mark.parametrize(
    ("batch_size", "num_samples", "expected"),
    [(400, 100, 128), (400, 400, 400), (400, 10_000, 400), (400, 1, 1), (100, 7, 8), (100, 65, 100), (100, 64, 64)],
)
def test_step_batch_size(batch_size, num_samples, expected):
    assert step_batch_size(batch_size, num_samples) == expected


def test_fewer_samples_than_a_batch_follow_the_documented_layout(key):
    params = random_linear_params()
    x = np.random.default_rng(3).uniform(0, 1, DIMENSION).astype(np.float32)
    num_samples = 100  # runs a 128-row step instead of a 400-row one
    batch_key = jax.random.fold_in(key, 0)
    noise = jax.vmap(lambda row: jax.random.normal(jax.random.fold_in(batch_key, row), (DIMENSION,)))(
        np.arange(num_samples))
    votes = np.argmax(np.asarray(random_linear_logits(params, x[None] + SIGMA * noise)), axis=-1)
    expected = np.bincount(votes, minlength=10)
    assert np.count_nonzero(expected) > 2  # enough classes that a change in the noise would show
    for devices in (jax.devices()[:1], jax.devices()):
        for batch_size in (400, 100, 10_000):
            got = sample_counts(random_linear_logits, params, x, sigma=SIGMA, num_samples=num_samples,
                                batch_size=batch_size, key=key, mesh=make_data_mesh(devices))
            np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("streams", [1, 2, 3])
def test_streams_on_one_cpu_device_follow_the_documented_layout(key, monkeypatch, streams):
    """One CPU device runs the batch as `streams` single-threaded shares; 3 streams split a 100-row batch 34/34/32
    (the last share padded), so the masking of padded rows is exercised too. Counts over 250 samples (two full
    batches and a tail of 50) must equal the direct evaluation of the layout."""
    monkeypatch.setenv("ROBUST_JAX_COUNTING_STREAMS", str(streams))
    mesh = make_data_mesh(jax.devices()[:1])
    assert counting_streams(mesh) == streams
    assert counting_streams(make_data_mesh(jax.devices()[:2])) == 1  # a multi-device mesh splits over devices

    params = random_linear_params()
    x = np.random.default_rng(4).uniform(0, 1, DIMENSION).astype(np.float32)
    batch_size, num_samples = 100, 250
    noise = np.concatenate([
        np.asarray(jax.vmap(lambda row, b=b: jax.random.normal(
            jax.random.fold_in(jax.random.fold_in(key, b), row), (DIMENSION,)))(np.arange(batch_size)))
        for b in range(3)])[:num_samples]
    votes = np.argmax(np.asarray(random_linear_logits(params, x[None] + SIGMA * noise)), axis=-1)
    expected = np.bincount(votes, minlength=10)
    assert np.count_nonzero(expected) > 2

    def fresh_logits(params, inputs):  # its own cache entry per test case
        return random_linear_logits(params, inputs)

    got = sample_counts(fresh_logits, params, x, sigma=SIGMA, num_samples=num_samples, batch_size=batch_size,
                        key=key, mesh=mesh)
    np.testing.assert_array_equal(got, expected)


def test_multi_device_step_counts_each_devices_rows_without_a_collective(key):
    """On 8 devices a 100-row batch is padded to 104 (13 rows each); the step returns one partial count per device,
    the counts of that device's rows of the layout, and its compiled program has no cross-device communication
    (an all-reduce in it could deadlock XLA's CPU runtime when steps are dispatched back to back)."""
    mesh = make_data_mesh(jax.devices())
    devices = mesh.devices.size
    params = random_linear_params()
    x = np.random.default_rng(5).uniform(0, 1, DIMENSION).astype(np.float32)
    batch_size, num_valid, batch_index = 100, 90, 3
    rows_per_device = -(-batch_size // devices)
    noise = np.asarray(jax.vmap(lambda row: jax.random.normal(
        jax.random.fold_in(jax.random.fold_in(key, batch_index), row), (DIMENSION,)))(np.arange(num_valid)))
    votes = np.argmax(np.asarray(random_linear_logits(params, x[None] + SIGMA * noise)), axis=-1)
    expected = np.stack([np.bincount(votes[d * rows_per_device:(d + 1) * rows_per_device], minlength=10)
                         for d in range(devices)])
    assert expected[-1].sum() == 0 and expected[-2].sum() == num_valid - 6 * rows_per_device  # masked rows

    def fresh_logits(params, inputs):  # its own cache entry
        return random_linear_logits(params, inputs)

    step = counting_step(fresh_logits, mesh, batch_size, 10)
    arguments = (params, x, key, np.int32(batch_index), np.int32(num_valid), np.float32(SIGMA))
    np.testing.assert_array_equal(np.asarray(step(*arguments)), expected)
    program = step.lower(*arguments).compile().as_text().lower()
    for collective in ("all-reduce", "all-gather", "reduce-scatter", "collective-permute", "all-to-all"):
        assert collective not in program, collective
