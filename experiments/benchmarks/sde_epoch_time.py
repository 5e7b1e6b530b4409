"""Seconds per training epoch of LSDE / LNSDE / GSDE on BasicMotions at 30% missing (issue 5, item 5).

    python -m experiments.benchmarks.sde_epoch_time [--epochs 20] [--models lsde,lnsde,gsde] [--seeds 0]

Setting (the authors' torch-ists reference run): BasicMotions from aeon, 30% of time points dropped, the original
40/40 train/test split, time grid linspace(0, 1, 100) -> Euler–Maruyama on the grid (dt = 1/99; torchsde's 101-point
solve in the reference), hidden 64, hidden-hidden 64, 2 hidden layers, batch 16 (batches of 16, 16, 8 as a
DataLoader with drop_last=False), Adam 1e-3, float32. One epoch (shuffle + 3 Adam steps) is one jitted function, so
the host dispatches once per epoch. `--epochs` epochs are trained; the first compiles, the median over the others is
reported, and the model is then scored on the 40 test series (the reference's accuracy is taken after 20 epochs).
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
    import jax.numpy as jnp
    import optax

    from robust_jax.data.timeseries import prepare_timeseries
    from robust_jax.sde import SDEClassifier

    data = prepare_timeseries("BasicMotions", MISSING_RATE, seed, split="original")
    train, test = data.subset("train"), data.subset("test")
    coeffs = tuple(jnp.asarray(c) for c in train["coeffs"])
    labels = jnp.asarray(train["label"])
    times = jnp.asarray(data.times)
    size = labels.shape[0]
    model = SDEClassifier(model_name, data.num_classes, hidden_dim=HIDDEN, hidden_hidden_dim=HIDDEN, num_hidden_layers=LAYERS)
    optimizer = optax.adam(LEARNING_RATE)
    key = jax.random.key(seed)
    variables = model.init(key, times, tuple(c[:BATCH_SIZE] for c in coeffs), key)
    state = (variables["params"], variables["batch_stats"], optimizer.init(variables["params"]))

    def step(state, batch_coeffs, batch_labels, step_key):
        params, batch_stats, opt_state = state
        noise_key, dropout_key = jax.random.split(step_key)

        def loss_fn(params):
            logits, updates = model.apply(
                {"params": params, "batch_stats": batch_stats}, times, batch_coeffs, noise_key,
                train=True, rngs={"dropout": dropout_key}, mutable=["batch_stats"],
            )
            return optax.softmax_cross_entropy_with_integer_labels(logits, batch_labels).mean(), updates

        (loss, updates), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        changes, opt_state = optimizer.update(grads, opt_state, params)
        return (optax.apply_updates(params, changes), updates["batch_stats"], opt_state), loss

    @jax.jit
    def train_epoch(state, epoch_key):
        order = jax.random.permutation(jax.random.fold_in(epoch_key, 0), size)
        losses = []
        for i, start in enumerate(range(0, size, BATCH_SIZE)):  # 16, 16, 8: static shapes, one program
            rows = order[start : start + BATCH_SIZE]
            batch = tuple(c[rows] for c in coeffs)
            state, loss = step(state, batch, labels[rows], jax.random.fold_in(epoch_key, i + 1))
            losses.append(loss)
        return state, jnp.stack(losses)

    run_key = jax.random.key(seed + 1)
    start = time.perf_counter()
    state, losses = jax.block_until_ready(train_epoch(state, jax.random.fold_in(run_key, 0)))
    compile_seconds = time.perf_counter() - start
    durations = []
    for epoch in range(1, epochs):
        start = time.perf_counter()
        state, losses = jax.block_until_ready(train_epoch(state, jax.random.fold_in(run_key, epoch)))
        durations.append(time.perf_counter() - start)

    params, batch_stats, _ = state
    logits = model.apply(
        {"params": params, "batch_stats": batch_stats}, times, tuple(jnp.asarray(c) for c in test["coeffs"]),
        jax.random.fold_in(run_key, epochs),
    )
    accuracy = float(jnp.mean(jnp.argmax(logits, -1) == jnp.asarray(test["label"])))
    return statistics.median(durations), compile_seconds, accuracy


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=20, help="epochs trained per seed (at least 2)")
    parser.add_argument("--models", default="lsde,lnsde,gsde")
    parser.add_argument("--seeds", default="0", help="comma-separated; timings are the median over seeds")
    args = parser.parse_args(argv)
    if args.epochs < 2:
        parser.error(f"--epochs={args.epochs} must be at least 2 (the first epoch compiles)")
    seeds = [int(s) for s in args.seeds.split(",")]
    results = {}
    for name in args.models.split(","):
        runs = [epoch_seconds(name, args.epochs, seed) for seed in seeds]
        seconds = statistics.median(r[0] for r in runs)
        accuracies = [r[2] for r in runs]
        accuracy = statistics.fmean(accuracies)
        print(f"{name}: {seconds:.4f} s/epoch (median of {args.epochs - 1} epochs x {len(seeds)} seeds; compile "
              f"{runs[0][1]:.1f} s; load average {os.getloadavg()[0]:.1f}); test accuracy after {args.epochs} epochs "
              + ", ".join(f"{a:.3f}" for a in accuracies) + f" (mean {accuracy:.3f})", flush=True)
        results[f"{name}_s_per_epoch"] = round(seconds, 5)
        results[f"{name}_test_accuracy"] = round(accuracy, 4)
    line = {"benchmark": "sde_epoch_time", "results": results}
    print(json.dumps(line))
    return line


if __name__ == "__main__":
    main()
