"""Seconds per training epoch of LSDE / LNSDE / GSDE on BasicMotions at 30% missing (issue 5, item 5).

    python -m experiments.benchmarks.sde_epoch_time [--epochs 20] [--models lsde,lnsde,gsde] [--seeds 0]

Setting (the authors' torch-ists reference run): BasicMotions from aeon, 30% of time points dropped, the original
40/40 train/test split, time grid linspace(0, 1, 100) -> Euler–Maruyama on the grid (dt = 1/99; torchsde's 101-point
solve in the reference), hidden 64, hidden-hidden 64, 2 hidden layers, batch 16, Adam 1e-3, float32.
What is timed is the step the SDE study runs: `robust_jax.core.train.compiled_train_step` over the cell's loss
(`robust_jax.sde.training.cell_setup`), fed `ArrayBatches` as the study feeds them; an epoch is 2 steps of 16 (the
study drops the partial last batch; the reference's DataLoader also runs a batch of 8). `--epochs` epochs are
trained; the first compiles, the median over the others is reported, and the model is then scored on the 40 test
series with the study's evaluation (the reference's accuracy is taken after 20 epochs).
Reference on the project's 2-core machine (torch 2.13 CPU, 2 threads): LSDE 0.254, LNSDE 0.294, GSDE 0.307 s/epoch,
test accuracy 0.875 / 0.900 / 0.500 after 20 epochs (one seed); target <= 0.025 s at equal or better accuracy.
The machine may be shared: the load average is printed next to the numbers.
The last line is {"benchmark": "sde_epoch_time", "results": {"lsde_s_per_epoch": ..., "lsde_test_accuracy": ..., ...}}
(accuracy: mean over `--seeds`).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

BATCH_SIZE, LEARNING_RATE, HIDDEN, LAYERS, MISSING_RATE = 16, 1e-3, 64, 2, 0.3


def epoch_seconds(model_name: str, epochs: int, seed: int = 0) -> tuple[float, float, float]:
    """(median s/epoch after the first, compile + first-epoch s, test accuracy after `epochs` epochs)."""
    import jax

    from robust_jax.core import mesh as mesh_lib
    from robust_jax.core.train import compiled_train_step, initial_state
    from robust_jax.data.array_batches import ArrayBatches
    from robust_jax.data.timeseries import prepare_timeseries
    from robust_jax.sde import SDEClassifier
    from robust_jax.sde.training import Protocol, _split_arrays, cell_setup, evaluate_split

    data = prepare_timeseries("BasicMotions", MISSING_RATE, seed, split="original")
    model = SDEClassifier(model_name, data.num_classes, hidden_dim=HIDDEN, hidden_hidden_dim=HIDDEN,
                          num_hidden_layers=LAYERS)
    protocol = Protocol(learning_rate=LEARNING_RATE, batch_size=BATCH_SIZE, lr_decay=1.0)  # constant Adam
    mesh = mesh_lib.make_data_mesh()
    _, steps_per_epoch, fns = cell_setup(model, data, protocol, mesh.devices.size)
    init_key, train_key, eval_key = jax.random.split(jax.random.key(seed), 3)
    state, shardings = initial_state(fns.init_fn, fns.optimizer, init_key, mesh)
    step = compiled_train_step(fns.loss_fn, fns.optimizer, shardings, mesh)
    train_key, constants = mesh_lib.replicate(mesh, (train_key, {"times": data.times}))
    batches = ArrayBatches(_split_arrays(data, "train"), batch_size=BATCH_SIZE, seed=seed)

    def train_epoch(state):
        for _ in range(steps_per_epoch):
            state, metrics = step(state, mesh_lib.global_batch(mesh, next(batches)), train_key, constants)
        jax.block_until_ready(metrics["loss"])
        return state

    start = time.perf_counter()
    state = train_epoch(state)
    compile_seconds = time.perf_counter() - start
    durations = []
    for _ in range(1, epochs):
        start = time.perf_counter()
        state = train_epoch(state)
        durations.append(time.perf_counter() - start)
    accuracy, _ = evaluate_split(fns, state, _split_arrays(data, "test"), constants["times"], eval_key, 40, mesh)
    return statistics.median(durations), compile_seconds, accuracy


def measure(models, epochs: int, seeds) -> dict[str, float]:
    """{"<model>_s_per_epoch": median over seeds, "<model>_test_accuracy": mean over seeds} after `epochs` epochs."""
    results = {}
    for name in models:
        runs = [epoch_seconds(name, epochs, seed) for seed in seeds]
        seconds = statistics.median(r[0] for r in runs)
        accuracies = [r[2] for r in runs]
        accuracy = statistics.fmean(accuracies)
        print(f"{name}: {seconds:.4f} s/epoch (median of {epochs - 1} epochs x {len(seeds)} seeds; compile "
              f"{runs[0][1]:.1f} s; load average {os.getloadavg()[0]:.1f}); test accuracy after {epochs} epochs "
              + ", ".join(f"{a:.3f}" for a in accuracies) + f" (mean {accuracy:.3f})", flush=True)
        results[f"{name}_s_per_epoch"] = round(seconds, 5)
        results[f"{name}_test_accuracy"] = round(accuracy, 4)
    return results


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=20, help="epochs trained per seed (at least 2)")
    parser.add_argument("--models", default="lsde,lnsde,gsde")
    parser.add_argument("--seeds", default="0", help="comma-separated; timings are the median over seeds")
    args = parser.parse_args(argv)
    if args.epochs < 2:
        parser.error(f"--epochs={args.epochs} must be at least 2 (the first epoch compiles)")
    seeds = [int(s) for s in args.seeds.split(",")]
    line = {"benchmark": "sde_epoch_time", "results": measure(args.models.split(","), args.epochs, seeds)}
    print(json.dumps(line))
    return line


if __name__ == "__main__":
    main()
