"""The reference's training protocol for one (dataset, missing rate, model, seed) cell, on the core train loop.

Protocol (Oh, Lim & Kim 2024, following Kidger et al.'s NCDE code): batch = the largest 2^i, i in 4..7, not above
N_train / 2 (16 if none is); Adam; StepLR(10 epochs, x0.5) written as an optax staircase schedule in steps; after
each epoch the validation and test accuracy are measured, and the reported test accuracy is the one at the epoch of
best validation accuracy (ties broken by the lower validation loss, which matters on validation sets of a dozen
series); training stops early once `patience` epochs pass without a better validation score, but never before
`early_stopping_start` epochs (the paper: patience 10 after epoch 20, 100 epochs).

The cell trains through `robust_jax.core.train.train`: the epoch is an `Evaluation` every `steps_per_epoch` steps,
early stopping is its `better` / `patience` / `start`, and a diverging cell stops (`on_non_finite="stop"`) and keeps
its best epoch instead of aborting the whole grid, since divergence of the naive SDE is one of the outcomes the study
measures. The loss, the initialisation and the optimizer are cached per (model, shapes, schedule), and the observation
grid reaches the step as `constants`, so the core compiles the step once and every missing rate and seed reuses it.

The reference's optimizer options, off by default (`Protocol.weight_decay_scale`, `last_layer_grad_scale`; the
model's `head_init` is the third): torch.optim.Adam(lr, weight_decay=lr * 0.01) and a x100 hook on the gradient of
the classifier's last Linear (`protocol_optimizer`).

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
from robust_jax.core.evaluate import padded_batches
from robust_jax.core.train import Evaluation, TrainLoopConfig, Training, TrainState, flax_variables, train
from robust_jax.data.array_batches import ArrayBatches, MemberBatches
from robust_jax.data.timeseries import TimeSeriesData
from robust_jax.sde.models import LAST_LAYER, SDEClassifier

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
    log_every_epochs: int = 1  # training-loss lines; every epoch's evaluation is logged with its step anyway
    keep_checkpoints: int = 1
    fsdp_min_size: int = 0
    micro_batch_size: int = 0
    # The reference's optimizer options (off by default: the study's results so far were measured without them).
    weight_decay_scale: float = 0.0  # L2 weight decay = scale x learning_rate, added to the gradient (0.01: reference)
    last_layer_grad_scale: float = 1.0  # the head's last Linear gets this x its gradient (100: reference)
    selection: str = "valid_loss"  # the epoch reported and early stopping: lowest validation loss (the reference's)
                                   # or "valid_accuracy" (highest, ties broken by the lower loss)


def reference_batch_size(num_train: int) -> int:
    """The largest 2^i, i in 4..7, not above num_train / 2; 16 when even that is too big (at most num_train)."""
    fitting = [2**i for i in range(4, 8) if 2**i <= num_train / 2]
    return min(max(fitting) if fitting else 16, num_train)


def scale_last_layer(factor: float) -> optax.GradientTransformation:
    """Multiplies the gradient of the classifier's last Linear (`models.LAST_LAYER`, kernel and bias) by `factor`,
    as the reference's gradient hooks do; every other gradient passes unchanged."""

    def mask(params):
        def in_last_layer(path, _):
            return tuple(getattr(entry, "key", None) for entry in path[:len(LAST_LAYER)]) == LAST_LAYER

        selected = jax.tree_util.tree_map_with_path(in_last_layer, params)
        if not any(jax.tree.leaves(selected)):
            raise ValueError(f"scale_last_layer: the parameters have no {'/'.join(LAST_LAYER)} layer")
        return selected

    return optax.masked(optax.scale(factor), mask)


def protocol_optimizer(schedule, learning_rate: float, weight_decay_scale: float = 0.0,
                       last_layer_grad_scale: float = 1.0) -> optax.GradientTransformation:
    """Adam on `schedule`, with the reference's options: torch.optim.Adam(lr, weight_decay=lr * 0.01) adds
    weight_decay * params to the gradient before the moments (coupled L2, not AdamW), with the initial learning rate
    (StepLR changes the step size, not the decay); the last layer's gradient hook (x100) acts before that.

    Under Adam, whose step is nearly invariant to a parameter's gradient scale, the x100 mostly shrinks the weight
    decay's and epsilon's share of the last layer's update. Without options this is plain `optax.adam(schedule)`, the
    optimizer state of earlier checkpoints."""
    parts = []
    if last_layer_grad_scale != 1.0:
        parts.append(scale_last_layer(last_layer_grad_scale))
    if weight_decay_scale:
        parts.append(optax.add_decayed_weights(weight_decay_scale * learning_rate))
    adam = optax.adam(schedule)
    return optax.chain(*parts, adam) if parts else adam


@dataclasses.dataclass(frozen=True)
class CellFunctions:
    """Built once per (model, shapes, schedule) and shared by every missing rate and seed, so the core train loop's
    compiled step (cached on these objects' identity) is reused."""

    optimizer: optax.GradientTransformation
    init_fn: Callable  # key -> (params, model_state)
    loss_fn: Callable  # core loss: (params, model_state, batch, key, step, constants) -> (loss, (metrics, ...))
    eval_sums: Callable  # (params, model_state, batch, times, eval_key) -> {"correct", "loss"} summed over the mask
    # The same for M cells trained as one program (`member_training`): a leading member axis on the parameters,
    # model state and keys, batches (B, M, ...).
    member_init_fn: Callable
    member_loss_fn: Callable
    member_eval_sums: Callable


@functools.lru_cache(maxsize=32)
def cell_functions(model: SDEClassifier, learning_rate: float, steps_per_epoch: int, lr_step_epochs: int,
                   lr_decay: float, times_shape: tuple, coeff_shapes: tuple, weight_decay_scale: float = 0.0,
                   last_layer_grad_scale: float = 1.0) -> CellFunctions:
    schedule = optax.exponential_decay(
        learning_rate, transition_steps=lr_step_epochs * steps_per_epoch, decay_rate=lr_decay, staircase=True
    )
    optimizer = protocol_optimizer(schedule, learning_rate, weight_decay_scale, last_layer_grad_scale)
    per_example_keys = model.solver == "euler"

    def brownian(key, index):
        return jax.vmap(jax.random.fold_in, (None, 0))(key, index) if per_example_keys else key

    def init_fn(key):
        # Parameters depend on the input shapes only, so zeros of the training batch's shapes stand in for data.
        times = jnp.zeros(times_shape, jnp.float32)
        coeffs = tuple(jnp.zeros(shape, jnp.float32) for shape in coeff_shapes)
        variables = model.init(key, times, coeffs, key)
        return variables["params"], {k: v for k, v in variables.items() if k != "params"}

    def loss_fn(params, model_state, batch, key, step, constants):
        del step
        brownian_key, dropout_key = jax.random.split(key)
        logits, updates = model.apply(
            {"params": params, **model_state}, constants["times"], _coeffs(batch),
            brownian(brownian_key, batch["index"]), train=True, rngs={"dropout": dropout_key},
            mutable=list(model_state),
        )
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean()
        return loss, ({}, updates)

    def eval_sums(params, model_state, batch, times, eval_key):
        logits = model.apply({"params": params, **model_state}, times, _coeffs(batch),
                             brownian(eval_key, batch["index"]), train=False)
        correct = (jnp.argmax(logits, -1) == batch["label"]).astype(jnp.float32)
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"])
        mask = batch["mask"]
        return {"correct": jnp.sum(jnp.where(mask, correct, 0.0)), "loss": jnp.sum(jnp.where(mask, loss, 0.0))}

    def members_first(batch):
        """(B, M, ...) -> (M, B, ...); the padding mask (B,) is every member's."""
        moved = {name: jnp.moveaxis(value, 1, 0) for name, value in batch.items() if name != "mask"}
        if "mask" in batch:
            moved["mask"] = jnp.broadcast_to(batch["mask"], (moved["label"].shape[0], *batch["mask"].shape))
        return moved

    def member_loss_fn(params, model_state, batch, keys, step, constants):
        return jax.vmap(loss_fn, in_axes=(0, 0, 0, 0, None, None))(params, model_state, members_first(batch), keys,
                                                                     step, constants)

    def member_eval_sums(params, model_state, batch, times, eval_keys):
        return jax.vmap(eval_sums, in_axes=(0, 0, 0, None, 0))(params, model_state, members_first(batch), times,
                                                              eval_keys)

    return CellFunctions(optimizer=optimizer, init_fn=init_fn, loss_fn=loss_fn, eval_sums=jax.jit(eval_sums),
                         member_init_fn=jax.vmap(init_fn), member_loss_fn=member_loss_fn,
                         member_eval_sums=jax.jit(member_eval_sums))


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
                   mesh: Mesh, *, members: bool = False):
    """(accuracy, mean cross-entropy) over one split; fixed padded batches so the function compiles once. With
    members, the arrays are (N, M, ...), the state and eval keys have a leading member axis, and both figures are
    (M,) arrays."""
    size = len(arrays["label"])
    sums_fn = fns.member_eval_sums if members else fns.eval_sums
    correct = loss = 0.0
    for batch in padded_batches(arrays, batch_size=batch_size, mesh=mesh):
        sums = jax.device_get(sums_fn(state.params, state.model_state, batch, times, eval_key))
        correct = correct + np.asarray(sums["correct"], np.float64)
        loss = loss + np.asarray(sums["loss"], np.float64)
    if members:
        return correct / size, loss / size
    return float(correct) / size, float(loss) / size


SELECTIONS = ("valid_loss", "valid_accuracy")


def lower_validation_loss(new: dict, best: dict) -> bool:
    """A strictly lower finite validation loss (the reference's rule: the earliest epoch wins a tie); any finite loss
    beats a non-finite best."""
    return math.isfinite(new["valid_loss"]) and not new["valid_loss"] >= best["valid_loss"]


def better_validation(new: dict, best: dict) -> bool:
    """Higher validation accuracy; at equal accuracy, a lower (finite) validation loss."""
    if new["valid_accuracy"] != best["valid_accuracy"]:
        return new["valid_accuracy"] > best["valid_accuracy"]
    return lower_validation_loss(new, best)


def selection_rule(selection: str):
    """The `Evaluation.better` of a protocol's selection ("valid_loss" or "valid_accuracy")."""
    if selection not in SELECTIONS:
        raise ValueError(f"selection={selection!r} is not allowed: must be one of {', '.join(SELECTIONS)}")
    return lower_validation_loss if selection == "valid_loss" else better_validation


def cell_setup(model: SDEClassifier, data: TimeSeriesData, protocol: Protocol) -> tuple:
    """(batch size, steps per epoch, CellFunctions) of a cell: the reference's batch rule and the cached functions."""
    train_arrays = _split_arrays(data, "train")
    num_train = len(train_arrays["label"])
    batch_size = protocol.batch_size or reference_batch_size(num_train)
    if batch_size > num_train:
        raise ValueError(f"batch_size={batch_size} for {data.name} must be at most its {num_train} training series; "
                         "set config.batch_size to such a value")
    steps_per_epoch = num_train // batch_size  # a final partial batch is dropped (ArrayBatches)
    coeff_shapes = tuple((batch_size, *train_arrays[name].shape[1:]) for name in COEFF_NAMES)
    fns = cell_functions(model, protocol.learning_rate, steps_per_epoch, protocol.lr_step_epochs, protocol.lr_decay,
                         tuple(np.shape(data.times)), coeff_shapes, protocol.weight_decay_scale,
                         protocol.last_layer_grad_scale)
    return batch_size, steps_per_epoch, fns


def cell_training(name: str, model: SDEClassifier, data: TimeSeriesData, protocol: Protocol, seed: int,
                  desc: str | None = None) -> Training:
    """One cell's training (`core.train.Training`, in the study's workdir at `name`): the reference protocol, each
    epoch an `Evaluation` on the validation and test splits, early stopping on it, a diverging loss ending the
    cell."""
    batch_size, steps_per_epoch, fns = cell_setup(model, data, protocol)
    train_arrays = _split_arrays(data, "train")
    valid_arrays, test_arrays = _split_arrays(data, "valid"), _split_arrays(data, "test")
    times = jnp.asarray(data.times)
    init_key, train_key, eval_key = jax.random.split(jax.random.key(seed), 3)
    evaluate_epoch = _epoch_evaluation(fns, valid_arrays, test_arrays, times, eval_key, protocol)
    return _protocol_training(name, model, protocol, steps_per_epoch, fns.init_fn, fns.loss_fn, fns.optimizer,
                              lambda: ArrayBatches(train_arrays, batch_size=batch_size, seed=seed,
                                                   process_index=jax.process_index(),
                                                   process_count=jax.process_count()),
                              evaluate_epoch, times, (init_key, train_key), desc)


def _epoch_evaluation(fns: CellFunctions, valid_arrays: dict, test_arrays: dict, times, eval_key, protocol: Protocol,
                      members: bool = False):
    """The evaluation at the end of each epoch: validation accuracy and loss, test accuracy (per member with
    members), in padded batches no larger than the larger split (rounded up to the device count)."""
    largest_split = max(len(valid_arrays["label"]), len(test_arrays["label"]))

    def evaluate_epoch(state, mesh) -> dict:
        devices = mesh.shape[mesh_lib.DATA_AXIS]
        batch = min(protocol.eval_batch_size, -(-largest_split // devices) * devices)
        valid_accuracy, valid_loss = evaluate_split(fns, state, valid_arrays, times, eval_key, batch, mesh,
                                                    members=members)
        test_accuracy, _ = evaluate_split(fns, state, test_arrays, times, eval_key, batch, mesh, members=members)
        return {"valid_accuracy": valid_accuracy, "valid_loss": valid_loss, "test_accuracy": test_accuracy}

    return evaluate_epoch


def _protocol_training(name, model, protocol: Protocol, steps_per_epoch: int, init_fn, loss_fn, optimizer, batches,
                       evaluate_epoch, times, keys, desc, members: int = 0) -> Training:
    """The reference protocol as a `Training`: epochs of steps_per_epoch steps, each ended by an `Evaluation` that
    selects the reported epoch and stops early, a diverging loss ending the cell (or member)."""
    return Training(
        name=name, init_fn=init_fn, loss_fn=loss_fn, optimizer=optimizer,
        loop=TrainLoopConfig(num_steps=protocol.epochs * steps_per_epoch,
                             log_every=protocol.log_every_epochs * steps_per_epoch,
                             checkpoint_every=protocol.checkpoint_every_epochs * steps_per_epoch,
                             keep_checkpoints=protocol.keep_checkpoints, fsdp_min_size=protocol.fsdp_min_size,
                             micro_batch_size=0 if members else protocol.micro_batch_size),
        batches=batches,
        evaluation=Evaluation(every=steps_per_epoch, fn=evaluate_epoch, better=selection_rule(protocol.selection),
                              patience=protocol.patience, start=protocol.early_stopping_start),
        constants={"times": times}, keys=keys, on_non_finite="stop", desc=desc or name, model=model, variables=flax_variables, members=members)


def train_cell(training: Training, workdir: str, *, mesh: Mesh | None = None) -> dict:
    """Trains one cell (or resumes it) in `workdir/<training.name>`, returns its record:
    {"test_accuracy" (at the selected epoch), "best_epoch", "best_valid_accuracy", "best_valid_loss", "epochs_run",
     "diverged_at_epoch" (None unless the loss became non-finite), "batch_size"}. A finished cell's record is read
    back."""
    return _train_and_record(training, workdir, mesh)


def member_training(name: str, model: SDEClassifier, datas: list[TimeSeriesData], protocol: Protocol,
                    seeds: list[int], desc: str | None = None) -> Training:
    """The cells of one model on same-shaped data (the missing rates and seeds of one dataset), trained as one
    program: `core.train.Training` with `members` (every cell's parameters stacked, the step `jax.vmap`-ed over them).
    Member m is the cell of datas[m] with seed seeds[m]: the same keys, data order, Brownian motions, evaluation and
    early stopping as `cell_training` gives that cell alone, so its results are the same up to float rounding."""
    if len(datas) != len(seeds) or not datas:
        raise ValueError(f"member_training needs one seed per data set, got {len(datas)} data sets, {len(seeds)} seeds")
    batch_size, steps_per_epoch, fns = cell_setup(model, datas[0], protocol)
    splits = {split: [_split_arrays(data, split) for data in datas] for split in ("train", "valid", "test")}
    for split, arrays in splits.items():
        shapes = {tuple((key, value.shape) for key, value in sorted(member.items())) for member in arrays}
        if len(shapes) != 1 or np.shape(datas[0].times) != np.shape(datas[-1].times):
            raise ValueError(f"member_training {name!r}: the cells' {split} splits differ in shape; members must share "
                             "their shapes (one dataset's missing rates and seeds do)")
    stacked = {split: {key: np.stack([member[key] for member in arrays], axis=1) for key in arrays[0]}
               for split, arrays in splits.items() if split != "train"}
    times = jnp.asarray(datas[0].times)
    keys = np.stack([jax.random.key_data(jax.random.split(jax.random.key(seed), 3)) for seed in seeds], axis=1)
    init_keys, train_keys, eval_keys = (jax.random.wrap_key_data(k) for k in keys)
    evaluate_epoch = _epoch_evaluation(fns, stacked["valid"], stacked["test"], times, eval_keys, protocol,
                                       members=True)
    return _protocol_training(
        name, model, protocol, steps_per_epoch, fns.member_init_fn, fns.member_loss_fn, fns.optimizer,
        lambda: MemberBatches([ArrayBatches(arrays, batch_size=batch_size, seed=seed, process_index=jax.process_index(),
                                            process_count=jax.process_count())
                               for arrays, seed in zip(splits["train"], seeds)]),
        evaluate_epoch, times, (init_keys, train_keys), desc, members=len(seeds))


def train_members(training: Training, workdir: str, *, mesh: Mesh | None = None) -> list[dict]:
    """Trains (or resumes) a `member_training` in `workdir/<training.name>`; returns one record per member, as
    `train_cell` gives for a cell. A finished training's records are read back."""
    return _train_and_record(training, workdir, mesh)


def _train_and_record(training: Training, workdir: str, mesh: Mesh | None):
    """`train`, then the cells' records (a list for a member training, one record for a cell), written to
    RESULT_FILE beside the checkpoints; a finished training's records are read back instead."""
    result_path = os.path.join(workdir, training.name, RESULT_FILE)
    if os.path.exists(result_path):
        with open(result_path) as f:
            return json.load(f)
    mesh = mesh_lib.make_data_mesh() if mesh is None else mesh
    devices = mesh.shape[mesh_lib.DATA_AXIS]
    batch_size = training.batches().batch_size
    if batch_size % devices:
        raise ValueError(f"the batch size {batch_size} of {training.name} must be divisible by the device count "
                         f"({devices}); set config.batch_size to such a value")
    trained = train(training, workdir, mesh=mesh)
    steps_per_epoch = training.evaluation.every
    as_list = (lambda value: value) if training.members else (lambda value: [value])
    bests, stops, divergences = as_list(trained.best), as_list(trained.stopped_at_step), as_list(trained.diverged_at_step)
    final = None
    if any(best is None for best in bests):
        # A cell that diverged before its first evaluation is scored as it stands: non-finite logits predict the
        # first class, as the reference's zeroed NaN logits do.
        final = {name: np.asarray(value).reshape(len(bests))
                 for name, value in training.evaluation.fn(trained.state, mesh).items()}
    records = []
    for member, (best, stopped, diverged) in enumerate(zip(bests, stops, divergences)):
        if best is None:
            best = {"step": None, "metrics": {"test_accuracy": float(final["test_accuracy"][member]),
                                              "valid_accuracy": None, "valid_loss": None}}
        epochs_run = trained.evaluations if stopped is None else stopped // steps_per_epoch
        records.append({
            "test_accuracy": best["metrics"]["test_accuracy"],
            "best_epoch": None if best["step"] is None else best["step"] // steps_per_epoch,
            "best_valid_accuracy": best["metrics"]["valid_accuracy"],
            "best_valid_loss": best["metrics"]["valid_loss"],
            "epochs_run": epochs_run if diverged is None else diverged // steps_per_epoch + 1,
            "diverged_at_epoch": None if diverged is None else diverged // steps_per_epoch + 1,
            "batch_size": batch_size,
        })
    result = records if training.members else records[0]
    if jax.process_index() == 0:
        tmp = result_path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(result, f, indent=2)
        os.replace(tmp, result_path)
    return result
