"""The reference's training protocol for one (dataset, missing rate, model, seed) cell, epoch by epoch.

Protocol (Oh, Lim & Kim 2024, following Kidger et al.'s NCDE code): batch = the largest 2^i, i in 4..7, not above
N_train / 2 (16 if none is); Adam; StepLR(10 epochs, x0.5) written as an optax staircase schedule in steps; after
each epoch the validation and test accuracy are measured, and the reported test accuracy is the one at the epoch of
best validation accuracy (ties broken by the lower validation loss, which matters on validation sets of a dozen
series); training stops early once `patience` epochs pass without a better validation score, but never before
`early_stopping_start` epochs (the paper: patience 10 after epoch 20, 100 epochs).

Why an epoch loop here rather than `robust_jax.core.train.train`: the loop has to stop on a validation criterion, and
calling `train` once per epoch would compile the step again and open a checkpoint manager and a TensorBoard writer
every few steps (an epoch of BasicMotions is three steps). The loop reuses the core's pieces instead: `TrainState`,
`Checkpointer` (state + a JSON record that holds the data position and the early-stopping bookkeeping, so an
interrupted cell resumes exactly), `MetricsWriter`, `Progress`, the mesh helpers; the NaN rule is the core's too
(non-finite states are never saved) except that a diverging cell stops and keeps its best epoch instead of aborting
the whole grid, since divergence of the naive SDE is one of the outcomes the study measures.

Randomness: step s uses fold_in(train_key, s), split into a Brownian key and a dropout key; example i of the pooled
dataset gets the Brownian motion fold_in(brownian_key, i), so its noise does not depend on the batch it lands in.
Evaluation uses the fixed fold_in(eval_key, i) at every epoch, so the validation curve is not a noise lottery.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

from robust_jax.core import mesh as mesh_lib
from robust_jax.core.checkpoint import Checkpointer, abstract_like
from robust_jax.core.evaluate import padded_batches
from robust_jax.core.metrics import MetricsWriter
from robust_jax.core.progress import Progress
from robust_jax.core.train import TrainState
from robust_jax.data.array_batches import ArrayBatches
from robust_jax.data.timeseries import TimeSeriesData
from robust_jax.sde.models import SDEClassifier

RESULT_FILE = "cell_result.json"


@dataclasses.dataclass(frozen=True)
class Protocol:
    epochs: int = 100
    patience: int = 10
    early_stopping_start: int = 20
    learning_rate: float = 1e-3
    lr_step_epochs: int = 10
    lr_decay: float = 0.5
    batch_size: int = 0  # 0: the reference's rule
    eval_batch_size: int = 256
    checkpoint_every_epochs: int = 10


def reference_batch_size(num_train: int) -> int:
    """The largest 2^i, i in 4..7, not above num_train / 2; 16 when even that is too big (at most num_train)."""
    fitting = [2**i for i in range(4, 8) if 2**i <= num_train / 2]
    return min(max(fitting) if fitting else 16, num_train)


@dataclasses.dataclass(frozen=True)
class CellFunctions:
    """Compiled once per (model, widths, shapes, schedule) and shared by every missing rate and seed."""

    optimizer: optax.GradientTransformation
    init_state: Callable  # (key, times, coeffs) -> TrainState
    train_step: Callable  # (state, batch, times, train_key) -> (state, loss)
    eval_sums: Callable  # (params, model_state, batch, times, eval_key) -> {"correct", "loss"} summed over the mask


@functools.lru_cache(maxsize=32)
def cell_functions(model: SDEClassifier, learning_rate: float, steps_per_epoch: int, lr_step_epochs: int,
                   lr_decay: float) -> CellFunctions:
    schedule = optax.exponential_decay(
        learning_rate, transition_steps=lr_step_epochs * steps_per_epoch, decay_rate=lr_decay, staircase=True
    )
    optimizer = optax.adam(schedule)
    per_example_keys = model.solver == "euler"

    def brownian(key, index):
        return jax.vmap(jax.random.fold_in, (None, 0))(key, index) if per_example_keys else key

    def init_state(key, times, coeffs):
        variables = model.init(key, times, coeffs, key)
        params = variables["params"]
        model_state = {k: v for k, v in variables.items() if k != "params"}
        return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params),
                          model_state=model_state)

    def train_step(state: TrainState, batch, times, train_key):
        brownian_key, dropout_key = jax.random.split(jax.random.fold_in(train_key, state.step))

        def loss_fn(params):
            logits, updates = model.apply(
                {"params": params, **state.model_state}, times, _coeffs(batch),
                brownian(brownian_key, batch["index"]), train=True, rngs={"dropout": dropout_key},
                mutable=list(state.model_state),
            )
            loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean()
            return loss, updates

        (loss, model_state), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        return TrainState(step=state.step + 1, params=params, opt_state=opt_state, model_state=model_state), loss

    def eval_sums(params, model_state, batch, times, eval_key):
        logits = model.apply({"params": params, **model_state}, times, _coeffs(batch),
                             brownian(eval_key, batch["index"]), train=False)
        correct = (jnp.argmax(logits, -1) == batch["label"]).astype(jnp.float32)
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"])
        mask = batch["mask"]
        return {"correct": jnp.sum(jnp.where(mask, correct, 0.0)), "loss": jnp.sum(jnp.where(mask, loss, 0.0))}

    return CellFunctions(
        optimizer=optimizer,
        init_state=jax.jit(init_state),
        train_step=jax.jit(train_step, donate_argnums=0),
        eval_sums=jax.jit(eval_sums),
    )


COEFF_NAMES = ("coeff_d", "coeff_c", "coeff_b", "coeff_a")


def _coeffs(batch: dict) -> tuple:
    return tuple(batch[name] for name in COEFF_NAMES)


def _split_arrays(data: TimeSeriesData, split: str) -> dict:
    """One split as flat arrays (ArrayBatches wants a flat dict): the Hermite coefficients, labels and the row
    indices in the pooled dataset, which name each example's Brownian motion."""
    index = data.splits[split]
    arrays = {name: coeff[index] for name, coeff in zip(COEFF_NAMES, data.coeffs)}
    return dict(arrays, label=data.labels[index], index=index.astype(np.int32))


def evaluate_split(fns: CellFunctions, state: TrainState, arrays: dict, times, eval_key, batch_size: int,
                   mesh: Mesh) -> tuple[float, float]:
    """(accuracy, mean cross-entropy) over one split; fixed padded batches so the function compiles once."""
    size = len(arrays["label"])
    correct = loss = 0.0
    for batch in padded_batches(arrays, batch_size=batch_size, mesh=mesh):
        sums = jax.device_get(fns.eval_sums(state.params, state.model_state, batch, times, eval_key))
        correct += float(sums["correct"])
        loss += float(sums["loss"])
    return correct / size, loss / size


def _improved(valid_accuracy: float, valid_loss: float, record: dict) -> bool:
    if record["best_epoch"] is None:
        return True
    best_accuracy, best_loss = record["best_valid_accuracy"], record["best_valid_loss"]
    if valid_accuracy != best_accuracy:
        return valid_accuracy > best_accuracy
    return math.isfinite(valid_loss) and not valid_loss >= best_loss


def train_cell(
    workdir: str,
    model: SDEClassifier,
    data: TimeSeriesData,
    protocol: Protocol,
    seed: int,
    *,
    mesh: Mesh | None = None,
    desc: str = "cell",
) -> dict:
    """Trains one cell (or resumes it from `workdir`), returns its record:
    {"test_accuracy" (at the best validation epoch), "best_epoch", "best_valid_accuracy", "epochs_run",
     "diverged_at_epoch" (None unless the loss became non-finite), "batch_size"}."""
    result_path = os.path.join(workdir, RESULT_FILE)
    if os.path.exists(result_path):
        with open(result_path) as f:
            return json.load(f)
    mesh = mesh_lib.make_data_mesh() if mesh is None else mesh
    devices = mesh.shape[mesh_lib.DATA_AXIS]
    train_arrays = _split_arrays(data, "train")
    num_train = len(train_arrays["label"])
    batch_size = protocol.batch_size or reference_batch_size(num_train)
    if batch_size > num_train or batch_size % devices:
        raise ValueError(
            f"batch_size={batch_size} for {data.name} must be at most its {num_train} training series and divisible "
            f"by the device count ({devices}); set config.batch_size to such a value"
        )
    steps_per_epoch = num_train // batch_size  # a final partial batch is dropped (ArrayBatches)
    eval_batch = min(protocol.eval_batch_size, -(-max(len(data.splits["valid"]), len(data.splits["test"])) // devices)
                     * devices)
    fns = cell_functions(model, protocol.learning_rate, steps_per_epoch, protocol.lr_step_epochs, protocol.lr_decay)
    valid_arrays, test_arrays = _split_arrays(data, "valid"), _split_arrays(data, "test")
    times = jnp.asarray(data.times)
    init_key, train_key, eval_key = jax.random.split(jax.random.key(seed), 3)

    batches = ArrayBatches(train_arrays, batch_size=batch_size, seed=seed, process_index=jax.process_index(),
                           process_count=jax.process_count())
    replicated = mesh_lib.replicated(mesh)
    sample = _coeffs(mesh_lib.global_batch(mesh, {name: train_arrays[name][:batch_size] for name in COEFF_NAMES}))
    abstract_state = jax.eval_shape(fns.init_state, init_key, times, sample)
    shardings = jax.tree.map(lambda _: replicated, abstract_state)
    checkpointer = Checkpointer(os.path.join(workdir, "checkpoints"), save_every=1, keep=1)
    writer = MetricsWriter(workdir)
    record = {"epoch": 0, "best_epoch": None, "best_valid_accuracy": None, "best_valid_loss": None,
              "test_accuracy": None, "since_best": 0, "diverged_at_epoch": None}
    try:
        latest = checkpointer.latest_step()
        if latest is not None:
            state, saved = checkpointer.restore(abstract_like(abstract_state, shardings), latest)
            batches.set_state(saved["batches"])
            record = saved["record"]
            writer.truncate_after(record["epoch"])
        else:
            state = jax.device_put(fns.init_state(init_key, times, sample), replicated)

        def save(epoch_state):
            checkpointer.save(int(jax.device_get(epoch_state.step)), epoch_state,
                              {"batches": batches.get_state(), "record": record}, force=True)

        with Progress(protocol.epochs, desc, initial=record["epoch"]) as progress:
            for epoch in range(record["epoch"], protocol.epochs):
                losses = []
                for _ in range(steps_per_epoch):
                    state, loss = fns.train_step(state, mesh_lib.global_batch(mesh, next(batches)), times, train_key)
                    losses.append(loss)
                train_loss = float(np.mean(jax.device_get(losses)))
                valid_accuracy, valid_loss = evaluate_split(fns, state, valid_arrays, times, eval_key, eval_batch, mesh)
                test_accuracy, _ = evaluate_split(fns, state, test_arrays, times, eval_key, eval_batch, mesh)
                record["epoch"] = epoch + 1
                if _improved(valid_accuracy, valid_loss, record):
                    record.update(best_epoch=epoch + 1, best_valid_accuracy=valid_accuracy,
                                  best_valid_loss=valid_loss, test_accuracy=test_accuracy, since_best=0)
                else:
                    record["since_best"] += 1
                writer.write(epoch + 1, {"train_loss": train_loss, "valid_accuracy": valid_accuracy,
                                         "valid_loss": valid_loss, "test_accuracy": test_accuracy})
                progress.update(1, loss=train_loss, valid=valid_accuracy)
                stopped = False
                if not math.isfinite(train_loss):
                    record["diverged_at_epoch"] = epoch + 1
                    stopped = True  # the non-finite state is not saved: the last checkpoint stays the last good one
                    break
                if epoch + 1 >= protocol.early_stopping_start and record["since_best"] >= protocol.patience:
                    stopped = True
                if stopped or (epoch + 1) % protocol.checkpoint_every_epochs == 0 or epoch + 1 == protocol.epochs:
                    save(state)
                if stopped:
                    break
    finally:
        checkpointer.close()
        writer.close()
    result = {
        "test_accuracy": record["test_accuracy"],
        "best_epoch": record["best_epoch"],
        "best_valid_accuracy": record["best_valid_accuracy"],
        "epochs_run": record["epoch"],
        "diverged_at_epoch": record["diverged_at_epoch"],
        "batch_size": batch_size,
    }
    if jax.process_index() == 0:
        tmp = result_path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(result, f, indent=2)
        os.replace(tmp, result_path)
    return result
