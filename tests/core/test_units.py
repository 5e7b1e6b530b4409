"""Small parts of the core: config checks, the batch iterator's position, metrics files, progress lines."""

import io
import json

import numpy as np
import pytest

from robust_jax.core import checks
from robust_jax.core.config_loading import load_config
from robust_jax.core.metrics import MetricsWriter
from robust_jax.core.progress import Progress
from robust_jax.data.array_batches import ArrayBatches


@pytest.mark.parametrize(
    "call,pattern",
    [
        (lambda: checks.check_int("config.batch_size", 0, minimum=1), r"config\.batch_size=0 is not allowed: must be >= 1"),
        (lambda: checks.check_int("config.steps", 2.5), r"config\.steps=2\.5 .*integer"),
        (lambda: checks.check_int("config.steps", True), r"config\.steps=True .*integer"),
        (lambda: checks.check_float("config.lr", -1.0, positive=True), r"config\.lr=-1\.0 .*> 0"),
        (lambda: checks.check_float("config.lr", float("nan"), positive=True), r"config\.lr=nan .*finite"),
        (lambda: checks.check_float("config.p", 1.0, below=1.0), r"config\.p=1\.0 .*< 1\.0"),
        (lambda: checks.check_choice("config.model", "x", ["a", "b"]), r"config\.model='x' .*\['a', 'b'\]"),
        (lambda: checks.check_divisible("config.batch_size", 12, 8, "the device count"), r"divisible by the device count \(8\)"),
    ],
)
def test_checks_name_field_value_and_rule(call, pattern):
    with pytest.raises(checks.ConfigError, match=pattern):
        call()


def test_argument_checks_raise_value_errors_naming_the_argument():
    """The same helpers check function arguments: a plain ValueError (not a config error) naming the argument."""
    with pytest.raises(ValueError, match=r"^sigma=-0\.5 is not allowed: must be > 0$") as raised:
        checks.check_float("sigma", -0.5, positive=True)
    assert not isinstance(raised.value, checks.ConfigError)
    with pytest.raises(ValueError, match=r"alpha=1\.0 is not allowed: must be in the open interval"):
        checks.check_probability("alpha", 1.0)
    with pytest.raises(ValueError, match=r"x=<array with range \[-0\.5, 1\.0\]> .*normalise inside the model"):
        checks.check_unit_interval_array("x", np.array([-0.5, 1.0]))


def test_checks_accept_good_values():
    assert checks.check_int("config.n", 3, minimum=1, maximum=3) == 3
    assert checks.check_float("config.lr", 1, positive=True) == 1.0
    assert checks.check_choice("config.m", "a", ["a"]) == "a"


def test_overrides_are_parsed_as_the_field_type_and_locked():
    config = load_config("digits:tiny", [("batch_size", "16"), ("learning_rate", "1e-2"), ("features", "(4,8)")])
    assert config.batch_size == 16 and config.learning_rate == 0.01 and config.features == (4, 8)
    with pytest.raises(AttributeError):
        config.new_field = 1  # locked: a typo cannot add a field
    with pytest.raises(checks.ConfigError, match=r"config\.learning_rate='fast' .*expected float"):
        load_config("digits:tiny", [("learning_rate", "fast")])
    with pytest.raises(checks.ConfigError, match=r"no field 'depth'"):
        load_config("digits:tiny", [("depth", "3")])


def test_array_batches_resume_and_process_split():
    arrays = {"x": np.arange(50), "y": np.arange(50) * 10}
    whole = ArrayBatches(arrays, batch_size=8, seed=3)
    reference = [next(whole)["x"] for _ in range(20)]
    # Every epoch is a permutation; the partial batch at the end of an epoch is dropped.
    epoch0 = np.concatenate(reference[:6])
    assert len(set(epoch0.tolist())) == 48
    resumed = ArrayBatches(arrays, batch_size=8, seed=3)
    for _ in range(7):
        next(resumed)
    state = json.loads(json.dumps(resumed.get_state()))
    fresh = ArrayBatches(arrays, batch_size=8, seed=3)
    fresh.set_state(state)
    for expected in reference[7:]:
        np.testing.assert_array_equal(next(fresh)["x"], expected)
    halves = [ArrayBatches(arrays, batch_size=8, seed=3, process_index=i, process_count=2) for i in range(2)]
    for expected in reference:
        np.testing.assert_array_equal(np.concatenate([next(h)["x"] for h in halves]), expected)
    with pytest.raises(ValueError, match="batch_size=7 must be divisible by the process count"):
        ArrayBatches(arrays, batch_size=7, seed=0, process_count=2)


def test_metrics_writer_truncates_after_resume(tmp_path):
    writer = MetricsWriter(str(tmp_path))
    for step in (10, 20, 30):
        writer.write(step, {"loss": np.float32(step / 10)})
    with open(writer.path, "a") as f:
        f.write('{"step": 40, "lo')  # a line cut short by a kill
    writer.truncate_after(20)
    lines = [json.loads(line) for line in open(writer.path)]
    assert lines == [{"step": 10, "loss": 1.0}, {"step": 20, "loss": 2.0}]
    writer.close()
    assert any((tmp_path / "tensorboard").iterdir())


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


def test_index_batches_cover_consecutive_indices_and_resume():
    from robust_jax.data.array_batches import IndexBatches

    whole = IndexBatches(batch_size=6)
    assert [next(whole)["index"].tolist() for _ in range(2)] == [[0, 1, 2, 3, 4, 5], [6, 7, 8, 9, 10, 11]]
    halves = [IndexBatches(batch_size=6, process_index=i, process_count=2) for i in range(2)]
    for h in halves:
        h.set_state({"step": 2})
    assert np.concatenate([next(h)["index"] for h in halves]).tolist() == list(range(12, 18))


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
