"""Gradient accumulation over micro-batches against the whole-batch jax.value_and_grad."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from robust_jax.core.train import micro_batched_value_and_grad


def _problem(key, batch_size=16):
    k1, k2, k3 = jax.random.split(key, 3)
    params = {"w": jax.random.normal(k1, (5, 3)), "b": jnp.zeros(3)}
    batch = {"x": jax.random.normal(k2, (batch_size, 5)), "y": jax.random.normal(k3, (batch_size, 3))}
    return params, batch


def _loss(params, batch, key, scale):
    del key
    residual = jnp.tanh(batch["x"] @ params["w"] + params["b"]) - batch["y"]
    loss = scale * jnp.mean(residual**2)
    return loss, {"abs_error": jnp.mean(jnp.abs(residual)), "count": jnp.int32(batch["x"].shape[0])}


@pytest.mark.parametrize("micro_batch_size", [1, 4, 8, 16])
def test_accumulated_gradient_equals_whole_batch(key, micro_batch_size):
    params, batch = _problem(key)
    (loss, aux), grads = jax.value_and_grad(_loss, has_aux=True)(params, batch, key, 2.0)
    accumulated = jax.jit(micro_batched_value_and_grad(_loss, micro_batch_size, has_aux=True))
    (m_loss, m_aux), m_grads = accumulated(params, batch, key, 2.0)
    np.testing.assert_allclose(m_loss, loss, rtol=1e-6)
    np.testing.assert_allclose(m_aux["abs_error"], aux["abs_error"], rtol=1e-6)  # floating aux: averaged
    assert int(m_aux["count"]) == micro_batch_size  # integer aux: the last micro-batch's
    for a, b in zip(jax.tree.leaves(m_grads), jax.tree.leaves(grads)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_micro_batches_are_strided_and_get_their_own_keys(key):
    """Micro-batch c holds rows c, c + count, ... and draws with fold_in(key, c)."""
    batch = {"i": jnp.arange(8, dtype=jnp.float32)}

    def fn(weight, batch, key):
        noise = jax.random.uniform(key)
        return weight * jnp.mean(batch["i"]) + noise, batch["i"]

    (loss, rows), grad = micro_batched_value_and_grad(fn, 2, has_aux=True)(1.0, batch, key)
    count = 4
    # Floating aux is averaged: rows (c, c + 4) for c = 0..3 average to (1.5, 5.5).
    np.testing.assert_allclose(rows, [1.5, 5.5])
    noise = np.mean([jax.random.uniform(jax.random.fold_in(key, c)) for c in range(count)])
    np.testing.assert_allclose(loss, np.mean(np.arange(8)) + noise, rtol=1e-6)
    np.testing.assert_allclose(grad, np.mean(np.arange(8)), rtol=1e-6)


def test_sharded_batch_matches_unsharded(key):
    params, batch = _problem(key, batch_size=64)
    mesh = jax.make_mesh((jax.device_count(),), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    sharded = jax.device_put(batch, NamedSharding(mesh, PartitionSpec("data")))
    accumulated = jax.jit(micro_batched_value_and_grad(_loss, 16, has_aux=True))
    (loss, _), grads = accumulated(params, sharded, key, 1.0)
    (ref_loss, _), ref_grads = jax.value_and_grad(_loss, has_aux=True)(params, batch, key, 1.0)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-6)
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_bad_micro_batch_size_is_a_clear_error(key):
    params, batch = _problem(key)
    with pytest.raises(ValueError, match="micro_batch_size=5 must be positive and divide the batch size 16"):
        micro_batched_value_and_grad(_loss, 5, has_aux=True)(params, batch, key, 1.0)
    with pytest.raises(ValueError, match="different leading sizes"):
        micro_batched_value_and_grad(_loss, 4, has_aux=True)(params, {"x": batch["x"], "y": batch["y"][:8]},
                                                              key, 1.0)
