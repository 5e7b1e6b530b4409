"""Progress with an ETA: a tqdm bar on a terminal, plain log lines otherwise (CI, batch jobs, log files)."""

from __future__ import annotations

import logging
import sys
import time

import jax
from tqdm.auto import tqdm

log = logging.getLogger("robust_jax")


class Progress:
    """Counts work done out of `total` and shows rate and ETA.

    Only process 0 reports. When stderr is not a terminal, a line is logged every `log_fraction` of the work,
    so non-interactive runs stay readable.
    """

    def __init__(self, total: int, desc: str, initial: int = 0, log_fraction: float = 0.1, enabled: bool | None = None):
        self.total = total
        self.done = initial
        self.desc = desc
        self._start_done = initial
        self._start = time.perf_counter()
        self._next_log = initial
        self._step = max(1, int(total * log_fraction))
        active = jax.process_index() == 0 if enabled is None else enabled
        self._bar = None
        self._plain = False
        if active and sys.stderr.isatty():
            self._bar = tqdm(total=total, initial=initial, desc=desc, dynamic_ncols=True, leave=True)
        elif active:
            self._plain = True

    def update(self, n: int = 1, **postfix) -> None:
        self.done += n
        if self._bar is not None:
            self._bar.update(n)
            if postfix:
                self._bar.set_postfix({k: _fmt(v) for k, v in postfix.items()}, refresh=False)
        elif self._plain and (self.done >= self._next_log or self.done == self.total):
            self._next_log = self.done + self._step
            elapsed = time.perf_counter() - self._start
            rate = (self.done - self._start_done) / max(elapsed, 1e-9)
            eta = (self.total - self.done) / rate if rate > 0 else float("inf")
            extra = " ".join(f"{k}={_fmt(v)}" for k, v in postfix.items())
            print(
                f"{self.desc}: {self.done}/{self.total} ({rate:.1f}/s, ETA {_duration(eta)}) {extra}".rstrip(),
                file=sys.stderr,
                flush=True,
            )

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _fmt(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _duration(seconds: float) -> str:
    if seconds == float("inf"):
        return "?"
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"
