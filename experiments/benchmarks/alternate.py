"""Ours against a reference, each side in its own process, alternating: the only comparison these benchmarks report.

Two runtimes in one process slow each other's thread pools (XLA's and PyTorch's both take every core), so a ratio
measured with both in one process says little. A benchmark with a reference therefore accepts `--side=ours` or
`--side=reference` (time one side only and print `{"side": ..., "figures": {name: value}}` as its last line), and with
`--with_torch_reference` calls `compare`, which starts

    python -m <module> <args> --side=ours,  python -m <module> <args> --side=reference,  ... (`pairs` times)

one process after the other, so load changes during the run affect both sides alike, and reports per figure the
median of each side, every run, the ratio ours / reference (for figures where larger is better; "seconds" figures are
inverted so a ratio above 1 always means ours is faster) and the load average before and after.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys

SIDES = ("ours", "reference")


def add_side_flags(parser, default_pairs: int = 3):
    """--side (one side in this process) and --pairs (alternations for --with_torch_reference)."""
    parser.add_argument("--side", choices=SIDES, default=None,
                        help="time one side only, in this process (what --with_torch_reference starts)")
    parser.add_argument("--pairs", type=int, default=default_pairs,
                        help="ours / reference process pairs for --with_torch_reference (at least 1)")


def print_side(side: str, figures: dict):
    """The last line a one-side process prints, read back by `compare`."""
    print(json.dumps({"side": side, "figures": figures}), flush=True)


def run_side_if_asked(args, ours, reference) -> bool:
    """With --side, time that side in this process (ours(args) or reference(args)), print its figures and return
    True; else return False."""
    if args.side is None:
        return False
    print_side(args.side, ours(args) if args.side == "ours" else reference(args))
    return True


def ours_with_ratios(comparison: dict) -> dict:
    """{figure: our median} plus {figure + "_vs_torch": ratio} for the figures both sides report."""
    results = {name: figure["ours"] for name, figure in comparison["figures"].items()}
    results.update({f"{name}_vs_torch": figure["ratio"] for name, figure in comparison["figures"].items()
                    if "ratio" in figure})
    return results


def _last_json(stdout: str, command: list[str]) -> dict:
    for line in reversed(stdout.strip().splitlines()):
        if line.startswith("{"):
            value = json.loads(line)
            if "side" in value:
                return value["figures"]
    raise RuntimeError(f"{' '.join(command)} printed no {{'side': ...}} line; its output ended with:\n"
                       + "\n".join(stdout.strip().splitlines()[-20:]))


def run_side(module: str, args: list[str], side: str) -> dict:
    """One side's figures, timed in a fresh `python -m module` process (its stderr passes through)."""
    command = [sys.executable, "-m", module, *args, f"--side={side}"]
    result = subprocess.run(command, stdout=subprocess.PIPE, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} exited with {result.returncode}:\n{result.stdout[-4000:]}")
    return _last_json(result.stdout, command)


def ratio(name: str, ours: float, reference: float) -> float:
    """ours / reference, inverted for times (names ending in "seconds" or "_s" or containing "_s_per_", but not
    rates such as "samples_per_s"), so that above 1 means ours is faster."""
    rate = name.endswith("_per_s") or name.endswith("_per_cpu_s")
    lower_is_better = not rate and (name.endswith("seconds") or name.endswith("_s") or "_s_per_" in name)
    return reference / ours if lower_is_better else ours / reference


def summarise(runs: dict[str, list[dict]]) -> dict:
    """{figure: {"ours": median, "ours_runs", and where the reference reports it too: "reference", "reference_runs",
    "ratio"}} over the numeric figures of our side."""
    def numeric(value):
        return isinstance(value, (int, float)) and not isinstance(value, bool)

    summary = {}
    for name, value in runs["ours"][0].items():
        if not numeric(value):
            continue
        ours = [r[name] for r in runs["ours"]]
        summary[name] = {"ours": statistics.median(ours), "ours_runs": ours}
        if all(numeric(r.get(name)) for r in runs["reference"]):
            reference = [r[name] for r in runs["reference"]]
            summary[name].update(reference=statistics.median(reference), reference_runs=reference,
                                 ratio=ratio(name, summary[name]["ours"], statistics.median(reference)))
    return summary


def compare(module: str, args: list[str], pairs: int, log=print) -> dict:
    """Alternates `pairs` ours / reference processes; returns summarise() plus the load averages and the pairs."""
    if pairs < 1:
        raise ValueError(f"--pairs={pairs} must be at least 1")
    load_before = os.getloadavg()
    runs = {side: [] for side in SIDES}
    for pair in range(pairs):
        for side in SIDES:
            runs[side].append(run_side(module, args, side))
            log(f"pair {pair + 1}/{pairs} {side:9s} " + ", ".join(f"{k} {v:.4g}" for k, v in runs[side][-1].items()
                                                                   if isinstance(v, (int, float)))
                + f"  (load {os.getloadavg()[0]:.1f})")
    summary = summarise(runs)
    for name, figure in summary.items():
        if "ratio" not in figure:
            log(f"{name}: ours {figure['ours']:.4g} (median of {pairs} processes)")
            continue
        log(f"{name}: ours {figure['ours']:.4g}, reference {figure['reference']:.4g}: {figure['ratio']:.2f}x "
            f"(medians of {pairs} processes each)")
    return {"figures": summary, "pairs": pairs, "load_average_before": load_before,
            "load_average_after": os.getloadavg()}
