"""GPT-2 in-context regression training throughput (Garg et al.'s model): steps per second, tiny and standard sizes.

    python -m experiments.benchmarks.icl_throughput [--with_torch_reference] [--pairs 3] [--sizes tiny,standard]

Setting (issue 3): d = 20, 41 points (82 tokens), batch 64, Adam 1e-4, squared error over all prefixes, fresh
prompts every step (generated inside the jitted step), float32. On CPU the gradient is accumulated over 4
micro-batches of 16 prompts (`--micro_batch_size`; the same gradient, and the activations stay in cache). Each size
is compiled and warmed up, then timed over `--repeats` runs of at least `--seconds` seconds each; the median is
reported. The reference PyTorch numbers (transformers' GPT2Model, torch 2.13 CPU, 2 threads, on the project's 2-core
machine) are tiny 8.91 and standard 0.363 steps/s; targets tiny >= 27, standard >= 0.44.

What is timed is the step the ICL study runs: `robust_jax.core.train.compiled_train_step` (the core train loop's
jitted step, state donated, batch sharded on 'data') over the loss of `robust_jax.icl.gpt2.training_functions`
(Adam, prompts drawn on device for `IndexBatches` prompt indices, curriculum at the step), fed the same global
index batches the study feeds.

`--with_torch_reference` times Garg et al.'s model and step in PyTorch (read-in, transformers' GPT2Model, read-out;
the same sizes, batch, prompts and loss; torch.set_num_threads(2)) and ours in separate processes, alternating
`--pairs` times (experiments/benchmarks/alternate.py: two runtimes in one process slow each other's thread pools),
and prints both medians, the ratio and the load average.
The last line is {"benchmark": "icl_throughput", "results": {"tiny_steps_per_s": ..., "standard_steps_per_s": ...}}
(with the reference also "<size>_steps_per_s_vs_torch").
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

from experiments.benchmarks import alternate

DIM, N_POINTS, BATCH_SIZE, LEARNING_RATE = 20, 41, 64, 1e-4
SIZES = ("tiny", "standard")


def _timed_runs(run_steps, step_seconds: float, seconds: float, repeats: int) -> float:
    """Median steps/s over `repeats` runs of about `seconds` each; run_steps(n) runs n steps and waits for them."""
    n_steps = max(1, int(round(seconds / max(step_seconds, 1e-6))))
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        run_steps(n_steps)
        rates.append(n_steps / (time.perf_counter() - start))
    return statistics.median(rates)


def jax_steps_per_second(size: str, seconds: float, repeats: int, dtype_name: str = "float32",
                         micro_batch_size: int = 0) -> float:
    import jax
    import jax.numpy as jnp
    import optax

    from robust_jax.core import mesh as mesh_lib
    from robust_jax.core.train import compiled_train_step, initial_state
    from robust_jax.data.array_batches import IndexBatches
    from robust_jax.icl.gpt2 import Curriculum, gpt2_model, training_functions
    from robust_jax.icl.tasks import PromptSpec

    model = gpt2_model(size, dim=DIM, max_points=N_POINTS, dtype=jnp.dtype(dtype_name))
    optimizer = optax.adam(LEARNING_RATE)
    spec = PromptSpec(dim=DIM, n_context=N_POINTS - 1)
    init_fn, loss_fn = training_functions(model, spec, Curriculum.fixed(DIM, N_POINTS))
    mesh = mesh_lib.make_data_mesh()
    init_key, train_key = jax.random.split(jax.random.key(0))
    state, shardings = initial_state(init_fn, optimizer, init_key, mesh)
    step = compiled_train_step(loss_fn, optimizer, shardings, mesh, micro_batch_size)
    batches = IndexBatches(batch_size=BATCH_SIZE)
    train_key = mesh_lib.replicate(mesh, train_key)
    holder = {"state": state}

    def run_steps(n_steps: int):
        metrics = None
        for _ in range(n_steps):
            batch = mesh_lib.global_batch(mesh, next(batches))
            holder["state"], metrics = step(holder["state"], batch, train_key, None)
        jax.block_until_ready(metrics["loss"])

    run_steps(1)  # compile and warm up
    start = time.perf_counter()
    run_steps(1)
    return _timed_runs(run_steps, time.perf_counter() - start, seconds, repeats)


def torch_reference_model(size: str):
    """Garg et al.'s PyTorch model: (read-in Linear(d -> n_embd), transformers' GPT2Model, read-out Linear(n_embd -> 1))."""
    import torch
    import transformers

    from robust_jax.icl.gpt2 import GPT2_SIZES

    shape = GPT2_SIZES[size]
    config = transformers.GPT2Config(
        n_positions=2 * N_POINTS, n_embd=shape["n_embd"], n_layer=shape["n_layer"], n_head=shape["n_head"],
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, use_cache=False,
    )
    return torch.nn.Linear(DIM, shape["n_embd"]), transformers.GPT2Model(config), torch.nn.Linear(shape["n_embd"], 1)


def torch_reference_loss(modules, xs_BxPxD, ys_BxP):
    """The squared error over all prefixes of the predictions read at the x tokens of x_1, (y_1, 0, ..., 0), ..."""
    import torch

    read_in, backbone, read_out = modules
    batch, points, dim = xs_BxPxD.shape
    padded_ys = torch.cat([ys_BxP[..., None], torch.zeros(batch, points, dim - 1)], dim=2)
    tokens = torch.stack([xs_BxPxD, padded_ys], dim=2).reshape(batch, 2 * points, dim)
    hidden = backbone(inputs_embeds=read_in(tokens)).last_hidden_state
    predictions = read_out(hidden)[:, ::2, 0]
    return ((predictions - ys_BxP) ** 2).mean()


def torch_steps_per_second(size: str, seconds: float, repeats: int) -> float:
    """Garg et al.'s PyTorch model and step (`torch_reference_model`, `torch_reference_loss`), fresh prompts."""
    import torch

    torch.set_num_threads(2)
    torch.manual_seed(0)
    modules = torch_reference_model(size)
    optimizer = torch.optim.Adam([p for module in modules for p in module.parameters()], lr=LEARNING_RATE)

    def one_step():
        xs = torch.randn(BATCH_SIZE, N_POINTS, DIM)
        w = torch.randn(BATCH_SIZE, DIM, 1)
        loss = torch_reference_loss(modules, xs, (xs @ w)[..., 0])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    def run_steps(n_steps: int):
        for _ in range(n_steps):
            one_step()

    run_steps(1)
    start = time.perf_counter()
    run_steps(1)
    return _timed_runs(run_steps, time.perf_counter() - start, seconds, repeats)


def ours(args) -> dict[str, float]:
    """Our figures, this process only: steps/s per size (micro-batches of 16 on CPU, whole batches elsewhere, unless
    --micro_batch_size says otherwise)."""
    import jax

    micro_batch_size = args.micro_batch_size
    if micro_batch_size is None:
        micro_batch_size = 16 if jax.default_backend() == "cpu" else 0
    figures = {}
    for size in args.sizes:
        figures[f"{size}_steps_per_s"] = jax_steps_per_second(size, args.seconds, args.repeats, args.dtype,
                                                              micro_batch_size)
        print(f"ours      {size:9s} {figures[f'{size}_steps_per_s']:.3f} steps/s", flush=True)
    return figures


def reference(args) -> dict[str, float]:
    """The PyTorch model's figures, this process only."""
    figures = {}
    for size in args.sizes:
        figures[f"{size}_steps_per_s"] = torch_steps_per_second(size, args.seconds, args.repeats)
        print(f"reference {size:9s} {figures[f'{size}_steps_per_s']:.3f} steps/s", flush=True)
    return figures


def parse_args(argv=None):
    """The arguments, --sizes as a list. Nothing here starts JAX: a process that only starts the two sides (on an
    accelerator) must leave the device's memory to the side it starts."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default=",".join(SIZES), help="comma-separated subset of tiny,standard")
    parser.add_argument("--seconds", type=float, default=5.0, help="minimum length of one timed run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"), help="compute dtype (ours)")
    parser.add_argument("--micro_batch_size", type=int, default=None,
                        help="accumulate the gradient over micro-batches of this many prompts (0: whole batch); "
                             "default 16 on CPU, 0 elsewhere")
    parser.add_argument("--with_torch_reference", action="store_true",
                        help="also time the PyTorch reference (transformers GPT2Model, 2 threads), alternating "
                             "processes with ours")
    alternate.add_side_flags(parser)
    args = parser.parse_args(argv)
    args.sizes = [size for size in args.sizes.split(",") if size]
    unknown = [size for size in args.sizes if size not in SIZES]
    if unknown or not args.sizes:
        parser.error(f"--sizes must be a non-empty subset of {SIZES}, got {unknown or args.sizes}")
    if args.repeats < 1 or args.pairs < 1 or args.seconds < 0:
        parser.error("--repeats and --pairs must be >= 1 and --seconds >= 0")
    if args.micro_batch_size is not None and args.micro_batch_size < 0:
        parser.error(f"--micro_batch_size={args.micro_batch_size} must be >= 0")
    return args


def main(argv=None):
    args = parse_args(argv)
    if alternate.run_side_if_asked(args, ours, reference):
        return
    details = {"load_average_before": os.getloadavg(), "dtype": args.dtype,
               "micro_batch_size": "16 on CPU, 0 elsewhere" if args.micro_batch_size is None
               else args.micro_batch_size}
    if args.with_torch_reference:
        forwarded = [f"--sizes={','.join(args.sizes)}", f"--seconds={args.seconds}", f"--repeats={args.repeats}",
                     f"--dtype={args.dtype}"]
        if args.micro_batch_size is not None:
            forwarded.append(f"--micro_batch_size={args.micro_batch_size}")
        comparison = alternate.compare("experiments.benchmarks.icl_throughput", forwarded, args.pairs)
        details["comparison"] = comparison
        results = alternate.ours_with_ratios(comparison)
    else:
        results = ours(args)
    details["load_average_after"] = os.getloadavg()
    print(json.dumps({"details": details}))
    print(json.dumps({"benchmark": "icl_throughput", "results": results}))


if __name__ == "__main__":
    main()
