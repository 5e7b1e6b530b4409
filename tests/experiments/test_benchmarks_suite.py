"""experiments/benchmarks/suite.py: the smoke run of every part, its result rows, the table they go to, the peaks."""

import json
import math
import os
import re
import subprocess
import sys

import pytest

from experiments.benchmarks import paper_steps, suite

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _table_rows(text: str) -> list[list[str]]:
    lines = text.splitlines()
    start = lines.index(suite.TABLE_HEADER) + 2
    rows = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
    return rows


# The whole --smoke run compiles about 40 small programs (about 8 minutes on 2 cores); the suite runs these parts of
# it, one of each kind: a benchmark with a command line, one called with keywords, a paper preset's stages, and the
# precision check on a briefly trained ResNet.
SMOKE_PARTS = ("certify_throughput", "rrcm_inference_cost", "paper_steps rrcm:tiny", "certify_precision")


@pytest.mark.slow
def test_smoke_suite_runs_its_parts_and_records_well_formed_rows(tmp_path):
    record = tmp_path / "results.md"
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    done = subprocess.run([sys.executable, "-m", "experiments.benchmarks.suite", "--smoke", f"--record_to={record}",
                           "--only=" + ",".join(SMOKE_PARTS)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stderr[-6000:]
    assert "[suite 1/4] certify_throughput" in done.stderr and "[suite 4/4] certify_precision" in done.stderr
    check_smoke_rows(record.read_text(), json.loads(done.stdout.strip().splitlines()[-1])["results"], SMOKE_PARTS)


def check_smoke_rows(table_text: str, results: dict, parts=None) -> None:
    """The rows of a --smoke run of `parts` (default every part): one per figure of its last JSON line, each well
    formed with a positive finite value; every part present; projections consistent with the stages' total steps."""
    everything = (*suite.BENCHMARKS, *(f"paper_steps {p}" for p in paper_steps.SMOKE_PRESETS), "certify_precision")
    parts = set(everything if parts is None else parts)
    rows = _table_rows(table_text)
    assert len(rows) == len(results) > 0
    for date, device, commit, benchmark, figure, value, sizes, load in rows:
        assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d", date)
        assert device == "cpu (cpu)" and commit and sizes == "smoke"
        assert re.fullmatch(r"\d+\.\d → \d+\.\d", load)
        number = float(value)
        assert math.isfinite(number) and number > 0, (benchmark, figure, value)
        assert results[f"{benchmark}/{figure}"] == pytest.approx(number, rel=1e-3)  # %.4g in the table
    assert {row[3] for row in rows} == parts
    for name in ("icl_throughput/tiny_steps_per_s", "clip_throughput/train_images_per_s",
                 "certify_throughput/float32_samples_per_s", "certify_throughput/bfloat16_samples_per_s",
                 "certify_throughput/float32_tflop_per_s", "sde_epoch_time/lsde_s_per_epoch",
                 "omniview_min_step/min_step_images_per_s", "rrcm_inference_cost/rrcm_mflops"):
        if name.split("/")[0] in parts:
            assert name in results
    if "certify_throughput" in parts:
        # FLOP/s = XLA's FLOPs per batch x batches per second: the same network's FLOPs per sample in both dtypes
        # (bfloat16 adds a few conversions: 0.05% here)
        flops_per_sample = {dtype: results[f"certify_throughput/{dtype}_tflop_per_s"] * 1e12
                            / results[f"certify_throughput/{dtype}_samples_per_s"]
                            for dtype in ("float32", "bfloat16")}
        assert flops_per_sample["float32"] == pytest.approx(flops_per_sample["bfloat16"], rel=1e-2)
        assert 1e6 < flops_per_sample["float32"] < 1e9  # ResNet-8 on 32x32x3: tens of MFLOP
    # The projection is the preset's total steps over the measured rate, stage by stage, and the total their sum.
    for preset in [p for p in ("icl:tiny", "rrcm:tiny") if f"paper_steps {p}" in parts]:
        prefix = f"paper_steps {preset}/"
        stages = paper_steps.preset_stages(preset)
        for stage in stages:
            rate, hours = results[prefix + f"{stage.name}_steps_per_s"], results[prefix + f"{stage.name}_projected_h"]
            assert hours * 3600 == pytest.approx(stage.total_steps / rate, rel=1e-9)
        assert results[prefix + "total_projected_h"] == pytest.approx(
            sum(results[prefix + f"{stage.name}_projected_h"] for stage in stages), rel=1e-9)
    # rrcm:tiny's gaussian step is its denoised classifier's: timed once, the rate reused
    if "paper_steps rrcm:tiny" in parts:
        assert results["paper_steps rrcm:tiny/denoised_classifier_steps_per_s"] == \
            results["paper_steps rrcm:tiny/gaussian_steps_per_s"]
        # the ablation fine-tunes with rRCM's step: timed once
        assert results["paper_steps rrcm:tiny/rrcm_scratch_finetune_steps_per_s"] == \
            results["paper_steps rrcm:tiny/rrcm_finetune_steps_per_s"]
    if "certify_precision" in parts:
        # the counting step's single-threaded shares compute what one program computes: every prediction equal
        assert results["certify_precision/trained_stream_agreement_with_one_program"] == 1.0
        assert 0.9 <= results["certify_precision/trained_bfloat16_agreement_with_float32"] <= 1


def test_record_appends_rows_to_the_end_of_the_suite_table(tmp_path):
    path = tmp_path / "README.md"
    old_row = "| 2026-01-01 00:00 | cpu (cpu) | abc | x | y | 1 | smoke | 0.1 → 0.2 |"
    path.write_text(f"# Benchmarks\n\n| other | table |\n|---|---|\n| 1 | 2 |\n\n## Suite results\n\n"
                    f"{suite.TABLE_HEADER}\n{suite.TABLE_SEPARATOR}\n{old_row}\n\nText after the table.\n")
    new_row = suite.format_row("2026-11-30 04:00", "NVIDIA H200 (gpu)", "be058da", "icl_throughput",
                               "tiny_steps_per_s", 123.456789, "accelerator", (0.5, 1.25))
    assert new_row == ("| 2026-11-30 04:00 | NVIDIA H200 (gpu) | be058da | icl_throughput | tiny_steps_per_s | "
                       "123.5 | accelerator | 0.5 → 1.2 |")
    suite.record(str(path), [new_row])
    lines = path.read_text().splitlines()
    assert lines[lines.index(old_row) + 1] == new_row
    assert lines[lines.index(new_row) + 1] == "" and lines[-1] == "Text after the table."
    assert "| 1 | 2 |" in lines  # the other table is left alone

    fresh = tmp_path / "new.md"
    suite.record(str(fresh), [new_row])
    assert fresh.read_text().splitlines() == [suite.TABLE_HEADER, suite.TABLE_SEPARATOR, new_row]


def test_peak_flops_by_device_kind():
    assert suite.peak_flops("NVIDIA H200", "float32") == 67e12
    assert suite.peak_flops("NVIDIA H100 80GB HBM3", "bfloat16") == 989.5e12
    assert suite.peak_flops("NVIDIA H100 PCIe", "bfloat16") == 756e12  # not the SXM part's
    assert suite.peak_flops("TPU v5 lite", "bfloat16") == 197e12  # v5e, not v5p
    assert suite.peak_flops("TPU v5 lite", "float32") is None
    assert suite.peak_flops("cpu", "float32") is None


def test_only_names_unknown_parts(capsys):
    with pytest.raises(SystemExit) as exit_info:
        suite.main(["--smoke", "--only=icl_throughput,no_such_benchmark", "--no_record"])
    assert exit_info.value.code == 2
    assert "['no_such_benchmark'] not among" in capsys.readouterr().err
