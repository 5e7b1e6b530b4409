"""Device mesh and batch sharding.

Every study runs on a 1-D mesh with the batch split over the 'data' axis and parameters replicated, unless a config
asks for FSDP. The same code runs on one device, many devices, or several processes: host-local batches are turned
into global arrays with `jax.make_array_from_process_local_data`.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"


def make_data_mesh(devices: list | None = None) -> Mesh:
    """A 1-D mesh over `devices` (default: every device of every process) with axis 'data'."""
    devices = jax.devices() if devices is None else list(devices)
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) dimension split over 'data', everything else whole."""
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def global_batch(mesh: Mesh, local_batch):
    """Turns this process's slice of a batch (a pytree of arrays) into global arrays sharded on 'data'.

    With one process the local batch is the whole batch.
    """
    sharding = batch_sharding(mesh)
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), local_batch)


def replicate(mesh: Mesh, tree):
    """A pytree of arrays that every process holds the same (keys, constants) as global arrays replicated on the
    mesh; works on one process or many (a plain device_put cannot target other processes' devices)."""
    sharding = replicated(mesh)

    def one(x):
        if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            data = jax.make_array_from_process_local_data(sharding, np.asarray(jax.random.key_data(x)))
            return jax.random.wrap_key_data(data, impl=jax.random.key_impl(x))
        return jax.make_array_from_process_local_data(sharding, np.asarray(x))

    return jax.tree.map(one, tree)


def local_batch_size(global_batch_size: int) -> int:
    """Rows of the global batch that this process feeds."""
    count = jax.process_count()
    if global_batch_size % count:
        raise ValueError(
            f"batch_size={global_batch_size} must be divisible by the process count ({count})"
        )
    return global_batch_size // count
