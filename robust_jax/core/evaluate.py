"""Exact evaluation over a whole dataset held in host memory, sharded over the mesh.

The last batch is padded to full size and masked, so every example counts once and the compiled function keeps one
shape. With several processes each one feeds its slice of every global batch.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from robust_jax.core import mesh as mesh_lib
from robust_jax.core.progress import Progress


def evaluate(
    per_example_fn: Callable,
    params,
    arrays: dict[str, np.ndarray],
    *,
    batch_size: int,
    mesh: Mesh | None = None,
    desc: str | None = None,
) -> dict[str, float]:
    """Means over the dataset of each per-example value that `per_example_fn(params, batch) -> {name: (B,)}` returns.

    The batch holds the arrays' rows plus "mask" (False on padding) and "index" (each row's position in the dataset).
    """
    mesh = mesh_lib.make_data_mesh() if mesh is None else mesh
    size = len(next(iter(arrays.values())))

    @jax.jit
    def batch_sums(params, batch):
        values = per_example_fn(params, batch)
        mask = batch["mask"]
        return {name: jnp.sum(jnp.where(mask, value, 0.0)) for name, value in values.items()}

    totals: dict[str, float] = {}
    num_batches = -(-size // batch_size)
    with Progress(num_batches, desc or "evaluate", enabled=desc is not None and jax.process_index() == 0) as progress:
        for batch in padded_batches(arrays, batch_size=batch_size, mesh=mesh):
            sums = jax.device_get(batch_sums(params, batch))
            for name, value in sums.items():
                totals[name] = totals.get(name, 0.0) + float(value)
            progress.update(1)
    return {name: total / size for name, total in totals.items()}


def padded_batches(arrays: dict[str, np.ndarray], *, batch_size: int, mesh: Mesh):
    """Global batches covering the dataset once, the last one padded with row 0 and masked.

    Each batch holds the arrays' rows plus "mask" (False on padding) and, unless the arrays carry their own,
    "index" (each row's position in the dataset, for per-example randomness with fold_in(key, index)); this
    process feeds its slice of every batch.
    """
    size = len(next(iter(arrays.values())))
    local = mesh_lib.local_batch_size(batch_size)
    lo = jax.process_index() * local
    for start in range(0, size, batch_size):
        rows = np.arange(start + lo, start + lo + local)
        mask = rows < size
        rows = np.where(mask, rows, 0)
        batch = {name: array[rows] for name, array in arrays.items()}
        batch["mask"] = mask
        batch.setdefault("index", rows.astype(np.int32))
        yield mesh_lib.global_batch(mesh, batch)
