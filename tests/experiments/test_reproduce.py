"""experiments.reproduce: the comparison with the papers' figures, and a reproduction killed after its first study
that, started again, runs only the rest and reports the finished study's numbers unchanged."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from experiments import reproduce
from tests import sigkill
from robust_jax.core import verdicts

REPO = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))


def _entry(**fields):
    return {"study": "digits", "name": "n", "paper": "p", "source": "s", "setting": "x", "figure": "f",
            "metric": "a/b", **fields}


@pytest.mark.parametrize("entry,metrics,ours,gap,verdict", [
    (_entry(value=0.9, compare="at_least"), {"a": {"b": 0.95}}, 0.95, 0.05, "holds (exact rule)"),
    (_entry(value=0.9, compare="at_least"), {"a": {"b": 0.85}}, 0.85, -0.05, "fails (exact rule)"),
    (_entry(value=0.9, compare="at_least", tolerance=0.06), {"a": {"b": 0.85}}, 0.85, -0.05, "holds (exact rule)"),
    (_entry(value=0.9, compare="at_least", expected=True), {"a": {"b": 0.95}}, 0.95, 0.05, "met (expected figure)"),
    (_entry(value=0.9, compare="at_least", expected=True), {"a": {"b": 0.8}}, 0.8, -0.1, "missed (expected figure)"),
    (_entry(value=0.0, compare="at_most", tolerance=0.01), {"a": {"b": 0.02}}, 0.02, 0.02, "fails (exact rule)"),
    (_entry(value=0.0, compare="at_most", tolerance=0.01), {"a": {"b": 0.005}}, 0.005, 0.005, "holds (exact rule)"),
    (_entry(value_metric="t", compare="within", relative=True, tolerance=0.05), {"a": {"b": 1.04}, "t": 1.0},
     1.04, 0.04, "holds (exact rule)"),
    (_entry(value_metric="t", compare="within", relative=True, tolerance=0.05), {"a": {"b": 2.2}, "t": 2.0},
     2.2, 0.1, "fails (exact rule)"),
    (_entry(value_metric="t", factor=9.0, compare="at_least"), {"a": {"b": 10.0}, "t": 1.0}, 10.0, 1.0,
     "holds (exact rule)"),
    (_entry(value_metric="t", factor=9.0, compare="at_least"), {"a": {"b": 8.0}, "t": 1.0}, 8.0, -1.0,
     "fails (exact rule)"),
    (_entry(value=0.1, threshold=0.0, minus="c", compare="at_least"), {"a": {"b": 0.5}, "c": 0.6}, -0.1, -0.2,
     "fails (exact rule)"),
    (_entry(value=0.6, compare="none"), {"a": {"b": 0.5}}, 0.5, -0.1, "n.a."),
    (_entry(value=0.6, compare="at_least"), {"a": {"x": 0.5}}, None, None, "n.a."),
])
def test_compare_figure_point_rules(entry, metrics, ours, gap, verdict):
    row = reproduce.compare_figure(entry, metrics)
    assert row["verdict"] == verdict
    assert row["ours"] == pytest.approx(ours) if ours is not None else row["ours"] is None
    assert row["gap"] == pytest.approx(gap) if gap is not None else row["gap"] is None


def _paired(**fields):
    entry = {"study": "sde", "name": "n", "paper": "p", "source": "s", "setting": "x", "figure": "> 0",
             "compare": "paired", "units": "drop", "a": "naive", "b": "stable", "side": "greater", **fields}
    reproduce.check_figure(entry, "test entry")
    return entry


# Nine units each, naive − stable constructed so that the 95% bootstrap interval of the mean difference is
# [0.0456, 0.0644] (above 0), [-0.0422, 0.0511] (contains 0) and [-0.09, -0.0578] (below 0).
_DIFFERENCES = {"above": [0.05, 0.06, 0.04, 0.07, 0.05, 0.08, 0.03, 0.06, 0.05],
                "around": [0.1, -0.1, 0.05, -0.05, 0.12, -0.08, 0.0, 0.02, -0.03],
                "below": [-0.05, -0.1, -0.08, -0.06, -0.12, -0.04, -0.09, -0.07, -0.05]}


def _fabricated_results(tmp_path):
    """A results.json as a study writes it, with three unit sets of known intervals and an exact metric."""
    stable = [0.9, 0.8, 0.85, 0.7, 0.95, 0.9, 0.75, 0.8, 0.88]
    ids = [f"{d}/seed={s}" for d in ("A", "B", "C") for s in range(3)]
    units = {name: {"unit": "dataset/seed", "ids": ids,
                    "values": {"stable": stable, "naive": [s + d for s, d in zip(stable, differences)]}}
             for name, differences in _DIFFERENCES.items()}
    path = tmp_path / "results.json"
    path.write_text(json.dumps({"study": "sde", "preset": "cpu", "metrics": {"units": units, "exact": 0.004}}))
    return json.loads(path.read_text())["metrics"]


def test_report_from_a_fabricated_results_json_gives_each_verdict(tmp_path):
    metrics = _fabricated_results(tmp_path)
    figures = [_paired(name="claim A", units="above"), _paired(name="claim B", units="around"),
               _paired(name="claim C", units="below"), _paired(name="claim D", units="absent"),
               {**_entry(study="sde", name="closed form", value=0.0, compare="at_most", tolerance=0.01),
                "metric": "exact"}]
    lines = reproduce.comparison_table("sde", figures, metrics)
    assert lines[0].startswith("| what |") and "95% interval (n units)" in lines[0] and "exact test" in lines[0]
    rows = {line.split(" | ")[0][2:]: line for line in lines[2:]}
    for name, units, word in (("claim A", "above", "holds"), ("claim B", "around", "not shown"),
                              ("claim C", "below", "contradicted")):
        differences = np.subtract(metrics["units"][units]["values"]["naive"], metrics["units"][units]["values"]["stable"])
        low, high = verdicts.paired_bootstrap_interval(differences)
        assert {"holds": low > 0, "not shown": low < 0 < high, "contradicted": high < 0}[word]
        cells = [cell.strip() for cell in rows[name].strip("|").split(" | ")]
        assert cells[2] == f"{np.mean(differences):+.4g} (mean over units, `{units}`)"
        assert cells[4] == f"[{low:+.3g}, {high:+.3g}] (n = 9, one per dataset/seed)"
        assert cells[5] == f"sign test p = {verdicts.sign_test(differences):.2g} " \
                           f"({np.sum(differences > 0)}+ / {np.sum(differences < 0)}−)"
        assert cells[6] == f"{word}; paired: the 95% interval of naive − stable above 0"
    assert "| not in this run | n.a. | n.a. | n.a. | n.a.; paired:" in rows["claim D"]
    # naive == stable on every unit: the interval [0, 0] is above -0.02, but it has no spread to judge
    same = _paired(name="claim E", units="above", b="naive", margin=0.02)
    line = reproduce.comparison_table("sde", [same], metrics)[2]
    assert "| [+0, +0] (n = 9, one per dataset/seed) | sign test p = 1 (0+ / 0−) | not shown (no spread: every unit " \
           "has the same difference); paired: the 95% interval of naive − naive above 0 - 0.02 = -0.02 |" in line
    assert "| 0.004 (`exact`) | +0.004 | none (exact rule) | n.a. | holds (exact rule); exact rule: ours ≤ the " \
           "figure + 0.01 |" in rows["closed form"]


def test_paired_rows_with_a_transform_a_second_unit_set_and_a_margin():
    ids = [str(i) for i in range(8)]
    metrics = {"units": {
        "certified_radius/sigma=0.25": {"unit": "certified test image", "ids": ids,
                                        "values": {"m": [0.5, 0.6, 0.1, -1.0, 0.7, 0.3, 0.9, 0.55]}},
        "certified_radius/sigma=0.5": {"unit": "certified test image", "ids": ids,
                                       "values": {"m": [0.2, 0.6, -1.0, -1.0, 0.1, 0.3, 0.9, -1.0]}}}}
    entry = _paired(study="smoothing", units="certified_radius/sigma=0.25", units_b="certified_radius/sigma=0.5",
                    a="m", b="m", transform="at_least:0.5", binary=True, margin=0.02)
    row = reproduce.compare_figure(entry, metrics)
    # certified at r >= 0.5: sigma 0.25 images 0, 1, 4, 6, 7; sigma 0.5 images 1, 6: a only 0, 4, 7
    assert row["judged"].test == "McNemar" and (row["judged"].positive, row["judged"].negative) == (3, 0)
    assert row["ours"] == pytest.approx(3 / 8) and row["judged"].boundary == pytest.approx(-0.02)
    assert row["judged"].p_value == pytest.approx(0.25)  # 3 discordant pairs, all one way: 2 / 2**3
    line = reproduce.comparison_table("smoothing", [entry], metrics)[2]
    assert "McNemar p = 0.25 (3 a only, 0 b only)" in line
    assert ("paired: the 95% interval of [m at `certified_radius/sigma=0.25` ≥ 0.5] − [m at "
            "`certified_radius/sigma=0.5` ≥ 0.5] above 0 - 0.02 = -0.02") in line
    metrics["units"]["certified_radius/sigma=0.5"]["ids"] = [str(i + 1) for i in range(8)]  # other images
    with pytest.raises(ValueError, match="figure 'n': units 'certified_radius/sigma=0.25' and "
                                         "'certified_radius/sigma=0.5' cannot be paired: their ids differ"):
        reproduce.compare_figure(entry, metrics)


def test_the_figures_file_loads_and_a_broken_one_is_refused(tmp_path):
    figures = reproduce.load_figures()
    from robust_jax.core.run import STUDIES

    assert {entry["study"] for entry in figures["figure"]} == set(STUDIES)
    head = '[[figure]]\nstudy = "sde"\nname = "x"\npaper = "p"\nsource = "s"\nsetting = "x"\nfigure = "1"\n'
    for body, message in [
        ('value = 1.0\nmetric = "m"\ncompare = "bigger"\n', "compare 'bigger'"),
        ('compare = "paired"\nunits = "u"\na = "m"\nb = "n"\n', r"figure 0 \('x'\): compare 'paired' needs \['side'\]"),
        ('compare = "paired"\nunits = "u"\na = "m"\nside = "greater"\n', r"\('x'\): compare 'paired' needs \['b'\]"),
        ('compare = "paired"\nunits = "u"\na = "m"\nb = "n"\nside = "above"\n', "side 'above' is not one of"),
        ('compare = "paired"\nunits = "u"\na = "m"\nb = "n"\nside = "greater"\nmargin = -0.1\n', "margin = -0.1"),
        ('compare = "paired"\nunits = "u"\na = "m"\nb = "n"\nside = "greater"\ntransform = "at_most:1"\n',
         "transform='at_most:1'"),
        ('compare = "paired"\nunits = "u"\na = "m"\nb = "n"\nside = "greater"\nboundry = 0.1\n',
         r"\['boundry'\] are not fields"),
        ('compare = "at_least"\nmetric = "m"\n', "needs a value, value_metric or threshold"),
        ('compare = "at_least"\nvalue = 1.0\n', r"compare 'at_least' needs \['metric'\]"),
        ('compare = "none"\nmetric = "m"\nconfig = "rrmc"\n', "config = 'rrmc' is not a config file"),
    ]:
        broken = tmp_path / "figures.toml"
        broken.write_text(head + body)
        with pytest.raises(ValueError, match=message):
            reproduce.load_figures(str(broken))
    (tmp_path / "figures.toml").write_text('[[figure]]\nstudy = "sde"\nname = "x"\n')
    with pytest.raises(ValueError, match=r"figure 0 \('x'\) lacks \['paper', 'source'"):
        reproduce.load_figures(str(tmp_path / "figures.toml"))


def test_the_report_prints_unit_sets_summarised():
    metrics = {"units": {"drop": {"unit": "dataset/seed", "ids": ["a", "b"], "values": {"m": [1.0, 2.0]}}}, "x": 1}
    shown = reproduce.metrics_for_the_report(metrics)
    assert shown["x"] == 1 and shown["units"]["drop"].startswith("2 units (dataset/seed); series: m")
    assert reproduce.metrics_for_the_report({"x": 1}) == {"x": 1}


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
    # As a user runs it: XLA's default threading and optimisation level (tests/sigkill.py drops the tests' flags).
    return sigkill.environment(user_build=True)


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
        entries = [entry for entry in figures if entry["study"] == study]
        assert len(rows) == len(entries)
        for row, entry in zip(rows, entries):
            # every metric path and unit set exists in the run, but the entries of another config's runs
            assert ("not in this run" in row) == ("config" in entry), row
            verdict = row.rstrip(" |").rsplit(" | ", 1)[1].split(";")[0]
            assert verdict in (*verdicts.VERDICTS, *verdicts.EXACT_RULE_VERDICTS, *verdicts.EXPECTED_FIGURE_VERDICTS) \
                or verdict.startswith("not shown (fewer than"), row
    smoothing_metrics = json.loads(smoothing_results.read_text())["metrics"]
    images = smoothing_metrics["certified_examples"]
    assert f"(n = {images}, one per certified test image) | McNemar p = " in report  # paired over sigmas
    assert f"| {reproduce._number(digits_metrics['test_accuracy'])} (`test_accuracy`) |" in report
    assert json.loads((tmp_path / "results" / "digits.json").read_text()) == json.loads(finished)
    assert "read from earlier runs: 1" in report


def test_figures_name_entries_their_cpu_presets_produce():
    """The metric paths and the unit sets and series of the paired rules, against the names the studies build from
    their cpu configs (an entry's own config where it names one: the rRCM comparison's)."""
    import robust_jax
    from robust_jax.omniview.study import UNIT_SETS
    from robust_jax.sde.study import DROP_UNITS, HALF_MISSING_UNITS, rate_name
    from robust_jax.smoothing.study import sigma_name, unit_set_name

    sde = robust_jax.get_config("sde", "cpu")
    produced = set()
    for preset in ("cpu", "paper"):  # the neural CDE's figures are for scale, in the paper preset only
        grid = robust_jax.get_config("sde", preset)
        produced |= {f"accuracy/{m}/{rate_name(r)}" for m in grid.models for r in grid.missing_rates}
        produced |= {f"drop_0_to_50/{m}" for m in grid.models}
    units = {"sde": {DROP_UNITS: set(sde.models), HALF_MISSING_UNITS: set(sde.models)}}
    omniview = robust_jax.get_config("omniview", "cpu")
    units["omniview"] = {name: {"base", *omniview.variants} for name in UNIT_SETS.values()}
    for config_name in ("smoothing", "rrcm"):
        smoothing = robust_jax.get_config(config_name, "cpu")
        produced |= {f"certified_accuracy/{method}/{row}/r={radius:g}" for method in smoothing.methods
                     for row in [*(sigma_name(s) for s in smoothing.sigmas), "best"] for radius in smoothing.radii}
        units[config_name] = {unit_set_name(s): set(smoothing.methods) for s in smoothing.sigmas}
    figures = reproduce.load_figures()["figure"]
    paths = [entry[key] for entry in figures if entry["study"] in ("sde", "smoothing")
             for key in ("metric", "minus") if key in entry]
    assert len(paths) == 5 and set(paths) <= produced, sorted(set(paths) - produced)
    paired = [entry for entry in figures if entry["compare"] == "paired"]
    assert len(paired) == 6 + 7 + 5  # sde, smoothing (one of its own, six of the rRCM comparison), omniview
    for entry in paired:
        unit_sets = units[entry.get("config", entry["study"])]
        assert entry["a"] in unit_sets[entry["units"]], entry["name"]
        assert entry["b"] in unit_sets[entry.get("units_b", entry["units"])], entry["name"]


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
