"""Progress with an ETA: a tqdm bar on a terminal, plain log lines otherwise (CI, batch jobs, log files).

Carriage-return bars turn into megabytes of noise in a log file, so without a terminal a line is written for the
first item, then at most every `interval_s` seconds, and for the last item.
"""

from __future__ import annotations

import sys
import time

import jax
from tqdm.auto import tqdm


class Progress:
    """Counts work done out of `total` and shows rate and ETA. Only process 0 reports unless `enabled` says."""

    def __init__(
        self,
        total: int,
        desc: str,
        initial: int = 0,
        *,
        enabled: bool | None = None,
        interval_s: float = 10.0,
        stream=None,
    ):
        self.total = total
        self.done = initial
        self.desc = desc
        self.interval_s = interval_s
        self.stream = sys.stderr if stream is None else stream
        self._start_done = initial
        self._start = time.perf_counter()
        self._last_line = None
        active = (jax.process_index() == 0 if enabled is None else enabled) and total > 0
        is_tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self._bar = tqdm(total=total, initial=initial, desc=desc, file=self.stream, dynamic_ncols=True) if (
            active and is_tty) else None
        self._plain = active and not is_tty

    def update(self, n: int = 1, **postfix) -> None:
        self.done += n
        if self._bar is not None:
            if postfix:
                self._bar.set_postfix({k: _fmt(v) for k, v in postfix.items()}, refresh=False)
            self._bar.update(n)
            return
        if not self._plain:
            return
        now = time.perf_counter()
        if self._last_line is None or now - self._last_line >= self.interval_s or self.done >= self.total:
            self._last_line = now
            self.stream.write(self.line(now, postfix) + "\n")
            self.stream.flush()

    def line(self, now: float, postfix: dict) -> str:
        elapsed = now - self._start
        rate = (self.done - self._start_done) / max(elapsed, 1e-9)
        eta = (self.total - self.done) / rate if rate > 0 else float("inf")
        speed = f"{rate:.3g}/s" if rate >= 1 else f"{1 / rate:.3g} s each" if rate > 0 else "?/s"
        extra = " ".join(f"{k}={_fmt(v)}" for k, v in postfix.items())
        return f"{self.desc}: {self.done}/{self.total} ({speed}, ETA {_duration(eta)}) {extra}".rstrip()

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
