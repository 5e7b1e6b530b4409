"""Monte Carlo class counts of a base classifier under Gaussian input noise, computed on device.

Randomness layout (why results do not depend on the device count):
  batch b uses batch_key = fold_in(key, b); row r of that batch uses fold_in(batch_key, r).
Each noise row is a function of (key, b, r) only, so how rows are split over devices cannot change it. Sample j of
the n requested lives in batch j // batch_size, row j % batch_size.

Device rule: the batch is split over every device of the mesh on the 'data' axis, so its physical size must be a
multiple of the device count. A batch_size that is not is padded up to the next multiple, and the padded rows are
masked out of the counts exactly like the tail of the last batch. The logical batch (and so every count) stays the
one asked for; the padding only costs at most (devices - 1) wasted rows per batch. Each device counts its own rows
and keeps its partial counts until the request's last batch; the host sums them once, so a step has no collective.

One CPU device: the batch's rows are split into `counting_streams` consecutive shares (one per core), each counted by
a single-threaded program, the shares run at once from a thread pool and their counts summed. The noise rows are the
same as above (a share pads its last rows the same masked way), so the counts do not depend on the split either.

Compilation: the jitted counting step is cached per (apply_fn, mesh, batch_size, num_classes, streams) and jax.jit caches per
input shape, so certifying many images of one shape compiles once. sigma, the key, the batch index and the number of
valid rows are traced arguments: changing them never recompiles.

Small requests: num_samples below batch_size (certify's n0 = 100 selection draw at batch 400) runs one smaller batch,
the next power of two >= num_samples, instead of a full batch that is mostly masked out (Cohen et al.'s CIFAR
setting evaluates 128 rows instead of 400, 2.6% of all the samples certify evaluates per image). Sample j is still
row j of batch 0, so the counts are unchanged; it costs one more compiled step per power of two actually used.
"""

from __future__ import annotations

import concurrent.futures
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from robust_jax.core.mesh import batch_sharding, make_data_mesh, replicated
from robust_jax.core import checks
from robust_jax.core import streams as streams_lib


def check_sampling_arguments(*, sigma, batch_size, num_classes=None, alpha=None, **sample_counts) -> dict:
    """The checks every sampling entry point shares, run once per call; returns the validated values by name.

    sigma is the noise standard deviation for inputs in [0, 1]. sample_counts are the named sample counts of the
    call (n, n0, num_samples, ...), each an integer >= 1.
    """
    checked = {"sigma": checks.check_float("sigma", sigma, positive=True),
               "batch_size": checks.check_int("batch_size", batch_size, minimum=1)}
    checked.update({name: checks.check_int(name, value, minimum=1) for name, value in sample_counts.items()})
    if alpha is not None:
        checked["alpha"] = checks.check_probability("alpha", alpha)
    checked["num_classes"] = None if num_classes is None else checks.check_int("num_classes", num_classes, minimum=1)
    return checked


def padded_batch_size(batch_size: int, device_count: int) -> int:
    """Smallest multiple of device_count that holds batch_size rows."""
    return -(-batch_size // device_count) * device_count


def step_batch_size(batch_size: int, num_samples: int) -> int:
    """Logical batch of the compiled step: batch_size, or the next power of two >= num_samples when that is smaller."""
    if num_samples >= batch_size:
        return batch_size
    return min(batch_size, 1 << (num_samples - 1).bit_length())


def as_noise_dtype(x_host: np.ndarray) -> np.ndarray:
    """Noise is drawn in x's dtype: integer/bool inputs become float32, float64 follows jax's x64 setting."""
    if not np.issubdtype(x_host.dtype, np.floating):
        return x_host.astype(np.float32)
    return x_host.astype(jax.dtypes.canonicalize_dtype(x_host.dtype), copy=False)


def _class_votes(outputs, num_classes: int | None) -> tuple[jax.Array, int]:
    """Turns apply_fn outputs into one class index per row.

    Logits of shape (B, C) vote for their argmax; integer outputs of shape (B,) are class indices already (a hard
    classifier, e.g. a denoiser pipeline that returns labels), and then num_classes must be given.
    """
    if outputs.ndim == 2 and jnp.issubdtype(outputs.dtype, jnp.floating):
        if num_classes is not None and num_classes != outputs.shape[-1]:
            raise ValueError(
                f"num_classes={num_classes} but apply_fn returns {outputs.shape[-1]} logits per input"
            )
        return jnp.argmax(outputs, axis=-1), outputs.shape[-1]
    if outputs.ndim == 1 and jnp.issubdtype(outputs.dtype, jnp.integer):
        if num_classes is None:
            raise ValueError("num_classes=None but apply_fn returns class indices; pass num_classes")
        return outputs, num_classes
    raise ValueError(
        "apply_fn must return float logits of shape (batch, classes) or integer classes of shape (batch,), "
        f"got {outputs.dtype} of shape {outputs.shape}"
    )


def counting_streams(mesh: Mesh) -> int:
    """How many single-threaded streams the counting step runs at once: on a mesh of one CPU device, one per core
    this process may use (ROBUST_JAX_COUNTING_STREAMS overrides it); on accelerators and multi-device meshes, 1 (the
    batch is split over the devices instead). See robust_jax.core.streams.

    Why: XLA's multi-threaded CPU kernels keep two cores only about 75% busy on a network of small convolutions
    (certify_throughput's ResNet-110: 97 samples per CPU-second with two threads, about 135 on one thread), so each
    core runs its own share of the batch single-threaded instead.
    """
    return streams_lib.cpu_streams(mesh.devices, env="ROBUST_JAX_COUNTING_STREAMS")


def _count_rows_fn(apply_fn, batch_size: int, rows_per_call: int, num_classes: int | None, rows_sharding=None,
                   groups: int = 1):
    """count_rows(params, x, key, batch_index, num_valid, sigma, first_row): the class counts of rows
    first_row .. first_row + rows_per_call - 1 of batch batch_index (rows past min(num_valid, batch_size) are
    computed but not counted), as `groups` partial counts of consecutive rows, shape (groups, classes).

    With the rows sharded over `groups` devices each device counts its own rows and nothing crosses devices: the
    partial counts stay sharded and are summed on the host once per request."""

    def count_rows(params, x, key, batch_index, num_valid, sigma, first_row):
        batch_key = jax.random.fold_in(key, batch_index)
        rows = first_row + jnp.arange(rows_per_call)

        def noise_row(row):
            return jax.random.normal(jax.random.fold_in(batch_key, row), x.shape, x.dtype)

        noise_BxX = jax.vmap(noise_row)(rows)
        if rows_sharding is not None:
            noise_BxX = jax.lax.with_sharding_constraint(noise_BxX, rows_sharding)
        outputs = apply_fn(params, x[None] + sigma.astype(x.dtype) * noise_BxX)
        votes_B, classes = _class_votes(outputs, num_classes)
        # Padding rows (device rounding, stream rounding, tail of the last batch) are computed but never counted.
        valid_B = (rows < jnp.minimum(num_valid, batch_size)).astype(jnp.int32)
        votes_BxC = jax.nn.one_hot(votes_B, classes, dtype=jnp.int32) * valid_B[:, None]
        return jnp.sum(votes_BxC.reshape(groups, rows_per_call // groups, classes), axis=1)

    return count_rows


class _StreamedCountingStep:
    """The counting step on one CPU device as `streams` single-threaded programs, each on its own share of the
    batch's rows, run at once from a thread pool; called like the jitted step, returns the summed counts.

    Every row still gets noise row (key, batch_index, row) and the same per-row function, so the counts are those of
    the single program up to float rounding inside the model (tests/smoothing/test_sampling.py checks equal votes).
    """

    def __init__(self, apply_fn, batch_size: int, num_classes: int | None, streams: int):
        self.rows_per_stream = -(-batch_size // streams)
        self.first_rows = [np.int32(self.rows_per_stream * s) for s in range(streams)
                           if self.rows_per_stream * s < batch_size]
        self.count_rows = jax.jit(
            _count_rows_fn(apply_fn, batch_size, self.rows_per_stream, num_classes),
            compiler_options=streams_lib.SINGLE_THREADED)
        self.pool = concurrent.futures.ThreadPoolExecutor(max_workers=len(self.first_rows))

    def __call__(self, params, x, key, batch_index, num_valid, sigma):
        def run(first_row):
            return np.asarray(self.count_rows(params, x, key, batch_index, num_valid, sigma, first_row))

        return sum(self.pool.map(run, self.first_rows))  # (1, classes)


def _build_counting_step(apply_fn, mesh: Mesh, batch_size: int, num_classes: int | None, streams: int):
    if min(streams, batch_size) > 1:  # at least two non-empty shares
        return _StreamedCountingStep(apply_fn, batch_size, num_classes, streams)
    devices = mesh.devices.size
    physical_batch = padded_batch_size(batch_size, devices)
    count_rows = _count_rows_fn(apply_fn, batch_size, physical_batch, num_classes, batch_sharding(mesh), devices)

    def count_batch(params, x, key, batch_index, num_valid, sigma):
        return count_rows(params, x, key, batch_index, num_valid, sigma, 0)

    # One partial count per device, left on its device: no collective in the step. (On several CPU devices an
    # all-reduce here could deadlock XLA's CPU runtime when steps are dispatched while earlier ones still run:
    # reproduced in about a minute of back-to-back sample_counts calls on 8 CPU devices of a loaded 2-core machine.)
    return jax.jit(count_batch, out_shardings=batch_sharding(mesh))


@functools.lru_cache(maxsize=64)
def _cached_counting_step(apply_fn, mesh: Mesh, batch_size: int, num_classes: int | None, streams: int):
    return _build_counting_step(apply_fn, mesh, batch_size, num_classes, streams)


def counting_step(apply_fn, mesh: Mesh, batch_size: int, num_classes: int | None = None, streams: int | None = None):
    """The per-batch counting function (params, x, key, batch_index, num_valid, sigma) -> partial counts of shape
    (devices, classes) (their sum over axis 0 is the batch's counts), shared by every call with the same static
    settings: one jitted program (streams = 1), or on one CPU device `streams` of them (default
    `counting_streams(mesh)`).

    An unhashable apply_fn cannot be a cache key; it still works but compiles on every call.
    """
    streams = counting_streams(mesh) if streams is None else checks.check_int("streams", streams, minimum=1)
    try:
        hash(apply_fn)
    except TypeError:
        return _build_counting_step(apply_fn, mesh, batch_size, num_classes, streams)
    return _cached_counting_step(apply_fn, mesh, batch_size, num_classes, streams)


def sample_counts(
    apply_fn,
    params,
    x,
    *,
    sigma: float,
    num_samples: int,
    batch_size: int,
    key: jax.Array,
    num_classes: int | None = None,
    mesh: Mesh | None = None,
) -> np.ndarray:
    """Counts of the base classifier's predictions on num_samples copies of x + N(0, sigma^2 I).

    apply_fn(params, inputs) -> logits (batch, classes), or integer classes (batch,) with num_classes given.
    x is one input of any shape with values in [0, 1]. mesh defaults to every device on the 'data' axis.
    Returns an int64 array of length num_classes that sums to num_samples.
    """
    args = check_sampling_arguments(sigma=sigma, num_samples=num_samples, batch_size=batch_size,
                                    num_classes=num_classes)
    sigma, num_samples, batch_size, num_classes = (
        args[k] for k in ("sigma", "num_samples", "batch_size", "num_classes"))
    x_host = as_noise_dtype(checks.check_unit_interval_array("x", x))
    return _sample_counts_unchecked(
        apply_fn, params, x_host, sigma, num_samples, batch_size, key, num_classes, mesh
    )


def _sample_counts_unchecked(apply_fn, params, x_host, sigma, num_samples, batch_size, key, num_classes, mesh):
    mesh = make_data_mesh() if mesh is None else mesh
    # Changing the batch size cannot change the counts here: with fewer samples than a batch there is only batch 0.
    batch_size = step_batch_size(batch_size, num_samples)
    step = counting_step(apply_fn, mesh, batch_size, num_classes)
    everywhere = replicated(mesh)
    # Committed params from elsewhere (e.g. one training device) must move onto this mesh; a no-op when they are there.
    params = jax.device_put(params, everywhere)
    x = jax.device_put(x_host, everywhere)
    sigma = jax.device_put(np.float32(sigma), everywhere)
    key = jax.device_put(key, everywhere)
    num_batches = -(-num_samples // batch_size)
    total = None
    for batch_index in range(num_batches):
        num_valid = min(batch_size, num_samples - batch_index * batch_size)
        # Accumulated on device: the host waits once, for the final counts only.
        counts = step(params, x, key, np.int32(batch_index), np.int32(num_valid), sigma)
        total = counts if total is None else total + counts
    return np.asarray(jax.device_get(total)).astype(np.int64).sum(axis=0)
