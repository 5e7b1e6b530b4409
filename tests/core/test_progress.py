"""core.progress: plain progress lines with an ETA that leaves out the first (compiling) item."""

import io

from robust_jax.core.progress import Progress


def test_progress_plain_lines_have_eta():
    stream = io.StringIO()
    with Progress(100, "work", enabled=True, stream=stream, interval_s=3600) as progress:
        for _ in range(100):
            progress.update(1, loss=0.5)
    lines = stream.getvalue().splitlines()
    # First and last item only: the interval keeps log files short.
    assert len(lines) == 2
    assert lines[-1].startswith("work: 100/100") and "ETA 0:00" in lines[-1] and "loss=0.5" in lines[-1]
    stream = io.StringIO()
    progress = Progress(3, "certify", enabled=True, stream=stream, interval_s=0.0)
    for _ in range(3):
        progress.update(1, correct="1/1")
    assert len(stream.getvalue().splitlines()) == 3


def test_progress_eta_leaves_out_the_first_item(monkeypatch):
    """The first item (compilation, in a training run) is slow; the ETA comes from the items after it."""
    clock = iter([0.0, 100.0, 101.0, 102.0])  # start, first item done after 100 s, then 1 s per item
    monkeypatch.setattr("robust_jax.core.progress.time.perf_counter", lambda: next(clock))
    stream = io.StringIO()
    progress = Progress(10, "train", enabled=True, stream=stream, interval_s=0.0)
    progress.update(1)
    progress.update(1)
    progress.update(1)
    first, second, third = stream.getvalue().splitlines()
    assert "first took 1:40" in first and "ETA" in first and "ETA 1:" not in first
    assert "1/s" in second and "ETA 0:08" in second, second  # 8 items left at 1 item/s
    assert "ETA 0:07" in third, third
