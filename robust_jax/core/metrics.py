"""Metrics to `metrics.jsonl` (one JSON object per logged step) and TensorBoard event files."""

from __future__ import annotations

import json
import math
import os

import jax
import numpy as np


class MetricsWriter:
    """Writes scalars from process 0 only; other processes get a writer that does nothing."""

    def __init__(self, workdir: str):
        self.path = os.path.join(workdir, "metrics.jsonl")
        self._active = jax.process_index() == 0
        self._tb = None
        if self._active:
            os.makedirs(workdir, exist_ok=True)
            from tensorboardX import SummaryWriter  # TensorBoard events without TensorFlow

            self._tb = SummaryWriter(logdir=os.path.join(workdir, "tensorboard"), flush_secs=30)

    def truncate_after(self, step: int) -> None:
        """Drops lines logged after `step`: a resumed run logs those steps again, identically."""
        if not self._active or not os.path.exists(self.path):
            return
        kept = []
        with open(self.path) as f:
            for line in f:
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut short by a kill
                if record.get("step", 0) <= step:
                    kept.append(json.dumps(record) + "\n")
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            f.writelines(kept)
        os.replace(tmp, self.path)

    def write(self, step: int, scalars: dict) -> None:
        """One line of `step` and the values: scalars, or lists (one value per member of a training of several
        members; TensorBoard gets their mean over the finite ones)."""
        if not self._active:
            return
        record = {"step": int(step)}
        record.update({k: _to_float(v) for k, v in scalars.items()})
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        for name, value in record.items():
            if isinstance(value, list):
                finite = [v for v in value if math.isfinite(v)]
                value = sum(finite) / len(finite) if finite else float("nan")
            if name != "step" and math.isfinite(value):
                self._tb.add_scalar(name, value, global_step=int(step))

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def _to_float(value) -> float | list[float]:
    array = np.asarray(value, np.float64)
    return float(array) if array.ndim == 0 else [float(v) for v in array.ravel()]
