"""Runs every study's default preset and writes results/REPORT.md (with the studies' plots beside it).

  python -m experiments.reproduce [--preset=cpu] [--studies=digits,...] [--workdir_root=workdirs] [--out=results]

Each study runs in its own workdir, so an interrupted reproduction resumes where it stopped.
"""

from __future__ import annotations

import json
import os
import shutil
import sys

from absl import app, flags
from absl import logging as absl_logging

from robust_jax.core.config_loading import load_config
from robust_jax.core.run import STUDIES, run_study

_PRESET = flags.DEFINE_string("preset", "cpu", "Preset to run for every study")
_STUDIES = flags.DEFINE_list("studies", list(STUDIES), "Studies to run")
_WORKDIR_ROOT = flags.DEFINE_string("workdir_root", "workdirs", "Parent of the per-study workdirs")
_OUT = flags.DEFINE_string("out", "results", "Where REPORT.md and the plots go")


def _flatten(metrics: dict, prefix: str = "") -> list[tuple[str, object]]:
    rows = []
    for name, value in metrics.items():
        if isinstance(value, dict):
            rows += _flatten(value, f"{prefix}{name}.")
        else:
            rows.append((f"{prefix}{name}", value))
    return rows


def main(argv):
    del argv
    absl_logging.set_verbosity(absl_logging.WARNING)  # orbax logs every save at INFO
    os.makedirs(_OUT.value, exist_ok=True)
    sections = ["# robust_jax reproduction report", ""]
    for study in _STUDIES.value:
        config = load_config(f"{study}:{_PRESET.value}")
        workdir = os.path.join(_WORKDIR_ROOT.value, f"{study}_{_PRESET.value}")
        print(f"== {study} ({_PRESET.value}) -> {workdir}", file=sys.stderr, flush=True)
        results = run_study(config, workdir)
        sections += [f"## {study} (preset `{_PRESET.value}`)", "", "| metric | value |", "|---|---|"]
        for name, value in _flatten(results["metrics"]):
            sections.append(f"| {name} | {value:.4g} |" if isinstance(value, float) else f"| {name} | {value} |")
        sections += ["", f"wall time {results['wall_s']:.1f} s on {results['devices']} device(s), "
                     f"JAX {results['jax_version']}", ""]
        for name in sorted(os.listdir(workdir)):
            if name.endswith(".png"):
                shutil.copy(os.path.join(workdir, name), os.path.join(_OUT.value, f"{study}_{name}"))
                sections += [f"![{study} {name}]({study}_{name})", ""]
        with open(os.path.join(_OUT.value, f"{study}.json"), "w") as f:
            json.dump(results, f, indent=2, sort_keys=True)
    with open(os.path.join(_OUT.value, "REPORT.md"), "w") as f:
        f.write("\n".join(sections) + "\n")
    print(f"wrote {os.path.join(_OUT.value, 'REPORT.md')}", file=sys.stderr)


if __name__ == "__main__":
    app.run(main)
