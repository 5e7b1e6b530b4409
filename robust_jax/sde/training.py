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
from robust_jax.core.train import Evaluation, TrainLoopConfig, TrainState, restore_latest_state, train
from robust_jax.data.array_batches import ArrayBatches
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
    loss_fn: Callable  # core loss: (params, model_state, batch, key, constants) -> (loss, (metrics, model_state))
    eval_sums: Callable  # (params, model_state, batch, times, eval_key) -> {"correct", "loss"} summed over the mask


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

    def loss_fn(params, model_state, batch, key, constants):
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

    return CellFunctions(optimizer=optimizer, init_fn=init_fn, loss_fn=loss_fn, eval_sums=jax.jit(eval_sums))


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


def better_validation(new: dict, best: dict) -> bool:
    """Higher validation accuracy; at equal accuracy, a lower (finite) validation loss."""
    if new["valid_accuracy"] != best["valid_accuracy"]:
        return new["valid_accuracy"] > best["valid_accuracy"]
    return math.isfinite(new["valid_loss"]) and not new["valid_loss"] >= best["valid_loss"]


def cell_setup(model: SDEClassifier, data: TimeSeriesData, protocol: Protocol, devices: int) -> tuple:
    """(batch size, steps per epoch, CellFunctions) of a cell: the reference's batch rule and the cached functions."""
    train_arrays = _split_arrays(data, "train")
    num_train = len(train_arrays["label"])
    batch_size = protocol.batch_size or reference_batch_size(num_train)
    if batch_size > num_train or batch_size % devices:
        raise ValueError(
            f"batch_size={batch_size} for {data.name} must be at most its {num_train} training series and divisible "
            f"by the device count ({devices}); set config.batch_size to such a value"
        )
    steps_per_epoch = num_train // batch_size  # a final partial batch is dropped (ArrayBatches)
    coeff_shapes = tuple((batch_size, *train_arrays[name].shape[1:]) for name in COEFF_NAMES)
    fns = cell_functions(model, protocol.learning_rate, steps_per_epoch, protocol.lr_step_epochs, protocol.lr_decay,
                         tuple(np.shape(data.times)), coeff_shapes, protocol.weight_decay_scale,
                         protocol.last_layer_grad_scale)
    return batch_size, steps_per_epoch, fns


def restore_cell(workdir: str, model: SDEClassifier, data: TimeSeriesData, protocol: Protocol):
    """Variables of a cell's latest checkpoint, {"params": ..., **model_state}, for `model.apply`."""
    _, _, fns = cell_setup(model, data, protocol, devices=1)
    state = restore_latest_state(workdir, fns.init_fn, fns.optimizer)
    return {"params": state.params, **state.model_state}


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
    batch_size, steps_per_epoch, fns = cell_setup(model, data, protocol, devices)
    train_arrays = _split_arrays(data, "train")
    eval_batch = min(protocol.eval_batch_size, -(-max(len(data.splits["valid"]), len(data.splits["test"])) // devices)
                     * devices)
    valid_arrays, test_arrays = _split_arrays(data, "valid"), _split_arrays(data, "test")
    times = jnp.asarray(data.times)
    init_key, train_key, eval_key = jax.random.split(jax.random.key(seed), 3)

    def evaluate_epoch(state) -> dict:
        valid_accuracy, valid_loss = evaluate_split(fns, state, valid_arrays, times, eval_key, eval_batch, mesh)
        test_accuracy, _ = evaluate_split(fns, state, test_arrays, times, eval_key, eval_batch, mesh)
        return {"valid_accuracy": valid_accuracy, "valid_loss": valid_loss, "test_accuracy": test_accuracy}

    batches = ArrayBatches(train_arrays, batch_size=batch_size, seed=seed, process_index=jax.process_index(),
                           process_count=jax.process_count())
    trained = train(
        workdir=workdir, init_fn=fns.init_fn, loss_fn=fns.loss_fn, optimizer=fns.optimizer, batches=batches,
        loop=TrainLoopConfig(num_steps=protocol.epochs * steps_per_epoch,
                             log_every=protocol.log_every_epochs * steps_per_epoch,
                             checkpoint_every=protocol.checkpoint_every_epochs * steps_per_epoch,
                             keep_checkpoints=protocol.keep_checkpoints, fsdp_min_size=protocol.fsdp_min_size,
                             micro_batch_size=protocol.micro_batch_size),
        mesh=mesh, desc=desc, constants={"times": times}, keys=(init_key, train_key), on_non_finite="stop",
        evaluation=Evaluation(every=steps_per_epoch, fn=evaluate_epoch, better=better_validation,
                              patience=protocol.patience, start=protocol.early_stopping_start),
    )
    best = trained.best or {"step": None, "metrics": {"test_accuracy": None, "valid_accuracy": None}}
    diverged = trained.diverged_at_step
    result = {
        "test_accuracy": best["metrics"]["test_accuracy"],
        "best_epoch": None if best["step"] is None else best["step"] // steps_per_epoch,
        "best_valid_accuracy": best["metrics"]["valid_accuracy"],
        "epochs_run": trained.evaluations if diverged is None else diverged // steps_per_epoch + 1,
        "diverged_at_epoch": None if diverged is None else diverged // steps_per_epoch + 1,
        "batch_size": batch_size,
    }
    if jax.process_index() == 0:
        tmp = result_path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(result, f, indent=2)
        os.replace(tmp, result_path)
    return result
