"""Inference cost per noise sample of a base classifier: what certification pays for each of its n0 + n samples.

FLOPs come from XLA's cost analysis of the jitted apply_fn compiled for one batch on one device
(`jax.jit(apply_fn).lower(params, inputs).compile().cost_analysis()["flops"]`, divided by the batch size): the
compiler's count of the operations it will run, a property of the model, not of the machine. Measured time is the
median wall time of that compiled function on a batch (after a warm-up call) divided by the batch size; it depends on
the machine and its load, so it is reported beside the results, never inside results.json's metrics.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np


def _compiled(apply_fn, params, input_shape: tuple, batch_size: int):
    device = jax.local_devices()[0]
    params = jax.device_put(params, device)
    inputs = jax.device_put(jnp.full((batch_size, *input_shape), 0.5, jnp.float32), device)
    return jax.jit(apply_fn).lower(params, inputs).compile(), params, inputs


def flops_per_sample(apply_fn, params, input_shape: tuple, batch_size: int = 256) -> float:
    """XLA's FLOP count of apply_fn(params, inputs) on a (batch_size, *input_shape) batch, per input."""
    compiled, _, _ = _compiled(apply_fn, params, input_shape, batch_size)
    analysis = compiled.cost_analysis()
    if isinstance(analysis, (list, tuple)):  # older jax: one dict per device program
        analysis = analysis[0]
    if not analysis or "flops" not in analysis:
        raise RuntimeError("XLA's cost analysis gave no FLOP count for this backend")
    return float(analysis["flops"]) / batch_size


def seconds_per_sample(classifiers: dict, input_shape: tuple, batch_size: int = 256, repeats: int = 7) -> dict:
    """{name: median seconds per input} of each (apply_fn, params) in `classifiers`, timed in rounds (one call of
    each per round) so that a change of the machine's load affects every classifier alike."""
    compiled = {name: _compiled(apply_fn, params, input_shape, batch_size)
                for name, (apply_fn, params) in classifiers.items()}
    for function, params, inputs in compiled.values():
        jax.block_until_ready(function(params, inputs))
    times = {name: [] for name in compiled}
    for _ in range(repeats):
        for name, (function, params, inputs) in compiled.items():
            start = time.perf_counter()
            jax.block_until_ready(function(params, inputs))
            times[name].append(time.perf_counter() - start)
    return {name: float(np.median(values)) / batch_size for name, values in times.items()}
