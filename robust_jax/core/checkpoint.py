"""Checkpoints: orbax `CheckpointManager` with the `args=` API.

A checkpoint holds the train state and the data iterator's position (JSON), so a run started again in the same
workdir resumes exactly where the last checkpoint left it. Saves are atomic (orbax writes to a temporary directory
and renames it) and asynchronous (training goes on while the files are written).
"""

from __future__ import annotations

import os

import jax
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

    def all_steps(self) -> list[int]:
        return list(self._manager.all_steps())

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

    def wait(self) -> None:
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()


def abstract_like(tree, shardings):
    """ShapeDtypeStructs of `tree` (arrays or ShapeDtypeStructs) carrying the given shardings."""
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)
