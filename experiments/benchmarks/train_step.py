"""One core train step ready to time: `robust_jax.core.train.compiled_train_step` (the function the train loop runs:
state donated, batch sharded on 'data') with a freshly initialised state, one fixed global batch, the train key and
the constants, called exactly as the loop calls it."""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np


class CoreStep:
    """init_fn / loss_fn / optimizer as a study hands them to `core.train`; batch: a dict of numpy arrays (the
    global batch, fed again at every step); constants: what the study passes as `train(constants=...)`.

    Nothing is initialised or placed on a device until the first `run`, so `estimated_flops` can judge a step too
    large to time without paying for its parameters."""

    def __init__(self, init_fn: Callable, loss_fn: Callable, optimizer, batch: dict, constants=None, *,
                 micro_batch_size: int = 0, seed: int = 0):
        import jax

        from robust_jax.core import mesh as mesh_lib
        from robust_jax.core.train import compiled_train_step, initial_state, state_shardings

        self.mesh = mesh_lib.make_data_mesh()
        self._init_key, self._train_key = jax.random.split(jax.random.key(seed))
        self._init = lambda key: initial_state(init_fn, optimizer, key, self.mesh)[0]
        abstract_state = jax.eval_shape(self._init, self._init_key)
        self.step = compiled_train_step(loss_fn, optimizer, state_shardings(abstract_state, self.mesh), self.mesh,
                                        micro_batch_size)
        self._host = (batch, constants)
        self._abstract = (abstract_state, *(jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype), tree)
                                            for tree in (batch, constants)))
        self.state = None

    def _materialise(self) -> None:
        from robust_jax.core import mesh as mesh_lib

        batch, constants = self._host
        self.state = self._init(self._init_key)
        self.batch = mesh_lib.global_batch(self.mesh, batch)
        self.train_key = mesh_lib.replicate(self.mesh, self._train_key)
        self.constants = None if constants is None else mesh_lib.replicate(self.mesh, constants)
        self._host = None

    def run(self, steps: int) -> None:
        """`steps` steps, dispatched back to back, then waits for the last one (the first call initialises)."""
        import jax

        if self.state is None:
            self._materialise()
        metrics = None
        for _ in range(steps):
            self.state, metrics = self.step(self.state, self.batch, self.train_key, self.constants)
        jax.block_until_ready(metrics)

    def estimated_flops(self) -> float | None:
        """XLA's FLOP count of one step from the lowered, not yet compiled, program on abstract inputs (cheap: no
        compilation, no parameters), or None where the backend gives none. A loop body (micro-batches, lax.map)
        counts once."""
        state, batch, constants = self._abstract
        try:
            analysis = self.step.lower(state, batch, self._train_key, constants).cost_analysis()
        except Exception:  # noqa: BLE001 - an estimate only; a backend without cost analysis just gives none
            return None
        if isinstance(analysis, (list, tuple)):
            analysis = analysis[0] if analysis else None
        flops = (analysis or {}).get("flops")
        return float(flops) if flops and flops > 0 else None


def time_steps(core_step: CoreStep, steps: int, max_seconds: float) -> dict[str, float]:
    """Compiles and runs one step, then times up to `steps` more (fewer, at least one, if they would take longer than
    max_seconds at the first step's pace): {"compile_and_first_step_s", "timed_steps", "steps_per_s"}."""
    start = time.perf_counter()
    core_step.run(1)
    first = time.perf_counter() - start
    start = time.perf_counter()
    core_step.run(1)
    pace = time.perf_counter() - start
    remaining = max(0, steps - 1)
    if remaining:
        remaining = max(1, min(remaining, int(max_seconds / max(pace, 1e-9)) - 1))
        start = time.perf_counter()
        core_step.run(remaining)
        elapsed = time.perf_counter() - start
    else:
        elapsed = 0.0
    timed = 1 + remaining
    return {"compile_and_first_step_s": first, "timed_steps": timed, "steps_per_s": timed / (pace + elapsed)}
