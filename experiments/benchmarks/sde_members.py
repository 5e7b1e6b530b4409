"""Seconds per epoch per SDE cell as the sde study trains them, against the same cells trained one at a time, each
side in its own process, alternating (alternate.py).

  python -m experiments.benchmarks.sde_members [--dataset GunPoint] [--models lsde,lnsde,gsde,naive_sde]
                                               [--cells 20] [--alone 2] [--epochs 5] [--pairs 3]

The cells are the sde `cpu` preset's: missing rates 0 and 0.5 times seeds 0, 1, ... (`--cells` per model), with
the preset's models and protocol (no early stopping while timed). The study's way ("ours"): per model one training
of all its cells as members, one vmapped program (`robust_jax.sde.training.member_training`), the models' trainings
side by side (`core.train.fit_independent`, one per core). One cell at a time ("reference", the study before): each
of the first `--alone` cells per model trained alone (`cell_training`), one after the other. Each side first trains
one epoch of everything in scratch workdirs (compiling the steps and the evaluations), then times `--epochs` epochs
of training and evaluation through the core loop, checkpoints only at the end. Prints, last,
{"benchmark": "sde_members", "results": {...}}: each side's median s/epoch per cell, and "speedup_vs_one_cell" (one at
a time over the study's way, > 1: the study's way is faster).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import tempfile
import time

from experiments.benchmarks import alternate


def _setup(args):
    import robust_jax
    from robust_jax.data.timeseries import prepare_timeseries
    from robust_jax.sde import study

    config = robust_jax.get_config("sde", "cpu")
    cells = [(rate, seed) for rate in (0.0, 0.5) for seed in range(args.cells // 2)]
    datas = [prepare_timeseries(args.dataset, rate, seed) for rate, seed in cells]
    models = [study.build_model(config, name, datas[0].num_classes) for name in args.models.split(",")]
    protocol = dataclasses.replace(study.protocol_from(config), patience=10_000, early_stopping_start=10_000,
                                   checkpoint_every_epochs=10_000)
    return cells, datas, models, protocol


def _timed(make_trainings, protocol, epochs: int) -> float:
    """Seconds to train `epochs` epochs of the trainings, side by side as the study runs them, after one epoch of
    each that compiles everything."""
    from robust_jax.core.train import fit_independent, train

    def fit_all(trainings):
        workdir = tempfile.mkdtemp()
        fit_independent(trainings, lambda training: train(training, workdir))

    fit_all(make_trainings(dataclasses.replace(protocol, epochs=1)))
    trainings = make_trainings(dataclasses.replace(protocol, epochs=epochs))
    start = time.perf_counter()
    fit_all(trainings)
    return time.perf_counter() - start


def ours(args) -> dict:
    from robust_jax.sde.training import member_training

    cells, datas, models, protocol = _setup(args)
    seeds = [seed for _, seed in cells]
    seconds = _timed(lambda p: [member_training(f"model{i}", model, datas, p, seeds) for i, model in enumerate(models)],
                     protocol, args.epochs)
    return {"s_per_epoch_per_cell": seconds / args.epochs / len(cells) / len(models)}


def reference(args) -> dict:
    from robust_jax.core.train import train
    from robust_jax.sde.training import cell_training

    cells, datas, models, protocol = _setup(args)
    seconds = 0.0
    for model in models:
        for (rate, seed), data in list(zip(cells, datas))[:args.alone]:
            for epochs in (1, args.epochs):  # the first compiles
                training = cell_training("cell", model, data, dataclasses.replace(protocol, epochs=epochs), seed)
                start = time.perf_counter()
                train(training, tempfile.mkdtemp())
            seconds += time.perf_counter() - start
    return {"s_per_epoch_per_cell": seconds / args.epochs / args.alone / len(models)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="GunPoint")
    parser.add_argument("--models", default="lsde,lnsde,gsde,naive_sde")
    parser.add_argument("--cells", type=int, default=20, help="cells per model (even: two missing rates)")
    parser.add_argument("--alone", type=int, default=2, help="cells per model timed one at a time")
    parser.add_argument("--epochs", type=int, default=5)
    alternate.add_side_flags(parser)
    args = parser.parse_args()
    if alternate.run_side_if_asked(args, ours, reference):
        return
    forwarded = [f"--dataset={args.dataset}", f"--models={args.models}", f"--cells={args.cells}",
                 f"--alone={args.alone}", f"--epochs={args.epochs}"]
    runs = {"ours": [], "reference": []}
    for _ in range(max(1, args.pairs)):
        for side in alternate.SIDES:
            runs[side].append(alternate.run_side("experiments.benchmarks.sde_members", forwarded, side)[
                "s_per_epoch_per_cell"])
    members, alone = statistics.median(runs["ours"]), statistics.median(runs["reference"])
    print(json.dumps({"benchmark": "sde_members", "results": {
        "vmapped_s_per_epoch_per_cell": members, "one_cell_s_per_epoch_per_cell": alone,
        "speedup_vs_one_cell": alone / members},
        "details": {"runs": runs, "dataset": args.dataset, "models": args.models, "cells": args.cells,
                    "alone": args.alone, "epochs": args.epochs}}), flush=True)


if __name__ == "__main__":
    main()
