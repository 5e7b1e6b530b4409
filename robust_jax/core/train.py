"""The train loop, the only one in the project: one pure step, compiled once over a device mesh, with checkpoints,
metrics, evaluation and early stopping.

A study hands over:
  * `init_fn(key) -> (params, model_state)` (model_state: non-trained collections such as batch statistics, or {}),
  * `loss_fn(params, model_state, batch, key[, step][, constants]) -> (loss, (metrics, new_model_state))`, on a
    *global* batch; a `step` parameter receives the step number (curricula, schedules inside the loss), a
    `constants` parameter receives `train(constants=...)` (arrays every step reads, e.g. an observation grid:
    arguments of the compiled step rather than constants baked into it, so one compilation serves many runs),
  * an optax optimizer,
  * a batch iterator: `next()` gives this process's slice of the global batch (a dict of numpy arrays), and
    `get_state()` / `set_state(dict)` give its position as JSON, saved with every checkpoint,
  * optionally an `Evaluation`: a function of the state run every `every` steps (an epoch, say), whose metrics are
    logged and, with `better` and `patience`, drive early stopping with the best evaluation (and parameters) kept.

The loop shards the batch on the mesh axis 'data', keeps parameters replicated (or FSDP-sharded on request), donates
the state to the step, derives the step's key as `fold_in(train_key, step)`, fetches metrics of step n-1 after step
n is dispatched so the device never waits, saves checkpoints every `checkpoint_every` steps and at the end, resumes
from the latest checkpoint in `workdir` (parameters, optimizer, data position, evaluation record), and on a NaN or
infinite loss either stops with `NonFiniteLossError` naming the step or, with `on_non_finite="stop"`, ends the run
and reports the step (checkpoints are only ever written from finite states). Compiled steps are cached on the
identity of (loss_fn, optimizer, micro_batch_size, mesh, shardings): a study that trains many runs of the same model
(a grid of cells, several seeds) compiles once.
"""

from __future__ import annotations

import dataclasses
import functools
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


def _loss_parameters(loss_fn: Callable) -> set[str]:
    return set(inspect.signature(loss_fn).parameters)


def make_train_step(loss_fn: Callable, optimizer: optax.GradientTransformation, micro_batch_size: int = 0):
    """The pure step `(state, batch, train_key, constants) -> (state, metrics)` that `train` compiles."""
    takes = _loss_parameters(loss_fn)

    def batch_loss(params, batch, key, model_state, step, constants):
        extra = {"step": step} if "step" in takes else {}
        if "constants" in takes:
            extra["constants"] = constants
        return loss_fn(params, model_state, batch, key, **extra)

    grad_fn = micro_batched_value_and_grad(batch_loss, micro_batch_size, has_aux=True)

    def train_step(state: TrainState, batch, train_key, constants=None):
        key = jax.random.fold_in(train_key, state.step)
        (loss, (metrics, model_state)), grads = grad_fn(
            state.params, batch, key, state.model_state, state.step, constants)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = dict(metrics, loss=loss)
        new_state = TrainState(step=state.step + 1, params=params, opt_state=opt_state, model_state=model_state)
        return new_state, metrics

    return train_step


@functools.lru_cache(maxsize=64)
def _compiled(kind: str, fn: Callable, optimizer, micro_batch_size: int, mesh: Mesh, sharding_leaves: tuple,
              sharding_tree) -> Callable:
    shardings = jax.tree.unflatten(sharding_tree, sharding_leaves)
    if kind == "init":
        return jax.jit(_state_initializer(fn, optimizer), out_shardings=shardings)
    replicated = mesh_lib.replicated(mesh)
    return jax.jit(
        make_train_step(fn, optimizer, micro_batch_size),
        in_shardings=(shardings, mesh_lib.batch_sharding(mesh), replicated, replicated),
        out_shardings=(shardings, replicated),
        donate_argnums=0,
    )


def compiled_train_step(loss_fn: Callable, optimizer: optax.GradientTransformation, shardings, mesh: Mesh,
                        micro_batch_size: int = 0) -> Callable:
    """The jitted step `train` runs: `(state, global_batch, train_key, constants) -> (state, metrics)`, the state
    donated and laid out as `shardings` (see `state_shardings`). Benchmarks time exactly this function."""
    leaves, tree = jax.tree.flatten(shardings)
    return _compiled("step", loss_fn, optimizer, micro_batch_size, mesh, tuple(leaves), tree)


def initial_state(init_fn: Callable, optimizer: optax.GradientTransformation, init_key: jax.Array, mesh: Mesh,
                  fsdp_min_size: int = 0) -> tuple[TrainState, Any]:
    """(the freshly initialised TrainState, its shardings); parameters are born with their final sharding: no host
    copy, no later resharding."""
    abstract_state = jax.eval_shape(_state_initializer(init_fn, optimizer), init_key)
    shardings = state_shardings(abstract_state, mesh, fsdp_min_size)
    leaves, tree = jax.tree.flatten(shardings)
    return _compiled("init", init_fn, optimizer, 0, mesh, tuple(leaves), tree)(init_key), shardings


@dataclasses.dataclass(frozen=True)
class Evaluation:
    """Evaluation during training, and early stopping on it.

    every: steps between evaluations (an epoch, say). fn(state) -> {name: float}: logged at that step (with the
    training metrics of the same step) and shown in the progress line.
    better(new, best) -> bool: whether the new evaluation beats the best so far; None: no best is tracked.
    patience: stop after this many evaluations in a row without a better one (0: never stop early), but not before
    `start` evaluations have run. keep_best_params: keep (and checkpoint) the parameters of the best evaluation.
    """

    every: int
    fn: Callable[[TrainState], dict]
    better: Callable[[dict, dict], bool] | None = None
    patience: int = 0
    start: int = 0
    keep_best_params: bool = False

    def __post_init__(self):
        if self.every < 1:
            raise ValueError(f"Evaluation.every={self.every} must be >= 1")
        if (self.patience or self.keep_best_params) and self.better is None:
            raise ValueError("Evaluation.patience and keep_best_params need a `better` function")


@dataclasses.dataclass
class TrainResult:
    """What `train` returns. state: the final state (for a diverged run, the first non-finite one).
    evaluations: evaluations run; best: {"step", "metrics"} of the best evaluation (None without one);
    best_params: its parameters (with keep_best_params); stopped_early: patience ran out;
    diverged_at_step: the step whose loss was not finite (with on_non_finite="stop"), else None."""

    state: TrainState
    evaluations: int = 0
    best: dict | None = None
    best_params: Any = None
    stopped_early: bool = False
    diverged_at_step: int | None = None


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
    evaluation: Evaluation | None = None,
    constants: Any = None,
    keys: tuple[jax.Array, jax.Array] | None = None,
    on_non_finite: str = "raise",
) -> TrainResult:
    """Trains to `loop.num_steps` (or until early stopping), resuming from the latest checkpoint in
    `workdir/checkpoints` if there is one.

    keys: (init_key, train_key) to use instead of those split from `loop.seed`. on_non_finite: "raise"
    (`NonFiniteLossError`) or "stop" (end the run, report the step in the result; for studies where divergence is
    an outcome, such as the naive neural SDE).
    """
    if on_non_finite not in ("raise", "stop"):
        raise ValueError(f"on_non_finite={on_non_finite!r} is not allowed: must be 'raise' or 'stop'")
    mesh = mesh_lib.make_data_mesh() if mesh is None else mesh
    init_key, train_key = jax.random.split(jax.random.key(loop.seed)) if keys is None else keys
    abstract_state = jax.eval_shape(_state_initializer(init_fn, optimizer), init_key)
    shardings = state_shardings(abstract_state, mesh, loop.fsdp_min_size)
    keep_best = evaluation is not None and evaluation.keep_best_params
    saved_shardings = (shardings, shardings.params) if keep_best else shardings

    checkpointer = Checkpointer(
        os.path.join(workdir, "checkpoints"),
        save_every=loop.checkpoint_every,
        keep=loop.keep_checkpoints,
        async_save=loop.async_checkpoints,
    )
    own_writer = writer is None
    writer = MetricsWriter(workdir) if own_writer else writer
    result = TrainResult(state=None)
    try:
        latest = checkpointer.latest_step()
        if latest is not None:
            abstract = (abstract_state, abstract_state.params) if keep_best else abstract_state
            saved, data_state = checkpointer.restore(abstract_like(abstract, saved_shardings), latest)
            state, result.best_params = saved if keep_best else (saved, None)
            batches.set_state(data_state["batches"])
            record = data_state["evaluation"]
            writer.truncate_after(latest)
            log.info("resumed from checkpoint at step %d", latest)
        else:
            state, _ = initial_state(init_fn, optimizer, init_key, mesh, loop.fsdp_min_size)
            record = {"evaluations": 0, "best": None, "since_best": 0, "stopped_early": False}
        start = int(jax.device_get(state.step))
        if record["stopped_early"]:
            start = loop.num_steps  # an early-stopped run that was checkpointed at its stop is finished

        step_fn = compiled_train_step(loss_fn, optimizer, shardings, mesh, loop.micro_batch_size)
        train_key, constants = mesh_lib.replicate(mesh, (train_key, constants))
        last_saved = latest
        sums: dict[str, float] = {}
        count = 0

        def evaluation_step(done: int) -> bool:
            return evaluation is not None and done % evaluation.every == 0

        def log_row(step: int, extra: dict | None = None) -> None:
            nonlocal count
            row = {name: total / count for name, total in sums.items()} if count else {}
            row.update(extra or {})
            if row:
                writer.write(step, row)
            sums.clear()
            count = 0

        def consume(step: int, metrics) -> float:
            """Adds step's metrics to the running means and logs them at the cadence (an evaluation step logs them
            with the evaluation); returns the loss, raising or recording a non-finite one."""
            nonlocal count
            metrics = jax.device_get(metrics)
            loss = float(metrics["loss"])
            if not math.isfinite(loss):
                if on_non_finite == "raise":
                    raise NonFiniteLossError(step, loss, last_saved)
                result.diverged_at_step = step
            for name, value in metrics.items():
                sums[name] = sums.get(name, 0.0) + float(np.asarray(value))
            count += 1
            done = step + 1
            if (done % loop.log_every == 0 or done == loop.num_steps) and not evaluation_step(done):
                log_row(done)
            return loss

        def save(done: int, state) -> None:
            nonlocal last_saved
            if not bool(_all_finite(state)):
                if on_non_finite == "raise":
                    raise NonFiniteLossError(done - 1, float("nan"), last_saved)
                result.diverged_at_step = done - 1
                return
            tree = (state, result.best_params) if keep_best else state
            checkpointer.save(done, tree, {"batches": batches.get_state(), "evaluation": record}, force=True)
            last_saved = done

        def evaluate(done: int, state) -> dict:
            evaluated = {name: float(value) for name, value in evaluation.fn(state).items()}
            record["evaluations"] += 1
            if evaluation.better is not None:
                if record["best"] is None or evaluation.better(evaluated, record["best"]["metrics"]):
                    record["best"] = {"step": done, "metrics": evaluated}
                    record["since_best"] = 0
                    if keep_best:
                        result.best_params = jax.tree.map(jnp.copy, state.params)
                else:
                    record["since_best"] += 1
            record["stopped_early"] = bool(
                evaluation.patience and record["evaluations"] >= evaluation.start
                and record["since_best"] >= evaluation.patience)
            log_row(done, evaluated)
            return evaluated

        if keep_best and result.best_params is None:
            result.best_params = jax.tree.map(jnp.copy, state.params)
        pending = None
        postfix: dict = {}
        with Progress(loop.num_steps, desc, initial=start) as progress:
            for step in range(start, loop.num_steps):
                batch = mesh_lib.global_batch(mesh, next(batches))
                state, metrics = step_fn(state, batch, train_key, constants)
                if pending is not None:
                    postfix["loss"] = consume(*pending)
                    progress.update(1, **postfix)
                    if result.diverged_at_step is not None:
                        break
                pending = (step, metrics)
                done = step + 1
                checkpoint_now = done % loop.checkpoint_every == 0 or done == loop.num_steps
                if not (evaluation_step(done) or checkpoint_now):
                    continue
                postfix["loss"] = consume(*pending)
                pending = None
                if result.diverged_at_step is not None:
                    progress.update(1, **postfix)
                    break
                if evaluation_step(done):
                    postfix.update(evaluate(done, state))
                progress.update(1, **postfix)
                if checkpoint_now or record["stopped_early"]:
                    save(done, state)
                if record["stopped_early"] or result.diverged_at_step is not None:
                    break
            if pending is not None:
                consume(*pending)
                progress.update(1)
    finally:
        checkpointer.close()
        if own_writer:
            writer.close()
    result.state = state
    result.evaluations = record["evaluations"]
    result.best = record["best"]
    result.stopped_early = record["stopped_early"]
    return result


def restore_latest_state(workdir: str, init_fn: Callable, optimizer: optax.GradientTransformation, seed: int = 0,
                         mesh: Mesh | None = None, *, keep_best_params: bool = False):
    """Loads the latest checkpoint of a run (to evaluate it, or to inspect it from a notebook): its TrainState, or
    (TrainState, best parameters) for a run trained with `Evaluation(keep_best_params=True)`."""
    mesh = mesh_lib.make_data_mesh() if mesh is None else mesh
    init_key, _ = jax.random.split(jax.random.key(seed))
    abstract_state = jax.eval_shape(_state_initializer(init_fn, optimizer), init_key)
    shardings = state_shardings(abstract_state, mesh)
    abstract = (abstract_state, abstract_state.params) if keep_best_params else abstract_state
    saved_shardings = (shardings, shardings.params) if keep_best_params else shardings
    checkpointer = Checkpointer(os.path.join(workdir, "checkpoints"), save_every=1, keep=1000)
    try:
        if checkpointer.latest_step() is None:
            raise FileNotFoundError(f"no checkpoint in {os.path.join(workdir, 'checkpoints')}")
        state, _ = checkpointer.restore(abstract_like(abstract, saved_shardings))
        return state
    finally:
        checkpointer.close()
