"""Runs every study's default preset and writes results/REPORT.md: per study its figures against the papers' (from
experiments/paper_figures.toml), its plots and its settings.

  python -m experiments.reproduce [--preset=cpu] [--studies=digits,...] [--workdir_root=workdirs] [--out=results]
                                  [--benchmarks=results/benchmarks]

Each study runs in its own workdir (<workdir_root>/<study>_<preset>). A workdir that already holds a finished run of
the same config (config.json equal, results.json written) is read, not run again; an interrupted one resumes from
its checkpoints. So a killed reproduction, started again, runs only what is left and reports the finished studies'
numbers unchanged. Progress goes to stderr, one line per study: "study k/N: name, ETA ...".

How a claim is judged (robust_jax/core/verdicts.py has the words and the statistics):
  compare = "paired"   a claim about a difference, judged on the units it is made of, which the study exports in
                       results.json metrics["units"] (per data set and seed, per held-out object, per certified test
                       image): the mean over the units of a - b, its 95% percentile-bootstrap interval (10,000
                       resamples, fixed seed), the unit count and a two-sided exact test of "no difference" (sign
                       test; McNemar's for right/wrong outcomes). The verdict: "holds" when the interval lies
                       strictly on the claimed side of the boundary, "not shown" when it contains it (or with
                       fewer than 5 units, or when every unit has the same difference), "contradicted" when it lies
                       on the other side.
  at_least / at_most / within
                       a point rule on one number, for exact claims (closed forms, checked to a tolerance):
                       "holds (exact rule)" / "fails (exact rule)"; with expected = true, an expected figure that is
                       no paper's claim: "met (expected figure)" / "missed (expected figure)".
  none                 a figure from another setting, shown for scale: "n.a.". So is any rule whose entry the run
                       lacks ("not in this run").

Benchmark outputs saved in --benchmarks (e.g. `python -m experiments.benchmarks.icl_throughput >
results/benchmarks/icl_throughput.txt`; every JSON line of every file there is read) add a last section with
their ratios to the PyTorch references of paper_figures.toml.
"""

from __future__ import annotations

import datetime
import glob
import json
import math
import os
import platform
import shutil
import sys
import time
import tomllib

from absl import app, flags
from absl import logging as absl_logging

import robust_jax.configs
from robust_jax.core import verdicts
from robust_jax.core.config_loading import load_config
from robust_jax.core.run import STUDIES, changed_fields, run_study

FIGURES_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "paper_figures.toml")
CONFIGS_DIR = os.path.dirname(os.path.abspath(robust_jax.configs.__file__))
POINT_RULES = ("at_least", "at_most", "within")
COMPARISONS = ("paired", *POINT_RULES, "none")
# The fields of a [[figure]]: every entry's, then each kind's (required, optional).
COMMON_FIELDS = ("study", "name", "paper", "source", "setting", "figure", "compare")
KIND_FIELDS = {
    "paired": (("units", "a", "b", "side"), ("units_b", "transform", "boundary", "margin", "binary", "value",
                                             "config")),
    "point": (("metric",), ("value", "value_metric", "factor", "threshold", "tolerance", "relative", "minus",
                            "expected", "config")),
    "none": (("metric",), ("value", "minus", "config")),
}

_PRESET = flags.DEFINE_string("preset", "cpu", "Preset to run for every study")
_STUDIES = flags.DEFINE_list("studies", list(STUDIES), "Studies to run (or other config files in robust_jax/configs, "
                                                       "e.g. rrcm: judged against their study's figures)")
_WORKDIR_ROOT = flags.DEFINE_string("workdir_root", "workdirs", "Parent of the per-study workdirs")
_OUT = flags.DEFINE_string("out", "results", "Where REPORT.md and the plots go")
_BENCHMARKS = flags.DEFINE_string("benchmarks", None, "Folder of saved benchmark outputs (default <out>/benchmarks)")


# ------------------------------------------------------------------------------------------------ the comparison
def _kind(compare: str) -> str:
    return "point" if compare in POINT_RULES else compare


def _check_number(where: str, entry: dict, field: str) -> None:
    value = entry.get(field)
    if field in entry and (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)):
        raise ValueError(f"{where}: {field} = {value!r} must be a finite number")


def check_figure(entry: dict, where: str) -> None:
    """One [[figure]] entry: its fields for its kind of rule, each a ValueError naming the entry and the field."""
    missing = [key for key in COMMON_FIELDS if key not in entry]
    if missing:
        raise ValueError(f"{where} lacks {missing}")
    if entry["study"] not in STUDIES:
        raise ValueError(f"{where}: study {entry['study']!r} is not one of {list(STUDIES)}")
    if entry["compare"] not in COMPARISONS:
        raise ValueError(f"{where}: compare {entry['compare']!r} is not one of {list(COMPARISONS)}")
    required, optional = KIND_FIELDS[_kind(entry["compare"])]
    missing = [key for key in required if key not in entry]
    if missing:
        raise ValueError(f"{where}: compare {entry['compare']!r} needs {missing}")
    unknown = sorted(set(entry) - set(COMMON_FIELDS) - set(required) - set(optional))
    if unknown:
        raise ValueError(f"{where}: {unknown} are not fields of a compare {entry['compare']!r} entry "
                         f"(allowed besides {list(COMMON_FIELDS)}: {[*required, *optional]})")
    for field in ("value", "factor", "threshold", "tolerance", "boundary", "margin"):
        _check_number(where, entry, field)
    if entry["compare"] in POINT_RULES and not {"value", "value_metric", "threshold"} & set(entry):
        raise ValueError(f"{where}: compare {entry['compare']!r} needs a value, value_metric or threshold")
    if entry["compare"] == "paired":
        for field in ("units", "a", "b", "units_b"):
            if field in entry and (not isinstance(entry[field], str) or not entry[field]):
                raise ValueError(f"{where}: {field} = {entry[field]!r} must name a unit set or a series")
        if entry["side"] not in verdicts.SIDES:
            raise ValueError(f"{where}: side {entry['side']!r} is not one of {list(verdicts.SIDES)}")
        if entry.get("margin", 0.0) < 0:
            raise ValueError(f"{where}: margin = {entry['margin']!r} must be >= 0")
        if not isinstance(entry.get("binary", False), bool):
            raise ValueError(f"{where}: binary = {entry['binary']!r} must be true or false")
        try:
            verdicts.parse_transform(entry.get("transform"))
        except ValueError as error:
            raise ValueError(f"{where}: {error}") from None
    for field in ("relative", "expected"):
        if not isinstance(entry.get(field, False), bool):
            raise ValueError(f"{where}: {field} = {entry[field]!r} must be true or false")
    if "config" in entry and not os.path.exists(os.path.join(CONFIGS_DIR, f"{entry['config']}.py")):
        raise ValueError(f"{where}: config = {entry['config']!r} is not a config file in {CONFIGS_DIR}")


def load_figures(path: str = FIGURES_PATH) -> dict:
    """{"figure": [...], "benchmark": [...]} from paper_figures.toml, every figure checked once."""
    with open(path, "rb") as f:
        figures = tomllib.load(f)
    for i, entry in enumerate(figures.get("figure", [])):
        check_figure(entry, f"{path}: figure {i} ({entry.get('name')!r})")
    return figures


def metric_at(metrics: dict, path: str):
    """The value at "a/b/c" in the metrics, or None where the run has no such entry."""
    value = metrics
    for key in path.split("/"):
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _paired_row(entry: dict, metrics: dict) -> dict:
    try:
        series = verdicts.paired_series(metrics, entry["units"], entry["a"], entry["b"],
                                        units_b=entry.get("units_b"), transform=entry.get("transform"))
        judged = None if series is None else verdicts.judge_paired(
            series[0], series[1], side=entry["side"], boundary=entry.get("boundary", 0.0),
            margin=entry.get("margin", 0.0), binary=entry.get("binary", False))
    except ValueError as error:
        raise ValueError(f"figure {entry['name']!r}: {error}") from None
    paper = entry.get("value")
    ours = None if judged is None else judged.mean_difference
    return {"kind": "paired", "ours": ours, "paper": paper,
            "gap": None if ours is None or paper is None else ours - paper, "relative": False,
            "verdict": verdicts.NOT_APPLICABLE if judged is None else judged.verdict, "judged": judged,
            "unit": None if series is None else series[2]}


def compare_figure(entry: dict, metrics: dict) -> dict:
    """One row of a study's comparison: {"kind", "ours", "paper", "gap", "verdict", ...}.

    kind "paired": ours is the mean over units of a - b, "judged" the verdicts.PairedJudgement (None where the run
    lacks the units), "unit" what one unit is. kind "point": ours is the metric (minus another), the verdict an exact
    rule's (or an expected figure's). kind "none": another setting, verdict "n.a."."""
    if entry["compare"] == "paired":
        return _paired_row(entry, metrics)
    ours = metric_at(metrics, entry["metric"])
    if ours is not None and "minus" in entry:
        subtracted = metric_at(metrics, entry["minus"])
        ours = None if subtracted is None else ours - subtracted
    paper = entry.get("value")
    if "value_metric" in entry:
        base = metric_at(metrics, entry["value_metric"])
        paper = None if base is None else base * entry.get("factor", 1.0)
    threshold = entry.get("threshold", paper)
    relative = entry.get("relative", False)
    gap = None
    if ours is not None and paper is not None:
        gap = (ours / paper - 1.0 if paper else math.inf) if relative else ours - paper
    word = verdicts.NOT_APPLICABLE
    if ours is not None and threshold is not None and entry["compare"] != "none":
        tolerance = entry.get("tolerance", 0.0)
        if entry["compare"] == "at_least":
            ok = ours >= threshold - tolerance
        elif entry["compare"] == "at_most":
            ok = ours <= threshold + tolerance
        elif relative:
            ok = threshold != 0 and abs(ours / threshold - 1.0) <= tolerance
        else:
            ok = abs(ours - threshold) <= tolerance
        word = verdicts.point_verdict(ok, expected_figure=entry.get("expected", False))
    return {"kind": _kind(entry["compare"]), "ours": ours, "paper": paper, "gap": gap, "verdict": word,
            "relative": relative}


def _number(value) -> str:
    if value is None:
        return "n.a."
    if value == 0 or 1e-3 <= abs(value) < 1e5:
        return f"{value:.4g}"
    return f"{value:.3g}"


def _rule(entry: dict) -> str:
    if entry["compare"] == "none":
        return "another setting: not judged"
    if entry["compare"] == "paired":
        a, b = (entry["a"], entry["b"]) if "units_b" not in entry else (
            f"{entry['a']} at `{entry['units']}`", f"{entry['b']} at `{entry['units_b']}`")
        if "transform" in entry:  # "at_least:x" as Iverson brackets: [a ≥ x] is 1 where a ≥ x, else 0
            threshold = entry["transform"].split(":", 1)[1]
            a, b = f"[{a} ≥ {threshold}]", f"[{b} ≥ {threshold}]"
        boundary, margin = entry.get("boundary", 0.0), entry.get("margin", 0.0)
        bound = _number(boundary)
        if margin:
            moved = boundary - margin if entry["side"] == "greater" else boundary + margin
            bound = f"{bound} {'-' if entry['side'] == 'greater' else '+'} {_number(margin)} = {_number(moved)}"
        where = "above" if entry["side"] == "greater" else "below"
        return f"paired: the {verdicts.CONFIDENCE:.0%} interval of {a} − {b} {where} {bound}"
    tolerance = entry.get("tolerance", 0.0)
    bound = "the figure" if "threshold" not in entry else _number(entry["threshold"])
    sign = {"at_least": "≥", "at_most": "≤"}.get(entry["compare"])
    if sign:
        rule = f"ours {sign} {bound}" + (f" {'-' if sign == '≥' else '+'} {_number(tolerance)}" if tolerance else "")
    elif entry.get("relative"):
        rule = f"within {tolerance:.0%} of {bound}"
    else:
        rule = f"within {_number(tolerance)} of {bound}"
    return ("expected figure: " if entry.get("expected") else "exact rule: ") + rule


def _p_value(p: float) -> str:
    return f"{p:.2g}" if p >= 1e-4 else "< 1e-4"


def comparison_table(study: str, figures: list[dict], metrics: dict) -> list[str]:
    """Markdown lines: the study's figures against its results (or a line saying there are none)."""
    entries = [entry for entry in figures if entry["study"] == study]
    if not entries:
        return [f"No paper figures are listed for {study} in experiments/paper_figures.toml."]
    lines = ["| what | paper/theory figure (source; setting) | ours | gap | 95% interval (n units) | exact test | "
             "verdict (rule) |",
             "|---|---|---|---|---|---|---|"]
    for entry in entries:
        row = compare_figure(entry, metrics)
        absent = "not in this run" + (f" (an entry of `{entry['config']}` runs)" if "config" in entry else "")
        gap = "n.a." if row["gap"] is None else (f"{row['gap']:+.1%}" if row["relative"] else f"{row['gap']:+.3g}")
        if row["kind"] == "paired":
            ours = absent if row["ours"] is None else f"{row['ours']:+.4g} (mean over units, `{entry['units']}`)"
            judged = row["judged"]
            if judged is None:
                interval = test = "n.a."
            else:
                interval = f"[{judged.low:+.3g}, {judged.high:+.3g}] ({verdicts.unit_count(judged.n, row['unit'])})"
                counts = (f"{judged.positive} a only, {judged.negative} b only" if judged.test == "McNemar" else
                          f"{judged.positive}+ / {judged.negative}−")
                test = f"{judged.test} p = {_p_value(judged.p_value)} ({counts})"
            verdict = row["verdict"] + (f" ({judged.withheld})" if judged is not None and judged.withheld else "")
        else:
            metric = entry["metric"] + (f" − {entry['minus']}" if "minus" in entry else "")
            ours = absent if row["ours"] is None else f"{_number(row['ours'])} (`{metric}`)"
            interval = "none (exact rule)" if row["kind"] == "point" and not entry.get("expected") else "n.a."
            test, verdict = "n.a.", row["verdict"]
        lines.append(f"| {entry['name']} | {entry['figure']} ({entry['paper']}, {entry['source']}; "
                     f"{entry['setting']}) | {ours} | {gap} | {interval} | {test} | {verdict}; {_rule(entry)} |")
    return lines


def metrics_for_the_report(metrics: dict) -> dict:
    """The metrics as the report prints them: each unit set summarised (its per-unit values stay in
    results/<study>.json, where they are exported in full)."""
    if not isinstance(metrics.get("units"), dict):
        return metrics
    summary = {name: f"{len(unit_set['ids'])} units ({unit_set['unit']}); series: {', '.join(unit_set['values'])}; "
                     "per-unit values in the study's .json beside this report"
               for name, unit_set in metrics["units"].items()}
    return {**metrics, "units": summary}


def benchmark_section(benchmarks_dir: str, references: list[dict]) -> list[str]:
    """Markdown lines on the saved benchmark outputs (none if there are none): each figure with the reference's and
    their ratio (>1: ours faster), and the ratios a benchmark measured itself against PyTorch: "<figure>_vs_torch"
    results (ours and the reference in alternating separate processes), or "speedup" details in outputs saved before
    that harness (both in one process)."""
    measured, same_run, alternating = {}, {}, {}
    for path in sorted(glob.glob(os.path.join(benchmarks_dir, "*"))):
        if not os.path.isfile(path):
            continue
        with open(path, errors="replace") as f:
            for line in f:
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(record, dict) and "benchmark" in record and isinstance(record.get("results"), dict):
                    measured[record["benchmark"]] = (record["results"], os.path.basename(path))
                    alternating[os.path.basename(path)] = {
                        key: value for key, value in record["results"].items()
                        if key.endswith("_vs_torch") and isinstance(value, (int, float))}
                elif isinstance(record, dict) and isinstance(record.get("details"), dict):
                    same_run[os.path.basename(path)] = {
                        key: value for key, value in record["details"].items()
                        if "speedup" in key and isinstance(value, (int, float))}
    if not measured:
        return []
    lines = ["## Benchmarks", "", f"Saved outputs in `{benchmarks_dir}`; references from "
             "experiments/benchmarks/README.md (PyTorch on the same 2-core CPU). Ratio > 1: ours is faster.", "",
             "| benchmark | figure | ours | reference | ratio |", "|---|---|---|---|---|"]
    for reference in references:
        results, _ = measured.get(reference["benchmark"], ({}, None))
        ours = results.get(reference["result"])
        if not isinstance(ours, (int, float)) or not ours:
            continue
        ratio = ours / reference["reference"] if reference["higher_is_better"] else reference["reference"] / ours
        lines.append(f"| {reference['benchmark']} | {reference['what']} (`{reference['result']}`) | "
                     f"{_number(ours)} | {_number(reference['reference'])} | {ratio:.2f}x |")
    for name, ratios in sorted(alternating.items()):
        if ratios:
            lines += ["", f"Measured against PyTorch in alternating separate processes ({name}): "
                      + ", ".join(f"{key} {value:.2f}x" for key, value in sorted(ratios.items()))]
    for name, ratios in sorted(same_run.items()):
        if ratios:
            lines += ["", f"Measured against PyTorch in the same process ({name}; saved before the separate-process "
                      "harness, so these ratios are less reliable): "
                      + ", ".join(f"{key} {value:.2f}x" for key, value in sorted(ratios.items()))]
    return lines + [""]


# ---------------------------------------------------------------------------------------------------- the run
def finished_results(config, workdir: str) -> dict | None:
    """results.json of a finished run of this very config in workdir, else None."""
    results_path = os.path.join(workdir, "results.json")
    if not os.path.exists(results_path) or changed_fields(config, workdir) != []:
        return None  # unfinished, or another config: run_study resumes it or refuses it, naming the fields
    with open(results_path) as f:
        return json.load(f)


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


# Minutes each study's cpu preset took in `make reproduce` on a fresh clone on the project's 2-core CPU (2026-12-08,
# 40 min of studies). They weight the ETA: the studies left, scaled by how fast this machine ran the ones done so far.
CPU_PRESET_MINUTES = {"digits": 0.3, "icl": 4.7, "smoothing": 4.9, "sde": 9.8, "omniview": 20.2}


def estimate_eta(left: list[str], run_seconds: dict[str, float], preset: str) -> str:
    """The time the studies in `left` will take, from the studies run so far ({study: seconds}).

    For the cpu preset the studies are weighted by CPU_PRESET_MINUTES (before the first one ends: the reference
    machine's time); for other presets each study left counts as the mean of those run ("after the first study"
    until one has run)."""
    if not left:
        return "0:00"
    weights = CPU_PRESET_MINUTES if preset == "cpu" else {}
    if all(study in weights for study in [*left, *run_seconds]):
        expected_s = 60 * sum(weights[study] for study in left)
        if not run_seconds:
            return f"{_duration(expected_s)} (the reference machine's time)"
        return _duration(expected_s * sum(run_seconds.values()) / (60 * sum(weights[s] for s in run_seconds)))
    if not run_seconds:
        return "after the first study"
    return _duration(sum(run_seconds.values()) / len(run_seconds) * len(left))


def _hardware() -> str:
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        model = names[0] if names else model
    except OSError:
        pass
    import jax

    devices = jax.devices()
    return (f"{os.cpu_count()} CPU cores ({model}); JAX devices: {len(devices)} x {devices[0].device_kind} "
            f"({devices[0].platform})")


def _copy_plots(study: str, workdir: str, out: str) -> list[str]:
    lines = []
    for path in sorted(glob.glob(os.path.join(workdir, "**", "*.png"), recursive=True)):
        relative = os.path.relpath(path, workdir)
        name = f"{study}_{relative.replace(os.sep, '_')}"
        shutil.copy(path, os.path.join(out, name))
        lines += [f"![{study} {relative}]({name})", ""]
    return lines or ["(this study wrote no plots)", ""]


def main(argv):
    del argv
    absl_logging.set_verbosity(absl_logging.WARNING)  # orbax logs every save at INFO
    import jax

    start = time.perf_counter()
    started_at = datetime.datetime.now(datetime.timezone.utc)
    load_at_start = os.getloadavg()
    figures = load_figures()
    preset, studies = _PRESET.value, list(_STUDIES.value)
    out = _OUT.value
    os.makedirs(out, exist_ok=True)
    plan = []
    for study in studies:
        config = load_config(f"{study}:{preset}")
        workdir = os.path.join(_WORKDIR_ROOT.value, f"{study}_{preset}")
        plan.append((study, config, workdir, finished_results(config, workdir)))

    sections, run_seconds = [], {}
    for k, (study, config, workdir, results) in enumerate(plan, start=1):
        eta = estimate_eta([name for name, _, _, done in plan[k - 1:] if done is None], run_seconds, preset)
        if results is not None:
            print(f"study {k}/{len(plan)}: {study}, ETA {eta} (finished earlier: reading {workdir}/results.json)",
                  file=sys.stderr, flush=True)
            how = f"read from an earlier run in `{workdir}`"
        else:
            print(f"study {k}/{len(plan)}: {study}, ETA {eta} (running {preset} in {workdir})", file=sys.stderr,
                  flush=True)
            study_start = time.perf_counter()
            results = run_study(config, workdir)
            run_seconds[study] = time.perf_counter() - study_start
            how = f"run now in `{workdir}`"
        with open(os.path.join(out, f"{study}.json"), "w") as f:
            json.dump(results, f, indent=2, sort_keys=True)
        # A config file beside the studies' own (rrcm) runs a study: its figures are that study's.
        table = comparison_table(config.study, figures.get("figure", []), results["metrics"])
        sections += [f"## {study} (preset `{preset}`)", "", *table, ""]
        sections += ["### Plots", "", *_copy_plots(study, workdir, out)]
        with open(os.path.join(workdir, "config.json")) as f:
            settings = json.load(f)
        sections += ["### Settings", "",
                     f"Wall time {_duration(results['wall_s'])} on {results['devices']} device(s), JAX "
                     f"{results['jax_version']}; {how}.", "",
                     "<details><summary>config</summary>", "", "```json",
                     json.dumps(settings, indent=2, sort_keys=True), "```", "", "</details>", "",
                     "<details><summary>all metrics</summary>", "", "```json",
                     json.dumps(metrics_for_the_report(results["metrics"]), indent=2, sort_keys=True), "```", "",
                     "</details>", ""]

    benchmarks_dir = _BENCHMARKS.value or os.path.join(out, "benchmarks")
    benchmarks = benchmark_section(benchmarks_dir, figures.get("benchmark", []))
    total = time.perf_counter() - start
    header = [
        "# robust_jax reproduction report", "",
        f"- date: {started_at:%Y-%m-%d %H:%M} UTC",
        f"- hardware: {_hardware()}",
        f"- load average at the start / end: {load_at_start[0]:.1f} / {os.getloadavg()[0]:.1f}",
        f"- JAX {jax.__version__}, Python {platform.python_version()}",
        f"- preset `{preset}`; studies: {', '.join(studies)}",
        f"- total time {_duration(total)} (studies run now: {len(run_seconds)}; read from earlier runs: "
        f"{len(plan) - len(run_seconds)})",
        "",
        "Each study's table compares its results.json with the papers' headline figures "
        "(experiments/paper_figures.toml). A claim about a difference is judged on paired units (data sets and "
        "seeds, held-out objects, certified test images): \"ours\" is the mean over the units of a − b, the interval "
        f"its {verdicts.CONFIDENCE:.0%} percentile bootstrap over the units ({verdicts.RESAMPLES:,} resamples, seed "
        f"{verdicts.BOOTSTRAP_SEED}), n the number of units, and the exact test a two-sided test of \"a and b do not "
        "differ\" (the sign test; McNemar's for right/wrong outcomes). The verdict comes from the interval: "
        "**holds** when it lies strictly on the claimed side of the boundary in the rule, **not shown** when it "
        f"contains the boundary (or there are fewer than {verdicts.MIN_UNITS} units, or every unit has the same "
        "difference), **contradicted** when it lies "
        "on the other side; **n.a.** where the figure is from another setting (shown for scale) or the run lacks "
        "the entry. Closed forms keep a point rule on one number, labelled \"holds (exact rule)\" / \"fails (exact "
        "rule)\"; an expected figure that is no paper's claim reads \"met (expected figure)\" / \"missed (expected "
        "figure)\".", "",
    ]
    with open(os.path.join(out, "REPORT.md"), "w") as f:
        f.write("\n".join(header + sections + benchmarks) + "\n")
    print(f"wrote {os.path.join(out, 'REPORT.md')} ({_duration(total)})", file=sys.stderr)


if __name__ == "__main__":
    app.run(main)
