"""core.metrics: metrics.jsonl truncated after a resume, TensorBoard events, per-member values as lists."""

import json

import numpy as np

from robust_jax.core.metrics import MetricsWriter


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


def test_member_values_are_lists_and_tensorboard_gets_their_finite_mean(tmp_path):
    writer = MetricsWriter(str(tmp_path))
    scalars = []
    writer._tb.add_scalar = lambda name, value, global_step: scalars.append((name, value, global_step))
    writer.write(5, {"loss": np.array([1.0, float("nan"), 3.0]), "lr": 0.1})
    writer.close()
    (line,) = [json.loads(line) for line in open(writer.path)]
    assert line["step"] == 5 and line["lr"] == 0.1
    assert line["loss"][0] == 1.0 and np.isnan(line["loss"][1]) and line["loss"][2] == 3.0
    assert sorted(scalars) == [("loss", 2.0, 5), ("lr", 0.1, 5)]
