"""The smoothing study end to end on the `tiny` preset: every sigma and radius reported, files written, resumable."""

import json

from experiments.configs import smoothing
from robust_jax.core.run import run_study


def test_tiny_study_reports_every_sigma_and_radius(tmp_path):
    config = smoothing.get_config("tiny")
    results = run_study(config, str(tmp_path))
    certified = results["metrics"]["certified_accuracy"]
    assert set(certified) == {f"sigma={s:g}" for s in config.sigmas} | {"best"}
    for row in certified.values():
        assert list(row) == [f"r={r:g}" for r in config.radii]
        values = list(row.values())
        assert all(0.0 <= v <= 1.0 for v in values)
        assert values == sorted(values, reverse=True)  # certified accuracy cannot grow with the radius
    for r in config.radii:
        assert certified["best"][f"r={r:g}"] == max(certified[f"sigma={s:g}"][f"r={r:g}"] for s in config.sigmas)
    for name in ("certified_accuracy.md", "certified_accuracy.csv", "certified_accuracy.png", "results.json"):
        assert (tmp_path / name).exists()
    # A second run in the same workdir resumes everything and reports the same numbers.
    again = run_study(config, str(tmp_path))
    assert again["metrics"] == json.loads((tmp_path / "results.json").read_text())["metrics"] == results["metrics"]
