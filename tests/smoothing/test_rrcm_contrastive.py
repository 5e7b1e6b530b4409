"""robust_jax/smoothing/contrastive.py: InfoNCE against a direct numpy computation (also on a batch sharded over 8
devices, where the negatives must come from the whole global batch), the EMA-rate schedule's end points,
monotonicity and documented formula, and the EMA update."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from robust_jax.core.mesh import make_data_mesh
from robust_jax.smoothing.contrastive import EmaRateSchedule, ema_update, info_nce, symmetric_info_nce


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
    expected = 0.5 * (_info_nce_numpy(online_1, target_2, 0.2) + _info_nce_numpy(online_2, target_1, 0.2))
    np.testing.assert_allclose(symmetric_info_nce(online_1, online_2, target_1, target_2), expected, rtol=1e-5)
    # No gradient flows into the targets.
    grad_target = jax.grad(lambda t: symmetric_info_nce(online_1, online_2, t, target_2))(target_1)
    np.testing.assert_array_equal(grad_target, 0.0)


def test_info_nce_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="shape"):
        info_nce(jnp.zeros((4, 3)), jnp.zeros((5, 3)))


def test_ema_rate_end_points_and_monotonicity():
    schedule = EmaRateSchedule(total_steps=1000)
    assert abs(float(schedule(0)) - 0.99) < 1e-4
    assert abs(float(schedule(1000)) - 0.9999) < 1e-4
    assert abs(float(schedule(5000)) - 0.9999) < 1e-4
    rates = np.asarray(jax.jit(schedule)(jnp.arange(1001)), np.float64)
    assert np.all(np.diff(rates) >= -1e-7)  # float32 rounding near 1 aside, never decreasing
    assert rates[250] < rates[500] < rates[750]


def test_ema_rate_follows_the_documented_sigmoid():
    schedule = EmaRateSchedule(total_steps=200, start=0.9, end=0.99, steepness=8.0)

    def sigmoid(z):
        return 1 / (1 + math.exp(-z))

    for step in (0, 37, 100, 163, 200):
        rising = (sigmoid(8.0 * (step / 200 - 0.5)) - sigmoid(-4.0)) / (sigmoid(4.0) - sigmoid(-4.0))
        assert float(schedule(step)) == pytest.approx(0.9 + 0.09 * rising, abs=1e-6)
    assert float(schedule(100)) == pytest.approx(0.945, abs=1e-6)  # half-way by symmetry


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
