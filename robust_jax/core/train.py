"""The train loop, the only one in the project: one pure step, compiled once over a device mesh, with checkpoints,
metrics, evaluation and early stopping; and the declaration every study hands it, `Training`.

A study declares each of its trainings once, as a `Training`:
  * `name`: its folder under the study's workdir ("gaussian/sigma=0.25"), and its key in `load_run`,
  * `init_fn(key) -> (params, model_state)` (model_state: non-trained collections such as batch statistics, or {}),
  * `loss_fn(params, model_state, batch, key, step, constants) -> (loss, (metrics, new_model_state))`, on a
    *global* batch: one signature for every study (big_vision's): `step` is the step number (curricula, schedules
    inside the loss), `constants` is `Training.constants` (arrays every step reads, e.g. an observation grid:
    arguments of the compiled step rather than constants baked into it, so one compilation serves many runs),
  * an optax optimizer and a `TrainLoopConfig`,
  * `batches()`: a batch iterator, made only when the training runs: `next()` gives this process's slice of the
    global batch (a dict of numpy arrays), and `get_state()` / `set_state(dict)` give its position as JSON, saved
    with every checkpoint,
  * optionally an `Evaluation`: a function of the state run every `every` steps (an epoch, say), whose metrics are
    logged and, with `better` and `patience`, drive early stopping with the best evaluation (and parameters) kept,
  * `model` and `variables(params, model_state)`: what `load_run` gives back for it (a Flax module or an apply
    function, and what it applies to).

`train(training, workdir)` runs it in `workdir/<name>`; `restore(training, workdir)` reads back its parameters only
(an orbax partial restore: no optimizer state, no initialisation). A study's trainings come from one generator
(`drive` sends each one's result back, so a later training can start from an earlier one's parameters), which
`run` trains and `load_run` restores: nothing about a training is written twice.

The loop shards the batch on the mesh axis 'data', keeps parameters replicated (or FSDP-sharded on request), donates
the state to the step, derives the step's key as `fold_in(train_key, step)`, fetches metrics of step n-1 after step
n is dispatched so the device never waits, saves checkpoints every `checkpoint_every` steps and at the end, resumes
from the latest checkpoint in its folder (parameters, optimizer, data position, evaluation record), and on a NaN or
infinite loss either stops with `NonFiniteLossError` naming the step or, with `on_non_finite="stop"`, ends the run
and reports the step (checkpoints are only ever written from finite states). Compiled steps are cached on the
identity of (loss_fn, optimizer, micro_batch_size, mesh, shardings): a study that trains many runs of the same model
(a grid of cells, several seeds) compiles once.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import logging
import math
import os
from collections.abc import Callable, Generator, Iterable, Iterator
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from robust_jax.core import mesh as mesh_lib
from robust_jax.core.checkpoint import Checkpointer, abstract_like, restore_trained
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


def make_train_step(loss_fn: Callable, optimizer: optax.GradientTransformation, micro_batch_size: int = 0,
                    members: int = 0):
    """The pure step `(state, batch, train_key, constants) -> (state, metrics)` that `train` compiles. With members
    (`Training.members`), the loss is a vector with one entry per member and the gradient is that of its sum: each
    member's parameters get their own member's gradient."""

    def batch_loss(params, batch, key, model_state, step, constants):
        loss, (metrics, new_model_state) = loss_fn(params, model_state, batch, key, step, constants)
        return (jnp.sum(loss) if members else loss), (dict(metrics, loss=loss), new_model_state)

    grad_fn = micro_batched_value_and_grad(batch_loss, micro_batch_size, has_aux=True)

    def train_step(state: TrainState, batch, train_key, constants=None):
        if members:  # one key per member
            key = jax.vmap(jax.random.fold_in, in_axes=(0, None))(train_key, state.step)
        else:
            key = jax.random.fold_in(train_key, state.step)
        (_, (metrics, model_state)), grads = grad_fn(
            state.params, batch, key, state.model_state, state.step, constants)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        new_state = TrainState(step=state.step + 1, params=params, opt_state=opt_state, model_state=model_state)
        return new_state, metrics

    return train_step


@functools.lru_cache(maxsize=64)
def _compiled(kind: str, fn: Callable, optimizer, micro_batch_size: int, mesh: Mesh, sharding_leaves: tuple,
              sharding_tree, members: int = 0) -> Callable:
    shardings = jax.tree.unflatten(sharding_tree, sharding_leaves)
    if kind == "init":
        return jax.jit(_state_initializer(fn, optimizer), out_shardings=shardings)
    replicated = mesh_lib.replicated(mesh)
    return jax.jit(
        make_train_step(fn, optimizer, micro_batch_size, members),
        in_shardings=(shardings, mesh_lib.batch_sharding(mesh), replicated, replicated),
        out_shardings=(shardings, replicated),
        donate_argnums=0,
    )


def compiled_train_step(loss_fn: Callable, optimizer: optax.GradientTransformation, shardings, mesh: Mesh,
                        micro_batch_size: int = 0, members: int = 0) -> Callable:
    """The jitted step `train` runs: `(state, global_batch, train_key, constants) -> (state, metrics)`, the state
    donated and laid out as `shardings` (see `state_shardings`). Benchmarks time exactly this function."""
    leaves, tree = jax.tree.flatten(shardings)
    return _compiled("step", loss_fn, optimizer, micro_batch_size, mesh, tuple(leaves), tree, members)


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

    every: steps between evaluations (an epoch, say). fn(state, mesh) -> {name: float} (with members, {name: one
    value per member}): logged at that step (with the training metrics of the same step) and shown in the progress
    line; `mesh` is the training's. better(new, best) -> bool: whether the new evaluation beats the best so far (one
    member's dicts of floats); None: no best is tracked. patience: stop after this many evaluations in a row without a
    better one (0: never stop early), but not before `start` evaluations have run; with members each member stops on
    its own (its best is then frozen) and the training ends when all have. keep_best_params: keep (and checkpoint) the
    parameters of the best evaluation (per member).
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
    best_params: its parameters (with keep_best_params); stopped_early: patience ran out (the step it ran out at is
    stopped_at_step); diverged_at_step: the step whose loss was not finite (with on_non_finite="stop"), else None.
    With members (`Training.members`), best, stopped_at_step and diverged_at_step are lists with one entry per
    member, and stopped_early says that every member stopped or diverged."""

    state: TrainState
    evaluations: int = 0
    best: dict | list | None = None
    best_params: Any = None
    stopped_early: bool = False
    stopped_at_step: int | list | None = None
    diverged_at_step: int | list | None = None


def params_only(params, model_state):
    """`Training.variables` for a model that applies to its trained tree alone (a Flax variables dict)."""
    del model_state
    return params


def flax_variables(params, model_state):
    """`Training.variables` for a Flax module whose parameters are its "params" collection: {"params", **others}."""
    return {"params": params, **model_state}


@dataclasses.dataclass(frozen=True)
class Training:
    """One training, declared once: `train` runs it, `restore` reads its parameters back, `load_run` lists it.

    name: its folder under the study's workdir, and its key in `load_run`'s dicts. batches(): the batch iterator,
    made when the training runs (never on restore). keys: (init_key, train_key) instead of those split from
    `loop.seed`. on_non_finite: "raise" (`NonFiniteLossError`) or "stop" (end the run and report the step, for
    studies where divergence is an outcome, such as the naive neural SDE). model / variables: what `load_run` gives
    back for this training (`model` applied to `variables(params, model_state)`; None: not listed).

    members: M > 0 trains M independent models as one program (several seeds, say, vmapped by the study): keys are
    then two arrays of M keys, `init_fn(init_keys)` returns parameters with a leading member axis, the batch's arrays
    are (B, M, ...) (the example axis first, sharded over the devices), the step's key is one per member, and
    `loss_fn` returns one loss per member (the gradient is that of their sum, so each member gets its own). The
    optimizer must act on each parameter on its own (Adam, SGD: not a global-norm clip). A member whose loss turns
    non-finite is diverged (with on_non_finite="stop") while the others train on; evaluation and early stopping are
    per member (`Evaluation`).
    """

    name: str
    init_fn: Callable
    loss_fn: Callable
    optimizer: optax.GradientTransformation
    loop: TrainLoopConfig
    batches: Callable[[], Iterator]
    evaluation: Evaluation | None = None
    constants: Any = None
    keys: tuple[jax.Array, jax.Array] | None = None
    on_non_finite: str = "raise"
    desc: str | None = None
    model: Any = None
    variables: Callable[[Any, Any], Any] = params_only
    members: int = 0

    def __post_init__(self):
        if self.members and self.keys is None:
            raise ValueError(f"Training {self.name!r}: members={self.members} needs keys, one per member")
        if self.members and self.loop.micro_batch_size:
            raise ValueError(f"Training {self.name!r}: members cannot be trained in micro-batches")
        if self.on_non_finite not in ("raise", "stop"):
            raise ValueError(f"on_non_finite={self.on_non_finite!r} is not allowed: must be 'raise' or 'stop'")
        if not self.name or os.path.isabs(self.name) or ".." in self.name.split("/"):
            raise ValueError(f"Training.name={self.name!r} must be a relative folder inside the workdir")


def train(training: Training, workdir: str, *, mesh: Mesh | None = None,
          writer: MetricsWriter | None = None) -> TrainResult:
    """Trains `training` in `workdir/<training.name>` to `loop.num_steps` (or until early stopping), resuming from
    the latest checkpoint there if there is one."""
    loop, evaluation, optimizer = training.loop, training.evaluation, training.optimizer
    init_fn, on_non_finite = training.init_fn, training.on_non_finite
    workdir = os.path.join(workdir, training.name)
    desc = training.desc or training.name
    mesh = mesh_lib.make_data_mesh() if mesh is None else mesh
    init_key, train_key = (jax.random.split(jax.random.key(loop.seed)) if training.keys is None
                           else training.keys)
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
    batches = training.batches()
    count_members = training.members or 1
    try:
        latest = checkpointer.latest_step()
        if latest is not None:
            abstract = (abstract_state, abstract_state.params) if keep_best else abstract_state
            saved, data_state = checkpointer.restore(abstract_like(abstract, saved_shardings), latest)
            state, result.best_params = saved if keep_best else (saved, None)
            batches.set_state(data_state["batches"])
            record = data_state["evaluation"]
            window = data_state.get("log_window", {"count": 0, "sums": {}})
            writer.truncate_after(latest)
            log.info("resumed from checkpoint at step %d", latest)
        else:
            state, _ = initial_state(init_fn, optimizer, init_key, mesh, loop.fsdp_min_size)
            # Per member (one entry without members): the best evaluation, evaluations since it, and the step at
            # which the member stopped early or diverged (None while it trains).
            record = {"evaluations": 0, "best": [None] * count_members, "since_best": [0] * count_members,
                      "stopped": [None] * count_members, "diverged": [None] * count_members}
            window = {"count": 0, "sums": {}}
        start = int(jax.device_get(state.step))

        def finished() -> bool:
            return all(s is not None or d is not None for s, d in zip(record["stopped"], record["diverged"]))

        if any(step is not None for step in record["stopped"]) and finished():
            start = loop.num_steps  # a run checkpointed when its last member stopped early is finished

        step_fn = compiled_train_step(training.loss_fn, optimizer, shardings, mesh, loop.micro_batch_size,
                                      training.members)
        train_key, constants = mesh_lib.replicate(mesh, (train_key, training.constants))
        last_saved = latest
        # The running sums of the metrics logged at the next log step; saved with each checkpoint, so that a resumed
        # run logs the same means as an uninterrupted one.
        sums: dict[str, np.ndarray] = {name: np.asarray(total, np.float64) for name, total in window["sums"].items()}
        count = window["count"]

        def evaluation_step(done: int) -> bool:
            return evaluation is not None and done % evaluation.every == 0

        def loggable(value: np.ndarray):
            return float(value) if value.ndim == 0 else [float(v) for v in value]

        def shown(value: np.ndarray) -> float:
            """A progress-line figure: the value, or the mean over the members whose value is finite."""
            finite = value[np.isfinite(value)]
            return float(value) if value.ndim == 0 else float(finite.mean()) if finite.size else float("nan")

        def log_row(step: int, extra: dict | None = None) -> None:
            nonlocal count
            row = {name: loggable(total / count) for name, total in sums.items()} if count else {}
            row.update(extra or {})
            if row:
                writer.write(step, row)
            sums.clear()
            count = 0

        def diverge(members: list[int], step: int, loss: float) -> None:
            if on_non_finite == "raise":
                raise NonFiniteLossError(step, loss, last_saved)
            for m in members:
                record["diverged"][m] = step

        def consume(step: int, metrics) -> float:
            """Adds step's metrics to the running means and logs them at the cadence (an evaluation step logs them
            with the evaluation); returns the loss for the progress line, raising or recording a non-finite one."""
            nonlocal count
            metrics = {name: np.asarray(value, np.float64) for name, value in jax.device_get(metrics).items()}
            losses = metrics["loss"].reshape(count_members)
            bad = [m for m in range(count_members) if not math.isfinite(losses[m]) and record["diverged"][m] is None]
            if bad:
                diverge(bad, step, float(losses[bad[0]]))
            for name, value in metrics.items():
                sums[name] = sums.get(name, 0.0) + value
            count += 1
            done = step + 1
            if (done % loop.log_every == 0 or done == loop.num_steps) and not evaluation_step(done):
                log_row(done)
            return shown(metrics["loss"])

        def save(done: int, state) -> None:
            nonlocal last_saved
            if training.members:
                finite = np.asarray(jax.device_get(_member_finite(state.params)))
                bad = [m for m in range(count_members) if not finite[m] and record["diverged"][m] is None]
                if bad:
                    diverge(bad, done - 1, float("nan"))
            elif not bool(_all_finite(state)):
                diverge([0], done - 1, float("nan"))
                return  # a checkpoint is only ever written from a finite state (of every member still training)
            tree = (state, result.best_params) if keep_best else state
            window = {"count": count, "sums": {name: total.tolist() for name, total in sums.items()}}
            checkpointer.save(done, tree, {"batches": batches.get_state(), "evaluation": record, "log_window": window},
                              force=True)
            last_saved = done

        def evaluate(done: int, state) -> dict:
            values = {name: np.asarray(jax.device_get(value), np.float64).reshape(count_members)
                      for name, value in evaluation.fn(state, mesh).items()}
            record["evaluations"] += 1
            improved = np.zeros(count_members, bool)
            for m in range(count_members):
                if record["stopped"][m] is not None or record["diverged"][m] is not None:
                    continue  # a member that has stopped keeps its best
                new = {name: float(value[m]) for name, value in values.items()}
                if evaluation.better is not None:
                    best = record["best"][m]
                    if best is None or evaluation.better(new, best["metrics"]):
                        record["best"][m] = {"step": done, "metrics": new}
                        record["since_best"][m] = 0
                        improved[m] = True
                    else:
                        record["since_best"][m] += 1
                if (evaluation.patience and record["evaluations"] >= evaluation.start
                        and record["since_best"][m] >= evaluation.patience):
                    record["stopped"][m] = done
            if keep_best and improved.any():
                result.best_params = _copy_members(state.params, result.best_params, improved, training.members)
            log_row(done, {name: loggable(value if training.members else value[0]) for name, value in values.items()})
            return {name: shown(value if training.members else value[0]) for name, value in values.items()}

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
                    pending = None
                    progress.update(1, **postfix)
                    if finished():
                        break
                pending = (step, metrics)
                done = step + 1
                checkpoint_now = done % loop.checkpoint_every == 0 or done == loop.num_steps
                if not (evaluation_step(done) or checkpoint_now):
                    continue
                postfix["loss"] = consume(*pending)
                pending = None
                if finished():
                    progress.update(1, **postfix)
                    break
                if evaluation_step(done):
                    postfix.update(evaluate(done, state))
                progress.update(1, **postfix)
                if checkpoint_now or finished():
                    save(done, state)
                if finished():
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
    stopped, diverged = record["stopped"], record["diverged"]
    if training.members:
        result.best, result.stopped_at_step, result.diverged_at_step = record["best"], stopped, diverged
        result.stopped_early = finished() and any(step is not None for step in stopped)
    else:
        result.best, result.stopped_at_step, result.diverged_at_step = record["best"][0], stopped[0], diverged[0]
        result.stopped_early = stopped[0] is not None
    return result


@jax.jit
def _member_finite(tree) -> jax.Array:
    """(M,) whether each member's leaves (leading axis M) are all finite."""
    leaves = [jnp.all(jnp.isfinite(x.reshape(x.shape[0], -1)), axis=1) for x in jax.tree.leaves(tree)
              if jnp.issubdtype(x.dtype, jnp.inexact)]
    return jnp.all(jnp.stack(leaves), axis=0)


def _copy_members(params, best_params, improved: np.ndarray, members: int):
    """best_params with the improved members' parameters copied in (all of params without members)."""
    if not members:
        return jax.tree.map(jnp.copy, params)
    mask = jnp.asarray(improved)
    return jax.tree.map(lambda new, old: jnp.where(mask.reshape((-1,) + (1,) * (new.ndim - 1)), new, old),
                        params, best_params)


def restore(training: Training, workdir: str) -> TrainResult:
    """The parameters and model state of `training`'s latest checkpoint in `workdir/<training.name>` (and, for a
    training that keeps its best evaluation's parameters, those as `best_params`), read without the optimizer state
    and without initialising anything (the init is only traced, for the parameters' tree structure); the state's
    `opt_state` is None. FileNotFoundError without a checkpoint."""
    init_key = jax.random.split(jax.random.key(training.loop.seed))[0] if training.keys is None else training.keys[0]
    like = jax.eval_shape(training.init_fn, init_key)
    step, params, model_state, best_params = restore_trained(os.path.join(workdir, training.name, "checkpoints"),
                                                             like=like)
    state = TrainState(step=step, params=params, opt_state=None, model_state=model_state)
    return TrainResult(state=state, best_params=best_params)


def restore_state(training: Training, workdir: str, mesh: Mesh | None = None) -> TrainState:
    """The whole latest state of `training` in `workdir/<training.name>`, optimizer state included, laid out as
    `train` lays it out (for comparing runs bit for bit; `restore` is the cheaper read of a trained model)."""
    mesh = mesh_lib.make_data_mesh() if mesh is None else mesh
    init_key = jax.random.split(jax.random.key(training.loop.seed))[0] if training.keys is None else training.keys[0]
    abstract_state = jax.eval_shape(_state_initializer(training.init_fn, training.optimizer), init_key)
    shardings = state_shardings(abstract_state, mesh, training.loop.fsdp_min_size)
    keep_best = training.evaluation is not None and training.evaluation.keep_best_params
    abstract = (abstract_state, abstract_state.params) if keep_best else abstract_state
    checkpointer = Checkpointer(os.path.join(workdir, training.name, "checkpoints"), save_every=1, keep=1000)
    try:
        if checkpointer.latest_step() is None:
            raise FileNotFoundError(f"no checkpoint in {os.path.join(workdir, training.name, 'checkpoints')}")
        saved, _ = checkpointer.restore(abstract_like(
            abstract, (shardings, shardings.params) if keep_best else shardings))
    finally:
        checkpointer.close()
    return saved[0] if keep_best else saved


def has_checkpoint(training: Training, workdir: str) -> bool:
    return Checkpointer.exists(os.path.join(workdir, training.name, "checkpoints"))


def independent_workers() -> int:
    """How many independent trainings `fit_independent` runs at once: one per core on a CPU backend (a small
    program rarely keeps more than one core busy, so programs side by side use the cores XLA leaves idle), one on an
    accelerator (whose programs queue anyway)."""
    return max(1, os.cpu_count() or 1) if jax.default_backend() == "cpu" else 1


def fit_independent(trainings: Iterable[Training], fit: Callable[[Training], Any], *, workers: int | None = None,
                    on_done: Callable[[Training, Any], None] | None = None) -> list:
    """`fit(training)` for trainings that read nothing of each other, `workers` at a time (default
    `independent_workers()`), each in a thread of its own (JAX runs programs of several threads side by side); the
    results in the trainings' order. on_done(training, result) is called in this thread as each one finishes (for a
    progress line). Each training's results are what it gives alone: nothing is shared but the compiled programs."""
    trainings = list(trainings)
    workers = independent_workers() if workers is None else workers
    if workers <= 1 or len(trainings) <= 1:
        results = []
        for training in trainings:
            results.append(fit(training))
            if on_done is not None:
                on_done(training, results[-1])
        return results
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        futures = {pool.submit(fit, training): i for i, training in enumerate(trainings)}
        results = [None] * len(trainings)
        for future in concurrent.futures.as_completed(futures):
            i = futures[future]
            results[i] = future.result()
            if on_done is not None:
                on_done(trainings[i], results[i])
    return results


def drive(declared: Generator[Training, TrainResult, Any], run: Callable[[Training], TrainResult | None]
          ) -> dict[str, tuple[Training, TrainResult]]:
    """Walks a study's declaration of its trainings: each `Training` the generator yields is handed to
    `run(training)` (`train` it, or `restore` it), whose result is sent back into the generator, so that a later
    training can start from an earlier one's parameters. `run` returning None stops the walk there (`load_run` of an
    unfinished run: the trainings up to the first without a checkpoint). Returns {name: (training, result)}."""
    done: dict[str, tuple[Training, TrainResult]] = {}
    try:
        training = next(declared)
        while True:
            if training.name in done:
                raise ValueError(f"two trainings are named {training.name!r}: names are their folders")
            result = run(training)
            if result is None:
                break
            done[training.name] = (training, result)
            training = declared.send(result)
    except StopIteration:
        pass
    finally:
        declared.close()
    return done
