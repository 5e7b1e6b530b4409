"""The generic train loop: one pure step, compiled once over a device mesh, with checkpoints and metrics.

A study hands over four things:
  * `init_fn(key) -> (params, model_state)` (model_state: non-trained collections such as batch statistics, or {}),
  * `loss_fn(params, model_state, batch, key[, step]) -> (loss, (metrics, new_model_state))`, on a *global*
    batch (a `step` parameter, if the loss has one, receives the step number),
  * an optax optimizer,
  * a batch iterator: `next()` gives this process's slice of the global batch (a dict of numpy arrays), and
    `get_state()` / `set_state(dict)` give its position as JSON, saved with every checkpoint.

The loop shards the batch on the mesh axis 'data', keeps parameters replicated (or FSDP-sharded on request), donates
the state to the step, derives the step's key as `fold_in(key, step)`, fetches metrics of step n-1 after step n is
dispatched so the device never waits, saves checkpoints every `checkpoint_every` steps and at the end, resumes from
the latest checkpoint in `workdir`, and stops with `NonFiniteLossError` naming the step where the loss stopped being
finite (checkpoints are only ever written from finite states).
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
import math
import os
from collections.abc import Callable, Iterator
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from robust_jax.core import mesh as mesh_lib
from robust_jax.core.checkpoint import Checkpointer, abstract_like
from robust_jax.core.metrics import MetricsWriter
from robust_jax.core.progress import Progress

log = logging.getLogger("robust_jax")


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is left in place."""

    def __init__(self, step: int, loss: float, checkpoint_step: int | None):
        self.step = step
        self.checkpoint_step = checkpoint_step
        kept = f"last good checkpoint: step {checkpoint_step}" if checkpoint_step is not None else "no checkpoint yet"
        super().__init__(f"loss became {loss} at step {step}; training stopped ({kept})")


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    opt_state: Any
    model_state: Any


@dataclasses.dataclass(frozen=True)
class TrainLoopConfig:
    num_steps: int
    seed: int = 0
    log_every: int = 50
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    fsdp_min_size: int = 0  # 0: parameters replicated; else shard leaves with at least this many elements
    micro_batch_size: int = 0  # 0: the whole batch at once; else accumulate gradients (micro_batched_value_and_grad)
    async_checkpoints: bool = True


def state_shardings(abstract_state, mesh: Mesh, fsdp_min_size: int = 0):
    """Replicated by default; with `fsdp_min_size` > 0, each large leaf is split on its largest dimension that the
    'data' axis divides (fully-sharded data parallel: XLA gathers the weights where the step needs them)."""
    n = mesh.shape[mesh_lib.DATA_AXIS]

    def rule(leaf):
        if fsdp_min_size <= 0 or leaf.ndim == 0 or math.prod(leaf.shape) < fsdp_min_size:
            return NamedSharding(mesh, PartitionSpec())
        dims = sorted(range(leaf.ndim), key=lambda i: -leaf.shape[i])
        for dim in dims:
            if leaf.shape[dim] % n == 0:
                spec = [None] * leaf.ndim
                spec[dim] = mesh_lib.DATA_AXIS
                return NamedSharding(mesh, PartitionSpec(*spec))
        return NamedSharding(mesh, PartitionSpec())

    return jax.tree.map(rule, abstract_state)


@jax.jit
def _all_finite(tree) -> jax.Array:
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


def _state_initializer(init_fn: Callable, optimizer: optax.GradientTransformation) -> Callable:
    def init_state(key) -> TrainState:
        params, model_state = init_fn(key)
        return TrainState(
            step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params), model_state=model_state
        )

    return init_state


def check_micro_batch_size(micro_batch_size: int, batch_size: int) -> None:
    """ValueError unless micro_batch_size is 0 (the whole batch) or a positive divisor of batch_size."""
    if isinstance(micro_batch_size, bool) or not isinstance(micro_batch_size, (int, np.integer)):
        raise ValueError(f"micro_batch_size must be an integer, got {micro_batch_size!r}")
    if micro_batch_size < 0 or (micro_batch_size and batch_size % micro_batch_size):
        raise ValueError(f"micro_batch_size={micro_batch_size} must be positive and divide the batch size "
                         f"{batch_size} (or 0: the whole batch)")


def micro_batched_value_and_grad(fn: Callable, micro_batch_size: int = 0, *, has_aux: bool = False) -> Callable:
    """`jax.value_and_grad(fn, has_aux)` for `fn(params, batch, key, *rest)` whose loss is a mean over the examples
    of `batch` (a pytree of arrays sharing a leading example axis), accumulated over micro-batches.

    With `micro_batch_size` m > 0 the batch of B examples is cut into B / m micro-batches and a `lax.scan` sums their
    losses and gradients, then divides by their number: the same mean loss and gradient (up to float rounding) for a
    deterministic loss, with a working set m / B the size. On CPUs that often runs faster, because the activations
    of a micro-batch stay in cache; on accelerators it trades speed for memory. Micro-batch c holds examples
    c, c + B/m, c + 2B/m, ..., so a batch sharded over devices stays evenly sharded in every micro-batch, and it gets
    the key `fold_in(key, c)`: randomness drawn from the key is independent between micro-batches. Floating aux
    outputs are averaged over the micro-batches, others are taken from the last one (batch statistics are
    per micro-batch). m = 0 or m = B is plain `jax.value_and_grad`.
    """
    grad_fn = jax.value_and_grad(fn, has_aux=has_aux)
    if micro_batch_size == 0:
        return grad_fn

    def accumulated(params, batch, key, *rest):
        sizes = {leaf.shape[0] for leaf in jax.tree.leaves(batch)}
        if len(sizes) != 1:
            raise ValueError(f"batch arrays have different leading sizes {sorted(sizes)}")
        (batch_size,) = sizes
        check_micro_batch_size(micro_batch_size, batch_size)
        count = batch_size // micro_batch_size
        if count == 1:
            return grad_fn(params, batch, key, *rest)
        # (B, ...) -> (count, m, ...): micro-batch c takes rows c, c + count, ... (strided across device shards).
        chunks = jax.tree.map(
            lambda leaf: jnp.swapaxes(leaf.reshape(micro_batch_size, count, *leaf.shape[1:]), 0, 1), batch)

        def one(c, chunk):
            return grad_fn(params, chunk, jax.random.fold_in(key, c), *rest)

        first = jax.eval_shape(one, 0, jax.tree.map(lambda leaf: leaf[0], chunks))
        zeros = jax.tree.map(lambda leaf: jnp.zeros(leaf.shape, leaf.dtype), first)

        def body(carry, c_chunk):
            out = one(*c_chunk)
            summed = jax.tree.map(
                lambda total, new: total + new if jnp.issubdtype(new.dtype, jnp.inexact) else new, carry, out)
            return summed, None

        total, _ = jax.lax.scan(body, zeros, (jnp.arange(count), chunks))
        return jax.tree.map(lambda leaf: leaf / count if jnp.issubdtype(leaf.dtype, jnp.inexact) else leaf, total)

    return accumulated


def make_train_step(loss_fn: Callable, optimizer: optax.GradientTransformation, train_key: jax.Array,
                    micro_batch_size: int = 0):
    # A loss with a `step` parameter (curricula, schedules inside the loss) gets the step number.
    takes_step = "step" in inspect.signature(loss_fn).parameters

    def batch_loss(params, batch, key, model_state, step):
        extra = {"step": step} if takes_step else {}
        return loss_fn(params, model_state, batch, key, **extra)

    grad_fn = micro_batched_value_and_grad(batch_loss, micro_batch_size, has_aux=True)

    def train_step(state: TrainState, batch):
        key = jax.random.fold_in(train_key, state.step)
        (loss, (metrics, model_state)), grads = grad_fn(state.params, batch, key, state.model_state, state.step)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = dict(metrics, loss=loss)
        new_state = TrainState(step=state.step + 1, params=params, opt_state=opt_state, model_state=model_state)
        return new_state, metrics

    return train_step


def train(
    *,
    workdir: str,
    init_fn: Callable,
    loss_fn: Callable,
    optimizer: optax.GradientTransformation,
    batches: Iterator,
    loop: TrainLoopConfig,
    mesh: Mesh | None = None,
    writer: MetricsWriter | None = None,
    desc: str = "train",
) -> TrainState:
    """Trains to `loop.num_steps`, resuming from the latest checkpoint in `workdir/checkpoints` if there is one."""
    mesh = mesh_lib.make_data_mesh() if mesh is None else mesh
    init_key, train_key = jax.random.split(jax.random.key(loop.seed))
    init_state = _state_initializer(init_fn, optimizer)
    abstract_state = jax.eval_shape(init_state, init_key)
    shardings = state_shardings(abstract_state, mesh, loop.fsdp_min_size)
    # Parameters are born with their final sharding: no host copy, no later resharding.
    init = jax.jit(init_state, out_shardings=shardings)

    checkpointer = Checkpointer(
        os.path.join(workdir, "checkpoints"),
        save_every=loop.checkpoint_every,
        keep=loop.keep_checkpoints,
        async_save=loop.async_checkpoints,
    )
    own_writer = writer is None
    writer = MetricsWriter(workdir) if own_writer else writer
    try:
        latest = checkpointer.latest_step()
        if latest is not None:
            state, data_state = checkpointer.restore(abstract_like(abstract_state, shardings), latest)
            batches.set_state(data_state)
            writer.truncate_after(latest)
            log.info("resumed from checkpoint at step %d", latest)
        else:
            state = init(init_key)
        start = int(jax.device_get(state.step))

        step_fn = jax.jit(
            make_train_step(loss_fn, optimizer, train_key, loop.micro_batch_size),
            in_shardings=(shardings, mesh_lib.batch_sharding(mesh)),
            out_shardings=(shardings, mesh_lib.replicated(mesh)),
            donate_argnums=0,
        )
        last_saved = latest
        sums: dict[str, float] = {}
        count = 0

        def consume(step: int, metrics) -> None:
            nonlocal count
            metrics = jax.device_get(metrics)
            loss = float(metrics["loss"])
            if not math.isfinite(loss):
                raise NonFiniteLossError(step, loss, last_saved)
            for name, value in metrics.items():
                sums[name] = sums.get(name, 0.0) + float(np.asarray(value))
            count += 1
            if (step + 1) % loop.log_every == 0 or step + 1 == loop.num_steps:
                writer.write(step + 1, {name: total / count for name, total in sums.items()})
                sums.clear()
                count = 0

        pending = None
        with Progress(loop.num_steps, desc, initial=start) as progress:
            for step in range(start, loop.num_steps):
                batch = mesh_lib.global_batch(mesh, next(batches))
                state, metrics = step_fn(state, batch)
                if pending is not None:
                    consume(*pending)
                    progress.update(1, loss=float(pending[1]["loss"]))
                pending = (step, metrics)
                done = step + 1
                if done % loop.checkpoint_every == 0 or done == loop.num_steps:
                    consume(*pending)
                    progress.update(1, loss=float(pending[1]["loss"]))
                    pending = None
                    if not bool(_all_finite(state)):
                        raise NonFiniteLossError(step, float("nan"), last_saved)
                    checkpointer.save(done, state, batches.get_state(), force=True)
                    last_saved = done
            if pending is not None:
                consume(*pending)
                progress.update(1)
        return state
    finally:
        checkpointer.close()
        if own_writer:
            writer.close()


def restore_latest_state(workdir: str, init_fn: Callable, optimizer: optax.GradientTransformation, seed: int = 0,
                         mesh: Mesh | None = None) -> TrainState:
    """Loads the latest checkpoint of a run (e.g. to evaluate it, or to inspect it from a notebook)."""
    mesh = mesh_lib.make_data_mesh() if mesh is None else mesh
    init_key, _ = jax.random.split(jax.random.key(seed))
    abstract_state = jax.eval_shape(_state_initializer(init_fn, optimizer), init_key)
    shardings = state_shardings(abstract_state, mesh)
    checkpointer = Checkpointer(os.path.join(workdir, "checkpoints"), save_every=1, keep=1000)
    try:
        if checkpointer.latest_step() is None:
            raise FileNotFoundError(f"no checkpoint in {os.path.join(workdir, 'checkpoints')}")
        state, _ = checkpointer.restore(abstract_like(abstract_state, shardings))
        return state
    finally:
        checkpointer.close()
