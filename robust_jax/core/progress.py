"""Progress with an ETA: a tqdm bar on a terminal, plain log lines otherwise (CI, batch jobs, log files).

Carriage-return bars turn into megabytes of noise in a log file, so without a terminal a line is written for the
first item, then at most every `interval_s` seconds, and for the last item.

The rate and ETA are measured from the end of the first update on: the first item of a training run includes
compiling the step, which would otherwise make a three-minute run start with an ETA of hours.
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
        self._start = time.perf_counter()
        self._rate_from = None  # (time, done) at the end of the first update
        self._last_line = None
        active = (jax.process_index() == 0 if enabled is None else enabled) and total > 0
        is_tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        # The terminal bar starts after the first update, so tqdm's rate leaves the first item out too.
        self._use_bar = active and is_tty
        self._bar = None
        self._plain = active and not is_tty

    def update(self, n: int = 1, **postfix) -> None:
        self.done += n
        now = time.perf_counter()
        if self._rate_from is None:
            self._rate_from = (now, self.done)
            if self._use_bar:
                self._bar = tqdm(total=self.total, initial=self.done, desc=self.desc, file=self.stream,
                                 dynamic_ncols=True)
                if postfix:
                    self._bar.set_postfix({k: _fmt(v) for k, v in postfix.items()})
                return
        if self._bar is not None:
            if postfix:
                self._bar.set_postfix({k: _fmt(v) for k, v in postfix.items()}, refresh=False)
            self._bar.update(n)
            return
        if not self._plain:
            return
        if self._last_line is None or now - self._last_line >= self.interval_s or self.done >= self.total:
            self._last_line = now
            self.stream.write(self.line(now, postfix) + "\n")
            self.stream.flush()

    def line(self, now: float, postfix: dict) -> str:
        since, done_then = self._rate_from
        extra = " ".join(f"{k}={_fmt(v)}" for k, v in postfix.items())
        if self.done == done_then or now <= since:
            timing = f"first took {_duration(since - self._start, precise=True)}, ETA after the next"
        else:
            rate = (self.done - done_then) / (now - since)
            eta = (self.total - self.done) / rate
            speed = f"{rate:.3g}/s" if rate >= 1 else f"{1 / rate:.3g} s each"
            timing = f"{speed}, ETA {_duration(eta)}"
        return f"{self.desc}: {self.done}/{self.total} ({timing}) {extra}".rstrip()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _fmt(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _duration(seconds: float, precise: bool = False) -> str:
    if seconds == float("inf"):
        return "?"
    if precise and seconds < 60:
        return f"{seconds:.3g} s"
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"
