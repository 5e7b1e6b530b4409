"""Shuffled mini-batches from arrays held in memory, with a position that can be saved and restored.

The order is a pure function of (seed, epoch): epoch e uses the permutation drawn from `np.random.default_rng
([seed, e])`, and each global batch is the next `batch_size` indices of it (a final partial batch of an epoch is
dropped). Process p of P feeds rows [p*B/P, (p+1)*B/P) of every global batch, so the global batch, and therefore the
training run, is the same for any number of processes. The state is just (epoch, offset).
"""

from __future__ import annotations

import numpy as np


class ArrayBatches:
    def __init__(
        self,
        arrays: dict[str, np.ndarray],
        *,
        batch_size: int,
        seed: int,
        process_index: int = 0,
        process_count: int = 1,
    ):
        sizes = {name: len(a) for name, a in arrays.items()}
        if len(set(sizes.values())) != 1:
            raise ValueError(f"arrays must have the same length, got {sizes}")
        self.size = next(iter(sizes.values()))
        if not 1 <= batch_size <= self.size:
            raise ValueError(f"batch_size={batch_size} must be between 1 and the dataset size ({self.size})")
        if batch_size % process_count:
            raise ValueError(f"batch_size={batch_size} must be divisible by the process count ({process_count})")
        self.arrays = arrays
        self.batch_size = batch_size
        self.seed = seed
        self._local = batch_size // process_count
        self._local_start = process_index * self._local
        self.epoch = 0
        self.offset = 0
        self._order = self._permutation(0)

    def _permutation(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(self.size)

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        if self.offset + self.batch_size > self.size:
            self.epoch += 1
            self.offset = 0
            self._order = self._permutation(self.epoch)
        start = self.offset + self._local_start
        rows = self._order[start : start + self._local]
        self.offset += self.batch_size
        return {name: array[rows] for name, array in self.arrays.items()}

    def get_state(self) -> dict:
        return {"epoch": self.epoch, "offset": self.offset}

    def set_state(self, state: dict) -> None:
        self.epoch = int(state["epoch"])
        self.offset = int(state["offset"])
        self._order = self._permutation(self.epoch)


class IndexBatches:
    """Batches of example indices for data generated on device: global batch s holds indices
    [s*B, (s+1)*B), and this process feeds its slice. The step draws example i from `fold_in(key, i)`, so the data
    is the same for any device or process count. The position is the step count."""

    def __init__(self, *, batch_size: int, process_index: int = 0, process_count: int = 1):
        if batch_size < 1 or batch_size % process_count:
            raise ValueError(
                f"batch_size={batch_size} must be >= 1 and divisible by the process count ({process_count})"
            )
        self.batch_size = batch_size
        self._local = batch_size // process_count
        self._local_start = process_index * self._local
        self.step = 0

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        start = self.step * self.batch_size + self._local_start
        self.step += 1
        return {"index": np.arange(start, start + self._local, dtype=np.int32)}

    def get_state(self) -> dict:
        return {"step": self.step}

    def set_state(self, state: dict) -> None:
        self.step = int(state["step"])


class MemberBatches:
    """The batches of several independent models trained as one program (`core.train.Training.members`): one
    iterator per member, their batches stacked as (B, M, ...) (the example axis first, so the batch shards over the
    devices as any other). The position is every member's position."""

    def __init__(self, members: list):
        if not members:
            raise ValueError("MemberBatches needs at least one member's batches")
        self.members = list(members)
        self.batch_size = self.members[0].batch_size

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        batches = [next(member) for member in self.members]
        return {name: np.stack([batch[name] for batch in batches], axis=1) for name in batches[0]}

    def get_state(self) -> dict:
        return {"members": [member.get_state() for member in self.members]}

    def set_state(self, state: dict) -> None:
        if len(state["members"]) != len(self.members):
            raise ValueError(f"a position of {len(state['members'])} members for {len(self.members)} members")
        for member, saved in zip(self.members, state["members"]):
            member.set_state(saved)
