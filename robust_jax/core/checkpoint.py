"""Checkpoints: orbax `CheckpointManager` with the `args=` API.

A checkpoint holds the train state and the data iterator's position (JSON), so a run started again in the same
workdir resumes exactly where the last checkpoint left it. Saves are atomic (orbax writes to a temporary directory
and renames it) and asynchronous (training goes on while the files are written).
"""

from __future__ import annotations

import os

import jax
import numpy as np
import orbax.checkpoint as ocp

_STATE = "state"
_DATA = "data"


class Checkpointer:
    def __init__(self, directory: str, *, save_every: int, keep: int, async_save: bool = True):
        self.directory = os.path.abspath(directory)
        options = ocp.CheckpointManagerOptions(
            save_interval_steps=max(1, save_every),
            max_to_keep=keep,
            enable_async_checkpointing=async_save,
            create=True,
        )
        self._manager = ocp.CheckpointManager(self.directory, options=options, item_names=(_STATE, _DATA))

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    @staticmethod
    def exists(directory: str) -> bool:
        """Whether `directory` holds a finished checkpoint (orbax's temporary folders of an interrupted save do
        not count)."""
        if not os.path.isdir(directory):
            return False
        manager = ocp.CheckpointManager(os.path.abspath(directory), item_names=(_STATE, _DATA))
        try:
            return manager.latest_step() is not None
        finally:
            manager.close()

    def save(self, step: int, state, data_state: dict, *, force: bool = False) -> bool:
        return self._manager.save(
            int(step),
            args=ocp.args.Composite(**{_STATE: ocp.args.StandardSave(state), _DATA: ocp.args.JsonSave(data_state)}),
            force=force,
        )

    def restore(self, abstract_state, step: int | None = None):
        """Returns (state, data_state) of `step` (default: the latest), laid out like `abstract_state`.

        `abstract_state` is a pytree of `jax.ShapeDtypeStruct` with shardings (e.g. from `jax.eval_shape`).
        """
        step = self.latest_step() if step is None else step
        restored = self._manager.restore(
            step,
            args=ocp.args.Composite(
                **{_STATE: ocp.args.StandardRestore(abstract_state), _DATA: ocp.args.JsonRestore()}
            ),
        )
        return restored[_STATE], restored[_DATA]

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()


def abstract_like(tree, shardings):
    """ShapeDtypeStructs of `tree` (arrays or ShapeDtypeStructs) carrying the given shardings."""
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


def _key_name(entry) -> str:
    for attribute in ("key", "name", "idx"):
        if hasattr(entry, attribute):
            return str(getattr(entry, attribute))
    return str(entry)


def _shaped_like(tree, like):
    """`tree`'s leaves in the structure of `like`, matched by their key paths' names: orbax gives nested dicts back
    where the parameters held custom pytree nodes (LoRA adapters, say)."""
    by_path = {tuple(map(_key_name, path)): leaf for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}
    paths, treedef = jax.tree_util.tree_flatten_with_path(like)
    try:
        return jax.tree.unflatten(treedef, [by_path[tuple(map(_key_name, path))] for path, _ in paths])
    except KeyError as missing:
        raise ValueError(f"the checkpoint has no parameter {missing}: was it written by this training?") from None


def restore_trained(directory: str, step: int | None = None, like=None):
    """(step, params, model_state, best_params or None) of a train-loop checkpoint (default: the latest), read
    without the optimizer state and without a target: the arrays' shapes come from the checkpoint's own metadata
    (an orbax partial restore), so nothing has to be initialised to read a trained model. Arrays come back as numpy
    arrays, in nested dicts, or in the structure of `like` (an abstract (params, model_state), e.g. from
    `jax.eval_shape` of the training's init) when given. FileNotFoundError when `directory` holds no checkpoint."""
    registry = ocp.handlers.DefaultCheckpointHandlerRegistry()
    handler = ocp.PyTreeCheckpointHandler()
    registry.add(_STATE, ocp.args.PyTreeRestore, handler)
    registry.add(_DATA, ocp.args.JsonRestore, ocp.JsonCheckpointHandler())  # known, though not read
    manager = ocp.CheckpointManager(os.path.abspath(directory), handler_registry=registry)
    try:
        step = manager.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {directory}")
        saved = manager.item_metadata(step)[_STATE]
        saved = getattr(saved, "tree", saved)
        # A run that keeps its best evaluation's parameters saves (state, best params); others the state alone.
        state, best = (saved[0], saved[1]) if isinstance(saved, (list, tuple)) else (saved, None)
        wanted = {"step": state["step"], "params": state["params"], "model_state": state.get("model_state", {})}
        tree = [wanted, best] if best is not None else wanted
        abstract = jax.tree.map(lambda meta: jax.ShapeDtypeStruct(meta.shape, meta.dtype), tree)
        restored = manager.restore(step, args=ocp.args.Composite(**{_STATE: ocp.args.PyTreeRestore(
            item=abstract, restore_args=jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), abstract),
            partial_restore=True)}))[_STATE]
    finally:
        manager.close()
    state, best = (restored[0], restored[1]) if best is not None else (restored, None)
    params, model_state = state["params"], state.get("model_state", {})
    if like is not None:
        params, model_state = _shaped_like((params, model_state), like)
        best = None if best is None else _shaped_like(best, like[0])
    return int(state["step"]), params, model_state, best
