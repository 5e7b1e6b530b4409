"""Every benchmark and every paper-scale training step in one command, with one dated results row per figure.

    python -m experiments.benchmarks.suite [--smoke] [--only NAMES] [--no_record] [--record_to PATH]

What runs (our side only, in this process; the PyTorch comparisons are each benchmark's `--with_torch_reference`):
  1. the benchmarks, by calling their own functions: icl_throughput, certify_throughput, clip_throughput,
     sde_epoch_time, omniview_min_step, rrcm_inference_cost. Sizes (SIZES below): on CPU each benchmark's defaults
     (the whole CPU run, paper steps and the trained-network check included: 20 min 14 s on the project's idle
     2-core machine, 2026-11-30: the trained-network check 6.5 min, certify 4 min, CLIP 2.5 min); on an accelerator
     larger batches and shorter timing windows, chosen so that the whole suite, compilation included, should take
     under 8 minutes on one GPU;
  2. paper-scale training steps (experiments/benchmarks/paper_steps.py): every training stage of icl:paper,
     smoothing:cifar10, rrcm:cifar10, sde:paper and omniview:paper built by the study's own functions on random
     inputs of the right shapes, `--paper_steps` steps (50, or as many as fit in 8 s) timed after compilation, and
     the full run's projected training time (total steps / steps per second). On CPU these steps are slow: 2 timed
     steps per stage, and a stage whose step XLA estimates above `--cpu_max_step_tflop` (0.5 TFLOP) is skipped with
     a message (rRCM's ViT-B/4 pretraining step is 329 TFLOP: hours on this CPU);
  3. on an accelerator, certification in float32 and bfloat16 (certify_throughput's counting step, `--dtype`), each
     with the fraction of the device's peak FLOP/s (XLA's FLOP count of one counting step; PEAK_TFLOPS), and the
     agreement of bfloat16 with float32 predictions on noisy test digits through a ResNet-110 trained briefly on
     digits at sigma 0.25 (certify_throughput.trained_digits_resnet). On CPU: float32 certification only, and the
     agreement part through a ResNet-110 trained 100 steps at batch 32, where it also checks the counting step's
     single-threaded shares against one program (certify_throughput.stream_agreement).
`--smoke` runs all of it (3. included) on tiny sizes: each config's 'tiny' preset, ResNet-8, CLIP 'tiny', one or
two steps. It is bound by XLA compiling some 40 small programs: about 8 minutes on the project's 2-core CPU under a
load average of 3-6 (measured in four parts), less on an idle one. It records nothing unless `--record_to` is given.

Results: one row per figure appended to the "Suite results" table of experiments/benchmarks/README.md (`--no_record`:
none; `--record_to PATH`: that file, its table made if missing): date and time (UTC), device
(jax.devices()[0].device_kind and platform), commit, benchmark, figure, value, sizes (smoke / cpu defaults /
accelerator) and the load average before -> after, written as each part finishes. Progress goes to stderr
("[suite k/N] name"); the last stdout line is {"benchmark": "suite", "results": {"<benchmark>/<figure>": value}}.
A part that fails is reported with its traceback and the others still run; the exit status is then 1.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import subprocess
import sys
import time
import traceback

BENCHMARKS = ("icl_throughput", "certify_throughput", "clip_throughput", "sde_epoch_time", "omniview_min_step",
              "rrcm_inference_cost")
README = os.path.join(os.path.dirname(os.path.abspath(__file__)), "README.md")
TABLE_HEADER = "| date (UTC) | device | commit | benchmark | figure | value | sizes | load average |"
TABLE_SEPARATOR = "|---|---|---|---|---|---|---|---|"

# Arguments of each benchmark per mode (`parse_args` arguments for those that have a command line, keywords for the
# others). "cpu" is every benchmark's default.
SIZES = {
    "smoke": {
        "icl_throughput": ["--sizes=tiny", "--seconds=0", "--repeats=1"],
        "certify_throughput": ["--depth=8", "--batch_size=16", "--repeats=1", "--images=0"],
        "clip_throughput": ["--model=tiny", "--forward_batch=4", "--train_batch=4", "--seconds=0", "--repeats=1"],
        "sde_epoch_time": {"models": ["lsde"], "epochs": 2, "seeds": [0]},
        "omniview_min_step": {"preset": "tiny", "batch": 4, "multiview": 3, "seconds": 0.0, "repeats": 1},
        "rrcm_inference_cost": {"preset": "tiny", "batch": 16, "repeats": 1},
        "paper_steps": {"presets": "SMOKE_PRESETS", "steps": 2, "max_seconds": 1.0},
        "precision": {"depth": 8, "train_steps": 20, "train_batch": 32, "images": 4, "samples_per_image": 16},
    },
    "cpu": {
        "icl_throughput": [],
        "certify_throughput": [],
        "clip_throughput": [],
        "sde_epoch_time": {"models": ["lsde", "lnsde", "gsde"], "epochs": 20, "seeds": [0]},
        "omniview_min_step": {"preset": "paper", "batch": 16, "multiview": 11, "seconds": 20.0, "repeats": 3},
        "rrcm_inference_cost": {"preset": "cpu", "batch": 1000, "repeats": 15},
        "paper_steps": {"presets": "PRESETS", "steps": 2, "max_seconds": 30.0},
        "precision": {"depth": 110, "train_steps": 100, "train_batch": 32, "images": 20, "samples_per_image": 400},
    },
    "accelerator": {
        "icl_throughput": ["--sizes=tiny,standard", "--seconds=2", "--repeats=3"],
        "certify_throughput": ["--batch_size=2000", "--repeats=20", "--images=3"],
        "clip_throughput": ["--forward_batch=256", "--train_batch=128", "--seconds=2", "--repeats=3"],
        "sde_epoch_time": {"models": ["lsde", "lnsde", "gsde"], "epochs": 20, "seeds": [0]},
        "omniview_min_step": {"preset": "paper", "batch": 128, "multiview": 85, "seconds": 2.0, "repeats": 3},
        "rrcm_inference_cost": {"preset": "cifar10", "batch": 400, "repeats": 10},
        "paper_steps": {"presets": "PRESETS", "steps": 50, "max_seconds": 8.0},
        "precision": {"depth": 110, "train_steps": 300, "train_batch": 128, "images": 50, "samples_per_image": 400},
    },
}
SIZE_LABELS = {"smoke": "smoke", "cpu": "cpu defaults", "accelerator": "accelerator"}

# Dense peak FLOP/s (TFLOP/s, no structured sparsity) by a substring of jax's device_kind, first match wins. Sources:
# NVIDIA's datasheets (H100 SXM and H200 SXM: FP32 67, TF32 tensor 494.5, BF16 tensor 989.5; H100 PCIe: FP32 51,
# TF32 378, BF16 756; A100: FP32 19.5, TF32 156, BF16 312) and Google Cloud's TPU pages (BF16 per chip: v4 275,
# v5e 197, v5p 459, v6e 918). XLA may run float32 convolutions and matmuls on TF32 tensor cores (its default
# precision on these GPUs), so a float32 fraction of the FP32 peak can come out above 1; the TF32 figure is printed too.
PEAK_TFLOPS = (
    ("H200", {"float32": 67.0, "tf32": 494.5, "bfloat16": 989.5}),
    ("H100 PCIe", {"float32": 51.0, "tf32": 378.0, "bfloat16": 756.0}),
    ("H100", {"float32": 67.0, "tf32": 494.5, "bfloat16": 989.5}),
    ("A100", {"float32": 19.5, "tf32": 156.0, "bfloat16": 312.0}),
    ("TPU v4", {"bfloat16": 275.0}),
    ("TPU v5 lite", {"bfloat16": 197.0}),
    ("TPU v5", {"bfloat16": 459.0}),
    ("TPU v6 lite", {"bfloat16": 918.0}),
)


def peak_flops(device_kind: str, precision: str) -> float | None:
    """The device's dense peak FLOP/s for `precision` ('float32', 'tf32', 'bfloat16'), or None if not in PEAK_TFLOPS."""
    for name, peaks in PEAK_TFLOPS:
        if name.lower() in device_kind.lower():
            return peaks[precision] * 1e12 if precision in peaks else None
    return None


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------------------ the parts


def run_icl(mode: str) -> dict:
    from experiments.benchmarks import icl_throughput

    return icl_throughput.ours(icl_throughput.parse_args(SIZES[mode]["icl_throughput"]))


def run_certify(mode: str) -> dict:
    """float32 (and on an accelerator or --smoke also bfloat16): samples/s, CERTIFY s/image, and where the device's
    peak is known the fraction of it."""
    import jax

    from experiments.benchmarks import certify_throughput

    dtypes = ("float32",) if mode == "cpu" else ("float32", "bfloat16")
    device_kind = jax.devices()[0].device_kind
    figures, network = {}, None
    for dtype in dtypes:
        args = certify_throughput.parse_args(SIZES[mode]["certify_throughput"] + [f"--dtype={dtype}"])
        measured = certify_throughput.ours(args)
        figures[f"{dtype}_samples_per_s"] = measured["samples_per_s"]
        if "certify_s_per_image" in measured:
            figures[f"{dtype}_certify_s_per_image"] = measured["certify_s_per_image"]
        if "stream_agreement_with_one_program" in measured:
            figures[f"{dtype}_stream_agreement"] = measured["stream_agreement_with_one_program"]
        if mode == "cpu":
            continue
        network = network or certify_throughput.random_resnet(args.depth)  # the network `ours` timed (same seed)
        model, variables = network
        flops_per_batch = certify_throughput.counting_flops(model, variables, dtype, args.batch_size)
        achieved = flops_per_batch * measured["samples_per_s"] / args.batch_size
        figures[f"{dtype}_tflop_per_s"] = achieved / 1e12
        peak = peak_flops(device_kind, dtype)
        line = (f"certify {dtype}: {measured['samples_per_s']:.1f} samples/s, "
                f"{flops_per_batch / args.batch_size / 1e6:.1f} MFLOP per sample (XLA), {achieved / 1e12:.2f} TFLOP/s")
        if peak:
            figures[f"{dtype}_fraction_of_peak"] = achieved / peak
            line += f" = {achieved / peak:.3f} of {device_kind}'s {peak / 1e12:g} TFLOP/s {dtype} peak"
            tf32 = peak_flops(device_kind, "tf32") if dtype == "float32" else None
            if tf32:
                line += f" ({achieved / tf32:.3f} of its TF32 tensor peak, {tf32 / 1e12:g})"
        else:
            line += f" (no peak FLOP/s known for {device_kind!r})"
        print(line, flush=True)
    if "bfloat16_samples_per_s" in figures:
        figures["bfloat16_over_float32_samples"] = figures["bfloat16_samples_per_s"] / figures["float32_samples_per_s"]
    return figures


def run_precision(mode: str) -> dict:
    """bfloat16 against float32 predictions (fast_inference) on noisy test digits, through a trained ResNet; on CPU
    also the counting step's single-threaded shares against one program (float32)."""
    import jax

    from experiments.benchmarks import certify_throughput
    from robust_jax.models import resnet

    sizes = SIZES[mode]["precision"]
    model, variables, images, _, accuracy = certify_throughput.trained_digits_resnet(
        sizes["depth"], sizes["train_steps"], sizes["train_batch"])
    agreement = certify_throughput.prediction_agreement(
        model, variables, "bfloat16", images=images[:sizes["images"]], batch_size=sizes["samples_per_image"])
    figures = {"trained_noisy_test_accuracy": accuracy, "trained_bfloat16_agreement_with_float32": agreement}
    if jax.default_backend() == "cpu":  # the counting step's single-threaded shares against one program
        apply_fn, params = resnet.fast_inference(model, variables)
        figures["trained_stream_agreement_with_one_program"] = certify_throughput.stream_agreement(
            apply_fn, params, images[:sizes["images"]], sizes["samples_per_image"])
    return figures


def run_clip(mode: str) -> dict:
    from experiments.benchmarks import clip_throughput

    return clip_throughput.ours(clip_throughput.parse_args(SIZES[mode]["clip_throughput"]))


def run_sde(mode: str) -> dict:
    from experiments.benchmarks import sde_epoch_time

    sizes = SIZES[mode]["sde_epoch_time"]
    return sde_epoch_time.measure(sizes["models"], sizes["epochs"], sizes["seeds"])


def run_omniview(mode: str) -> dict:
    from experiments.benchmarks import omniview_min_step

    sizes = dict(SIZES[mode]["omniview_min_step"])
    rate = omniview_min_step.min_step_rate(sizes.pop("seconds"), sizes.pop("repeats"), "ovt", **sizes)
    print(f"omniview min step (ovt, {sizes['preset']} base, batch {sizes['batch']}): {rate:.2f} images/s", flush=True)
    return {"min_step_images_per_s": rate}


def run_rrcm(mode: str) -> dict:
    from experiments.benchmarks import rrcm_inference_cost

    return rrcm_inference_cost.measure(**SIZES[mode]["rrcm_inference_cost"])


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:.3g} h" if seconds >= 360 else f"{seconds:.3g} s"


class PartFailed(Exception):
    """Some of a part's work failed; `figures` holds what the rest measured."""

    def __init__(self, message: str, figures: dict):
        super().__init__(message)
        self.figures = figures


def run_paper_preset(preset: str, mode: str, args, timed: dict) -> dict:
    """Times every stage of `preset` (or reuses the rate of a stage with the same step timed earlier, in `timed`);
    {"<stage>_steps_per_s", "<stage>_projected_h"} and, when every stage was timed, "total_projected_h". A stage that
    fails (a step too large for the device's memory, say) is reported and the others still run; PartFailed then
    carries their figures."""
    import jax

    from experiments.benchmarks import paper_steps
    from experiments.benchmarks.train_step import time_steps

    sizes = SIZES[mode]["paper_steps"]
    steps = args.paper_steps or sizes["steps"]
    stages = paper_steps.preset_stages(preset)
    figures, total_seconds, skipped, failed = {}, 0.0, [], []
    on_cpu = jax.default_backend() == "cpu"
    for index, stage in enumerate(stages, 1):
        log(f"    stage {index}/{len(stages)}: {preset} {stage.name} ({stage.total_steps:,} steps in the full run)")
        if stage.same_step_as and stage.same_step_as in timed:
            rate, source = timed[stage.same_step_as]
            print(f"{preset} {stage.name}: the same step as {source}: {rate:.4g} steps/s", flush=True)
        else:
            try:
                core_step = stage.build()
                flops = core_step.estimated_flops()
                if on_cpu and mode != "smoke" and flops and flops > args.cpu_max_step_tflop * 1e12:
                    skipped.append(stage.name)
                    print(f"{preset} {stage.name}: skipped on CPU: XLA estimates {flops / 1e12:.2f} TFLOP per step "
                          f"(limit --cpu_max_step_tflop={args.cpu_max_step_tflop:g})", flush=True)
                    continue
                measured = time_steps(core_step, steps, sizes["max_seconds"])
            except Exception as error:  # noqa: BLE001 - e.g. out of device memory: report it, time the others
                failed.append(stage.name)
                log(f"{preset} {stage.name} FAILED:\n{traceback.format_exc()}")
                print(f"{preset} {stage.name}: FAILED ({type(error).__name__}: {str(error).splitlines()[0][:300]})",
                      flush=True)
                continue
            finally:
                core_step = None  # frees the stage's device buffers before the next one is built
            rate = measured["steps_per_s"]
            if stage.same_step_as:
                timed[stage.same_step_as] = (rate, f"{preset} {stage.name}")
            estimate = f", ~{flops / 1e9:.3g} GFLOP per step (XLA)" if flops else ""
            print(f"{preset} {stage.name}: {rate:.4g} steps/s over {measured['timed_steps']} steps after "
                  f"{measured['compile_and_first_step_s']:.1f} s compiling + first step{estimate}", flush=True)
        projected = stage.total_steps / rate
        total_seconds += projected
        figures[f"{stage.name}_steps_per_s"] = rate
        figures[f"{stage.name}_projected_h"] = projected / 3600
        print(f"    projected: {stage.total_steps:,} steps -> {_hours(projected)}"
              + (f" ({stage.note})" if stage.note else ""), flush=True)
    if skipped or failed:
        timed_part = f"projected training time of the timed stages {_hours(total_seconds)}" if figures else \
            "no stage timed"
        print(f"{preset}: {timed_part}; not timed: {', '.join(skipped + failed)}", flush=True)
    else:
        figures["total_projected_h"] = total_seconds / 3600
        print(f"{preset}: projected training time {_hours(total_seconds)} (training steps only: no evaluation or "
              f"certification)", flush=True)
    if failed:
        raise PartFailed(f"{preset}: stages {failed} failed", figures)
    return figures


# ------------------------------------------------------------------------------------------------------ recording


def device_name() -> str:
    import jax

    device = jax.devices()[0]
    return f"{device.device_kind} ({device.platform})"


def commit() -> str:
    """The checkout's short commit, '+' if it has uncommitted changes; 'unknown' outside git."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+" if dirty else "")


def format_row(date: str, device: str, revision: str, benchmark: str, figure: str, value: float, sizes: str,
               load: tuple[float, float]) -> str:
    cells = [date, device, revision, benchmark, figure, f"{value:.4g}", sizes, f"{load[0]:.1f} → {load[1]:.1f}"]
    return "| " + " | ".join(cell.replace("|", "/") for cell in cells) + " |"


def record(path: str, rows: list[str]) -> None:
    """Appends rows to the table under TABLE_HEADER in `path` (after its last row), or adds the table at the end."""
    lines = open(path).read().splitlines() if os.path.exists(path) else []
    if TABLE_HEADER in lines:
        end = lines.index(TABLE_HEADER) + 1
        while end < len(lines) and lines[end].startswith("|"):
            end += 1
        lines[end:end] = rows
    else:
        lines += ([""] if lines else []) + [TABLE_HEADER, TABLE_SEPARATOR] + rows
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


# ----------------------------------------------------------------------------------------------------------- main


def parts(mode: str) -> list[tuple[str, object]]:
    """(name, run(mode) -> figures) in order; the paper presets as 'paper_steps <study>:<preset>'."""
    from experiments.benchmarks import paper_steps

    runners = {"icl_throughput": run_icl, "certify_throughput": run_certify, "clip_throughput": run_clip,
               "sde_epoch_time": run_sde, "omniview_min_step": run_omniview, "rrcm_inference_cost": run_rrcm}
    listed = [(name, runners[name]) for name in BENCHMARKS]
    presets = getattr(paper_steps, SIZES[mode]["paper_steps"]["presets"])
    listed += [(f"paper_steps {preset}", preset) for preset in presets]
    if "precision" in SIZES[mode]:
        listed.append(("certify_precision", run_precision))
    return listed


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="every part at tiny sizes (a check that all of it runs)")
    parser.add_argument("--only", default="",
                        help="comma-separated names to run (benchmark names, 'paper_steps' or one preset such as "
                             "'paper_steps rrcm:cifar10', 'certify_precision'); default everything")
    parser.add_argument("--no_record", action="store_true", help="do not write result rows anywhere")
    parser.add_argument("--record_to", default=None, help=f"write the rows to this file instead of {README}")
    parser.add_argument("--paper_steps", type=int, default=0,
                        help="steps timed per paper-scale stage after compiling (default: 50; 2 on CPU)")
    parser.add_argument("--cpu_max_step_tflop", type=float, default=0.5,
                        help="on CPU, skip paper-scale stages whose step XLA estimates above this many TFLOP")
    args = parser.parse_args(argv)
    if args.paper_steps < 0 or args.cpu_max_step_tflop <= 0:
        parser.error("--paper_steps must be >= 0 and --cpu_max_step_tflop > 0")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    import jax

    mode = "smoke" if args.smoke else ("cpu" if jax.default_backend() == "cpu" else "accelerator")
    listed = parts(mode)
    if args.only:
        wanted = [name.strip() for name in args.only.split(",") if name.strip()]
        unknown = [w for w in wanted if not any(name == w or name.startswith(w + " ") for name, _ in listed)]
        if unknown:
            log(f"--only: {unknown} not among {[name for name, _ in listed]}")
            raise SystemExit(2)
        listed = [(name, run) for name, run in listed
                  if any(name == w or name.startswith(w + " ") for w in wanted)]
    record_path = None if args.no_record else (args.record_to or (None if args.smoke else README))
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M")
    device, revision = device_name(), commit()
    log(f"[suite] {len(listed)} parts on {device}, sizes: {SIZE_LABELS[mode]}, commit {revision}"
        + (f"; rows to {record_path}" if record_path else "; recording nothing"))
    results, failed, timed, recorded = {}, [], {}, 0
    suite_start = time.perf_counter()
    for index, (name, run) in enumerate(listed, 1):
        log(f"[suite {index}/{len(listed)}] {name} (elapsed {time.perf_counter() - suite_start:.0f} s)")
        load_before = os.getloadavg()[0]
        try:
            if isinstance(run, str):
                figures = run_paper_preset(run, mode, args, timed)
            else:
                figures = run(mode)
        except PartFailed as error:
            failed.append(name)
            log(f"[suite {index}/{len(listed)}] {name} FAILED in part: {error}")
            figures = error.figures
        except Exception:  # noqa: BLE001 - one failing part must not cost the others' figures
            failed.append(name)
            log(f"[suite {index}/{len(listed)}] {name} FAILED:\n{traceback.format_exc()}")
            continue
        load = (load_before, os.getloadavg()[0])
        rows = []
        for figure, value in figures.items():
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
                log(f"[suite] {name} {figure} = {value!r} is not a finite number: not recorded")
                continue
            results[f"{name}/{figure}"] = float(value)
            rows.append(format_row(date, device, revision, name, figure, float(value), SIZE_LABELS[mode], load))
        if record_path and rows:
            record(record_path, rows)  # as each part ends: an interrupted suite keeps what it measured
            recorded += len(rows)
    elapsed = time.perf_counter() - suite_start
    log(f"[suite] done in {elapsed:.0f} s: {len(results)} figures" + (f"; FAILED: {', '.join(failed)}" if failed
                                                                      else "")
        + (f"; {recorded} rows appended to {record_path}" if record_path else ""))
    print(json.dumps({"details": {"device": device, "sizes": SIZE_LABELS[mode], "commit": revision,
                                  "seconds": round(elapsed, 1), "failed": failed}}))
    print(json.dumps({"benchmark": "suite", "results": results}))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
