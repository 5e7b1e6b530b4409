"""robust_jax/smoothing/methods/rrcm/contrastive.py: InfoNCE against a direct numpy computation (also on a batch sharded over 8
devices, where the negatives must come from the whole global batch), the EMA-rate schedule's end points,
monotonicity and documented formula, and the EMA update."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from robust_jax.core.mesh import make_data_mesh
from robust_jax.smoothing.methods.rrcm.contrastive import (
    EmaRateSchedule,
    ema_update,
    info_nce,
    symmetric_info_nce,
    tied_ema_end,
)


def _info_nce_numpy(queries, keys, temperature):
    q = np.asarray(queries, np.float64)
    k = np.asarray(keys, np.float64)
    q = q / np.linalg.norm(q, axis=1, keepdims=True)
    k = k / np.linalg.norm(k, axis=1, keepdims=True)
    total = 0.0
    for i in range(len(q)):
        logits = [float(q[i] @ k[j]) / temperature for j in range(len(k))]
        top = max(logits)
        log_normaliser = top + math.log(sum(math.exp(v - top) for v in logits))
        total += log_normaliser - logits[i]
    return total / len(q)


def test_info_nce_matches_numpy(key):
    queries = jax.random.normal(key, (8, 5))
    keys = queries + 0.7 * jax.random.normal(jax.random.fold_in(key, 1), (8, 5))
    for temperature in (0.2, 1.0):
        np.testing.assert_allclose(info_nce(queries, keys, temperature), _info_nce_numpy(queries, keys, temperature),
                                   rtol=1e-5)
    # Scaling a vector does not change the loss (the vectors are L2-normalised).
    np.testing.assert_allclose(info_nce(3.0 * queries, keys), info_nce(queries, keys), rtol=1e-5)


def test_info_nce_on_a_sharded_batch_uses_global_negatives(key):
    mesh = make_data_mesh()
    assert mesh.devices.size == 8
    queries = jax.random.normal(key, (16, 4))
    keys = queries + 0.5 * jax.random.normal(jax.random.fold_in(key, 1), (16, 4))
    sharding = NamedSharding(mesh, PartitionSpec("data"))
    sharded = jax.jit(info_nce)(jax.device_put(queries, sharding), jax.device_put(keys, sharding))
    expected = _info_nce_numpy(queries, keys, 0.2)
    np.testing.assert_allclose(sharded, expected, rtol=1e-5)
    per_device = np.mean([_info_nce_numpy(queries[i:i + 2], keys[i:i + 2], 0.2) for i in range(0, 16, 2)])
    assert abs(per_device - expected) > 1e-2  # the check above could tell the two apart


def test_symmetric_info_nce_matches_numpy(key):
    online_1, online_2, target_1, target_2 = jax.random.normal(key, (4, 6, 3))
    # summed over the two directions, as the official code sums them
    expected = _info_nce_numpy(online_1, target_2, 0.2) + _info_nce_numpy(online_2, target_1, 0.2)
    np.testing.assert_allclose(symmetric_info_nce(online_1, online_2, target_1, target_2), expected, rtol=1e-5)
    # No gradient flows into the targets.
    grad_target = jax.grad(lambda t: symmetric_info_nce(online_1, online_2, t, target_2))(target_1)
    np.testing.assert_array_equal(grad_target, 0.0)


def test_info_nce_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="shape"):
        info_nce(jnp.zeros((4, 3)), jnp.zeros((5, 3)))


def _official_ema_rate(k, total, start, end, shape):
    """The official code's EMA rate (rRCM, utils.py), in float64."""
    m = math.sqrt(k / total * (end ** 2 - start ** 2) + start ** 2) if k < total else end
    c = 2 / (1 + math.exp(-shape * (m - start) / (end - start))) - 1
    return c * end + (1 - c) * start


@pytest.mark.parametrize(("total", "start", "end", "shape"), [(300_000, 0.99, 0.9999, 15.0),
                                                             (1500, 0.99, 0.999, 15.0), (200, 0.9, 0.99, 10.0)])
def test_ema_rate_is_the_official_schedule(total, start, end, shape):
    schedule = EmaRateSchedule(total_steps=total, start=start, end=end, shape=shape)
    steps = np.unique(np.linspace(0, 2 * total, 401).astype(int))
    ours = np.asarray(jax.jit(schedule)(jnp.asarray(steps)), np.float64)
    np.testing.assert_allclose(ours, [_official_ema_rate(int(k), total, start, end, shape) for k in steps],
                               atol=2e-6)
    assert float(schedule(0)) == pytest.approx(start, abs=1e-7)
    # c(D) = tanh(A / 2), not 1: the end rate is reached up to (1 - tanh(A / 2)) of the way
    assert abs(float(schedule(total)) - end) <= (1 - math.tanh(shape / 2)) * (end - start) + 1e-7
    assert np.all(np.diff(ours) >= -1e-6)  # float32 rounding near 1 aside, never decreasing


def test_ema_rate_saturates_by_a_quarter_of_the_run_at_shape_15():
    schedule = EmaRateSchedule(total_steps=1000, start=0.99, end=0.9999, shape=15.0)
    assert (float(schedule(250)) - 0.99) / (0.9999 - 0.99) > 0.95
    assert (float(schedule(50)) - 0.99) / (0.9999 - 0.99) < 0.4


def test_tied_end_rate_has_the_official_horizon():
    assert tied_ema_end(300_000, 1 / 30, 0.99) == pytest.approx(0.9999, abs=1e-12)
    assert tied_ema_end(30_000, 1 / 30, 0.99) == pytest.approx(0.999, abs=1e-12)
    assert tied_ema_end(1500, 1 / 30, 0.99) == 0.99  # a 50-step horizon is shorter than the start rate's 100
    with pytest.raises(ValueError, match="horizon"):
        tied_ema_end(100, 0.0, 0.99)
    flat = EmaRateSchedule(total_steps=10, start=0.99, end=0.99)
    assert float(flat(0)) == float(flat(7)) == pytest.approx(0.99)


@pytest.mark.parametrize(("kwargs", "message"), [
    (dict(total_steps=10, start=0.999, end=0.99), "end=0.99 is below start=0.999"),
    (dict(total_steps=10, end=1.0), "end must be an EMA rate in"),
    (dict(total_steps=0), "total_steps must be an integer >= 1"),
])
def test_bad_ema_schedule_is_a_clear_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        EmaRateSchedule(**kwargs)


def test_ema_update_matches_numpy():
    target = {"w": np.array([1.0, 2.0], np.float32), "b": {"c": np.array(4.0, np.float32)}}
    online = {"w": np.array([3.0, -2.0], np.float32), "b": {"c": np.array(0.0, np.float32)}}
    updated = ema_update(target, online, 0.75)
    np.testing.assert_allclose(updated["w"], [0.75 * 1 + 0.25 * 3, 0.75 * 2 - 0.25 * 2])
    np.testing.assert_allclose(updated["b"]["c"], 3.0)
