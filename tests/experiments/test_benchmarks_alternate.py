"""experiments/benchmarks/alternate.py: each side in its own process, alternating, medians and ratios."""

import os
import textwrap

import numpy as np
import pytest

from experiments.benchmarks import alternate

FAKE = textwrap.dedent('''
    import argparse, json, os
    parser = argparse.ArgumentParser()
    parser.add_argument("--log")
    parser.add_argument("--side")
    args = parser.parse_args()
    with open(args.log, "a") as f:
        f.write(f"{args.side} {os.getpid()}\\n")
    runs = sum(1 for line in open(args.log) if line.startswith(args.side))
    figures = {"items_per_s": (10.0 if args.side == "ours" else 4.0) * runs, "epoch_s_per_epoch": 0.5 * runs}
    if args.side == "ours":
        figures["agreement"] = 1.0
    print("some progress")
    print(json.dumps({"side": args.side, "figures": figures}))
''')


def test_compare_alternates_processes_and_takes_medians(tmp_path, monkeypatch):
    (tmp_path / "fake_benchmark.py").write_text(FAKE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", str(tmp_path) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    log = tmp_path / "order.txt"
    result = alternate.compare("fake_benchmark", [f"--log={log}"], pairs=3, log=lambda line: None)
    lines = log.read_text().split()
    sides, pids = lines[0::2], lines[1::2]
    assert sides == ["ours", "reference"] * 3
    assert len(set(pids)) == 6 and str(os.getpid()) not in pids  # a fresh process each
    figures = result["figures"]
    assert figures["items_per_s"]["ours_runs"] == [10.0, 20.0, 30.0]
    assert figures["items_per_s"]["reference"] == float(np.median([4.0, 8.0, 12.0]))
    assert figures["items_per_s"]["ratio"] == pytest.approx(20.0 / 8.0)
    # a time: lower is better, so the ratio is reference / ours (1.0 here: both sides took the same time)
    assert figures["epoch_s_per_epoch"]["ratio"] == pytest.approx(1.0)
    assert figures["agreement"] == {"ours": 1.0, "ours_runs": [1.0, 1.0, 1.0]}  # ours only: no ratio
    assert len(result["load_average_before"]) == 3


def test_ratio_direction():
    assert alternate.ratio("samples_per_s", 300.0, 200.0) == 1.5
    assert alternate.ratio("certify_s_per_image", 40.0, 60.0) == 1.5
    assert alternate.ratio("train_seconds", 2.0, 3.0) == 1.5


def test_failing_side_names_its_command(tmp_path, monkeypatch):
    (tmp_path / "broken_benchmark.py").write_text("import sys; print('no figures'); sys.exit(3)\n")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    with pytest.raises(RuntimeError, match=r"broken_benchmark.*--side=ours exited with 3"):
        alternate.compare("broken_benchmark", [], pairs=1, log=lambda line: None)
    with pytest.raises(ValueError, match="pairs"):
        alternate.compare("broken_benchmark", [], pairs=0)
