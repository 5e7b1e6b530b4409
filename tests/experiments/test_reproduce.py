"""experiments.reproduce: the comparison with the papers' figures, and a reproduction killed after its first study
that, started again, runs only the rest and reports the finished study's numbers unchanged."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from experiments import reproduce

REPO = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))


def _entry(**fields):
    return {"study": "digits", "name": "n", "paper": "p", "source": "s", "setting": "x", "figure": "f",
            "metric": "a/b", **fields}


@pytest.mark.parametrize("entry,metrics,ours,gap,holds", [
    (_entry(value=0.9, compare="at_least"), {"a": {"b": 0.95}}, 0.95, 0.05, "yes"),
    (_entry(value=0.9, compare="at_least"), {"a": {"b": 0.85}}, 0.85, -0.05, "no"),
    (_entry(value=0.9, compare="at_least", tolerance=0.06), {"a": {"b": 0.85}}, 0.85, -0.05, "yes"),
    (_entry(value=0.0, compare="at_most", tolerance=0.01), {"a": {"b": 0.02}}, 0.02, 0.02, "no"),
    (_entry(value=0.0, compare="at_most", tolerance=0.01), {"a": {"b": 0.005}}, 0.005, 0.005, "yes"),
    (_entry(value_metric="t", compare="within", relative=True, tolerance=0.05), {"a": {"b": 1.04}, "t": 1.0},
     1.04, 0.04, "yes"),
    (_entry(value_metric="t", compare="within", relative=True, tolerance=0.05), {"a": {"b": 2.2}, "t": 2.0},
     2.2, 0.1, "no"),
    (_entry(value_metric="t", factor=9.0, compare="at_least"), {"a": {"b": 10.0}, "t": 1.0}, 10.0, 1.0, "yes"),
    (_entry(value_metric="t", factor=9.0, compare="at_least"), {"a": {"b": 8.0}, "t": 1.0}, 8.0, -1.0, "no"),
    (_entry(value=0.1, threshold=0.0, minus="c", compare="at_least"), {"a": {"b": 0.5}, "c": 0.6}, -0.1, -0.2, "no"),
    (_entry(value=0.6, compare="none"), {"a": {"b": 0.5}}, 0.5, -0.1, "n.a."),
    (_entry(value=0.6, compare="at_least"), {"a": {"x": 0.5}}, None, None, "n.a."),
])
def test_compare_figure(entry, metrics, ours, gap, holds):
    row = reproduce.compare_figure(entry, metrics)
    assert row["holds"] == holds
    assert row["ours"] == pytest.approx(ours) if ours is not None else row["ours"] is None
    assert row["gap"] == pytest.approx(gap) if gap is not None else row["gap"] is None


def test_the_figures_file_loads_and_a_broken_one_is_refused(tmp_path):
    figures = reproduce.load_figures()
    from robust_jax.core.run import STUDIES

    assert {entry["study"] for entry in figures["figure"]} == set(STUDIES)
    broken = tmp_path / "figures.toml"
    broken.write_text('[[figure]]\nstudy = "icl"\nname = "x"\npaper = "p"\nsource = "s"\nsetting = "x"\n'
                      'figure = "1"\nvalue = 1.0\nmetric = "m"\ncompare = "bigger"\n')
    with pytest.raises(ValueError, match="compare 'bigger'"):
        reproduce.load_figures(str(broken))


def test_benchmark_ratios_from_saved_outputs(tmp_path):
    (tmp_path / "icl.txt").write_text('jax tiny 17.82 steps/s\n{"details": {"tiny_speedup_vs_torch": 1.5}}\n'
                                      '{"benchmark": "icl_throughput", "results": {"tiny_steps_per_s": 17.82}}\n')
    (tmp_path / "sde.txt").write_text('{"benchmark": "sde_epoch_time", "results": {"lsde_s_per_epoch": 0.127}}\n')
    (tmp_path / "clip.txt").write_text('{"benchmark": "clip_throughput", "results": {"forward_images_per_s": 21.48, '
                                       '"forward_images_per_s_vs_torch": 1.2}}\n')
    references = reproduce.load_figures()["benchmark"]
    text = "\n".join(reproduce.benchmark_section(str(tmp_path), references))
    assert re.search(r"\| icl_throughput \|.*`tiny_steps_per_s`.*\| 17\.82 \| 8\.91 \| 2\.00x \|", text)
    assert re.search(r"\| sde_epoch_time \|.*`lsde_s_per_epoch`.*\| 0\.127 \| 0\.254 \| 2\.00x \|", text)
    assert re.search(r"\| clip_throughput \|.*`forward_images_per_s`.*\| 21\.48 \| 17\.9 \| 1\.20x \|", text)
    assert "same process (icl.txt; saved before the separate-process harness" in text
    assert "tiny_speedup_vs_torch 1.50x" in text
    assert "alternating separate processes (clip.txt): forward_images_per_s_vs_torch 1.20x" in text
    assert reproduce.benchmark_section(str(tmp_path / "none"), references) == []


def _command(tmp_path):
    return [sys.executable, "-m", "experiments.reproduce", "--preset=tiny", "--studies=digits,smoothing",
            f"--workdir_root={tmp_path / 'workdirs'}", f"--out={tmp_path / 'results'}"]


def _env():
    # Compiling dominates the tiny presets; XLA's CPU backend at optimisation level 0 compiles about twice as fast.
    xla_flags = " ".join(filter(None, [os.environ.get("XLA_FLAGS"), "--xla_backend_optimization_level=0"]))
    return {**os.environ, "JAX_PLATFORMS": "cpu", "JAX_NUM_CPU_DEVICES": "1", "XLA_FLAGS": xla_flags}


@pytest.mark.slow
def test_killed_reproduction_reruns_only_the_unfinished_study(tmp_path):
    digits_results = tmp_path / "workdirs" / "digits_tiny" / "results.json"
    smoothing_results = tmp_path / "workdirs" / "smoothing_tiny" / "results.json"
    with open(tmp_path / "first.log", "w") as log:
        proc = subprocess.Popen(_command(tmp_path), cwd=REPO, env=_env(), stdout=subprocess.DEVNULL, stderr=log)
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None and not digits_results.exists():
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert digits_results.exists() and not smoothing_results.exists(), "not killed between the two studies"
    first = (tmp_path / "first.log").read_text()
    assert "study 1/2: digits, ETA after the first study" in first
    finished = digits_results.read_bytes()
    finished_mtime = digits_results.stat().st_mtime_ns

    second = subprocess.run(_command(tmp_path), cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr[-3000:]
    progress = [line for line in second.stderr.splitlines() if line.startswith("study ")]
    assert progress[0].startswith("study 1/2: digits, ETA after the first study (finished earlier")
    assert progress[1].startswith("study 2/2: smoothing, ETA after the first study (running tiny")
    assert digits_results.read_bytes() == finished and digits_results.stat().st_mtime_ns == finished_mtime
    assert smoothing_results.exists()

    report = (tmp_path / "results" / "REPORT.md").read_text()
    figures = reproduce.load_figures()["figure"]
    digits_metrics = json.loads(finished)["metrics"]
    for study in ("digits", "smoothing"):
        section = report.split(f"## {study} (preset `tiny`)", 1)[1].split("\n## ", 1)[0]
        rows = [line for line in section.splitlines() if line.startswith("| ") and not line.startswith("| what")]
        assert len(rows) == sum(entry["study"] == study for entry in figures)
        assert not [row for row in rows if "not in this run" in row]  # every metric path exists in the run
    assert f"| {reproduce._number(digits_metrics['test_accuracy'])} (`test_accuracy`) |" in report
    assert json.loads((tmp_path / "results" / "digits.json").read_text()) == json.loads(finished)
    assert "read from earlier runs: 1" in report


def test_sde_and_smoothing_figures_name_entries_their_cpu_presets_produce():
    """The metric paths, against the keys the studies build from their cpu configs (names from the studies)."""
    import robust_jax
    from robust_jax.sde.study import rate_name
    from robust_jax.smoothing.study import sigma_name

    sde = robust_jax.get_config("sde", "cpu")
    smoothing = robust_jax.get_config("smoothing", "cpu")
    produced = {f"accuracy/{m}/{rate_name(r)}" for m in sde.models for r in sde.missing_rates}
    produced |= {f"drop_0_to_50/{m}" for m in sde.models}
    produced |= {f"certified_accuracy/{method}/{row}/r={radius:g}" for method in smoothing.methods
                 for row in [*(sigma_name(s) for s in smoothing.sigmas), "best"] for radius in smoothing.radii}
    figures = [entry for entry in reproduce.load_figures()["figure"] if entry["study"] in ("sde", "smoothing")]
    paths = [entry[key] for entry in figures for key in ("metric", "minus") if key in entry]
    assert len(paths) == 13 and set(paths) <= produced, sorted(set(paths) - produced)


def test_eta_weights_the_cpu_preset_by_each_study_s_measured_minutes():
    minutes = reproduce.CPU_PRESET_MINUTES
    # before any study ran: the reference machine's minutes for what is left
    assert reproduce.estimate_eta(["sde", "omniview"], {}, "cpu").startswith(
        reproduce._duration(60 * (minutes["sde"] + minutes["omniview"])))
    # digits took twice its reference time here, so the rest is expected to take twice theirs too
    eta = reproduce.estimate_eta(["icl", "sde"], {"digits": 2 * 60 * minutes["digits"]}, "cpu")
    assert eta == reproduce._duration(2 * 60 * (minutes["icl"] + minutes["sde"]))
    # other presets: the mean of the studies run so far, per study left
    assert reproduce.estimate_eta(["icl", "sde"], {"digits": 30.0, "smoothing": 90.0}, "tiny") == "2:00"
    assert reproduce.estimate_eta(["icl"], {}, "tiny") == "after the first study"
    assert reproduce.estimate_eta([], {"digits": 3.0}, "cpu") == "0:00"
