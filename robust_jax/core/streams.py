"""One single-threaded program per core: independent shares of a batch run at once on one CPU device.

XLA's multi-threaded CPU kernels split each operation over the cores and hand work between threads at every
operation; on the networks of this project that keeps two cores only partly busy (certification's ResNet-110: about
97 samples per CPU-second with XLA's two threads against about 135 on one thread; CLIP's dense layers about 124
GFLOP/s on one core but about 83 per core when two threads share them). Where the rows of a batch are independent
(a forward pass without batch statistics, Monte Carlo counts), the batch is cut into one share per core instead and
each share runs through the same function compiled single-threaded (`xla_cpu_multi_thread_eigen=False`), the shares
at once from a thread pool (XLA releases the GIL while it runs).

Every row goes through the same per-row function, so the outputs equal the one-program forward's up to float
rounding inside the kernels (tests/core/test_streams.py checks 1e-5 on CLIP's embeddings).

`cpu_streams` says how many shares to use: the cores this process may use on a mesh of one CPU device, else 1 (on
accelerators and multi-device meshes the batch is split over the devices instead).
"""

from __future__ import annotations

import concurrent.futures
import os
from collections.abc import Callable

import jax
import numpy as np

from robust_jax.core import checks

__all__ = ["SINGLE_THREADED", "StreamedApply", "cpu_streams"]

# XLA compile option for one program per core.
SINGLE_THREADED = {"xla_cpu_multi_thread_eigen": False}
STREAMS_ENV = "ROBUST_JAX_CPU_STREAMS"


def cpu_streams(devices=None, env: str = STREAMS_ENV) -> int:
    """Shares to run at once: the cores this process may use when `devices` (default: every device JAX sees) is one
    CPU device, else 1. The environment variable `env` (an integer >= 1) overrides it."""
    devices = list(jax.devices()) if devices is None else list(np.asarray(devices).flat)
    if len(devices) != 1 or devices[0].platform != "cpu":
        return 1
    override = os.environ.get(env, "")
    if override:
        return checks.check_int(env, int(override), minimum=1)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores)


class StreamedApply:
    """fn(params, inputs) -> outputs, with inputs and outputs of `batch` rows on axis 0 and rows independent, as
    `streams` single-threaded programs on consecutive equal shares of the rows (the last share padded with copies of
    the last row, so every share has one shape and the function compiles once per batch size). Returns numpy.

    streams defaults to `cpu_streams()`. With streams = 1 it is fn jitted as usual (XLA's own threads); outputs are
    then fetched to numpy as well.
    """

    def __init__(self, fn: Callable, streams: int | None = None):
        self.streams = cpu_streams() if streams is None else checks.check_int("streams", streams, minimum=1)
        if self.streams == 1:
            self._jitted = jax.jit(fn)
            self._pool = None
        else:
            self._jitted = jax.jit(fn, compiler_options=SINGLE_THREADED)
            self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=self.streams)

    def __call__(self, params, inputs) -> np.ndarray:
        if self._pool is None:
            return np.asarray(self._jitted(params, inputs))
        inputs = np.asarray(inputs)
        batch = inputs.shape[0]
        shares = min(self.streams, batch)
        if shares <= 1:
            return np.asarray(self._jitted(params, inputs))
        rows = -(-batch // shares)
        padding = shares * rows - batch
        if padding:
            inputs = np.concatenate([inputs, np.repeat(inputs[-1:], padding, axis=0)])
        parts = self._pool.map(lambda s: np.asarray(self._jitted(params, inputs[s * rows:(s + 1) * rows])),
                               range(shares))
        return np.concatenate(list(parts))[:batch]
