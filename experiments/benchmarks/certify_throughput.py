"""Randomized-smoothing throughput: noisy samples per second through CIFAR ResNet-110, and seconds per certified image.

    python -m experiments.benchmarks.certify_throughput [--with_torch_reference] [--dtype float32|bfloat16]

Setting (issue 4, point 6): Cohen et al.'s CIFAR ResNet-110 (robust_jax.models.resnet.resnet110, normalisation
layer inside), random weights and random BatchNorm running statistics (evaluation mode); the head is rescaled so that
the random network predicts every class about equally often, which makes the certify figures and the precision
check realistic. Inputs 32x32x3, sigma = 0.25, batch 400, on every device JAX sees (one CPU device unless configured).
- samples_per_s: the full counting step that `certify` runs (noise drawn on device with the per-row fold_in layout,
  forward, argmax, one-hot count) -- `robust_jax.smoothing.sampling.counting_step` itself, compiled once, then timed
  over `--repeats` batches (median).
- certify_s_per_image: `robust_jax.smoothing.certify` with n0 = 100, n = 10,000, alpha = 0.001, batch 400, median
  over `--images` images after a compiled warm-up.

What is used (`robust_jax.models.resnet.fast_inference`, defaults): BatchNorm folded into the convolutions
(convolution + bias + ReLU only), float32, and on a single CPU device the 400 rows go through the network in
lax.map slices of 16 (resnet.CPU_BATCH_CHUNK: the 16-channel first stage then works in cache); certify's n0 = 100
selection draw runs a 128-row step instead of a masked 400-row one (sampling.step_batch_size). Measured in one run
under load, samples per CPU-second: plain Flax model 101-110, folded + slices of 50 117-127, of 16 123; with the
machine briefly quiet, wall samples/s: plain 148, slices of 16 ~188, torch ~180 (so about 1.0x torch, not 1.5x).
The counting step on one CPU device (sampling.counting_streams, `--streams`): one single-threaded program per core,
each on its share of the rows (200 of 400 on two cores), run at once. XLA's two threads kept the two cores about
1.5 busy (97 samples per CPU-second against about 135 for one thread on one core, 2026-11-30). Quiet machine,
separate processes, 2026-11-30: one program 138 and 152 samples/s, two streams 204 and 272 (PyTorch 164-213;
experiments/benchmarks/README.md). `stream_agreement_with_one_program` checks that the shares predict what one
program predicts on every noisy input.
Tried and not kept: `--dtype bfloat16` (avx512_bf16; +10-20% per CPU-second, but on this benchmark's calibrated
random network only ~54% of noisy predictions agree with float32, so it is not a default: a trained network must be
checked first); XLA options xla_cpu_use_onednn and xla_cpu_use_xnnpack (same CPU time, compared in one run through
compile(compiler_options=...)), xla_cpu_experimental_{xnn,ynn}_fusion_type (compiled convolutions unchanged),
xla_cpu_use_thunk_runtime (no longer supported); NCHW layout (slower convolutions in a micro-benchmark); cheaper noise
(the per-row fold_in noise for 400 rows takes ~50 ms, about 1% of the step); Winograd F(2x2, 3x3) for the stride-1
3x3 convolutions (4x4 input tiles transformed by fused elementwise work, the 16 per-tile-position products as one
batched matmul, the 2x2 outputs transformed back; within 4e-6 of XLA's convolution), single-threaded on one core,
one convolution + bias + residual + ReLU on 16 rows: 16 channels at 32x32 2,065 us against XLA's 1,368; 32 at 16x16
855 against 523; 64 at 8x8 487 against 548 (the last stage alone, about a third of the network, would gain ~11%);
the first stage on images packed in pairs (32 channels, a block-diagonal kernel: twice the multiply-adds at twice
the width), single-threaded on one core of a 2-core Intel Xeon (2026-12-08), 18 blocks on 16 rows: 48.7-50.1 ms
against 68.8-70.8 ms packed and 101 ms as a grouped convolution (feature_group_count 2), so slower there.
XLA's convolution runs at 55 GFLOP/s on the 16-channel stage against ~140 on the others (one core): the first stage
takes over half of the forward.

For the suite (experiments/benchmarks/suite.py): `--depth` (ours only) times a shallower CIFAR ResNet for quick
checks; `counting_flops` is XLA's FLOP count of one counting step (for the fraction of a device's peak), and
`trained_digits_resnet` trains the network briefly on digits at sigma 0.25 so that `prediction_agreement` can
compare bfloat16 with float32 on a trained network rather than the random one.

The reference (Cohen et al.'s PyTorch code, torch 2.13 CPU, 2 threads, quiet 2-core machine): 194 samples/s and
52.5 s per image; floor 1.0x, target 1.5x. `--with_torch_reference` times a PyTorch ResNet-110 written for this
benchmark (same architecture, NCHW, eval mode, no_grad, batch 400 of x + 0.25 * randn, torch.set_num_threads(2)) and
ours in separate processes, alternating `--pairs` times (experiments/benchmarks/alternate.py: two runtimes in one
process slow each other's thread pools), and prints both medians, the ratio and the load average.
The last line is {"benchmark": "certify_throughput", "results": {"samples_per_s": ..., "certify_s_per_image": ...}}.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import numpy as np

from experiments.benchmarks import alternate

IMAGE_SHAPE = (32, 32, 3)
NUM_CLASSES = 10
SIGMA = 0.25
BATCH_SIZE = 400
N0, N, ALPHA = 100, 10_000, 0.001


# ------------------------------------------------------------------------------------------------------ our model


def random_resnet(depth: int = 110, seed: int = 0):
    """A CIFAR ResNet (ResNet-110 by default) with random weights, random BN statistics and a head calibrated to use
    every class: (model, variables)."""
    import jax
    import jax.numpy as jnp

    from robust_jax.models import resnet

    model = resnet.CifarResNet(depth=depth, num_classes=NUM_CLASSES)
    variables = jax.jit(model.init)(jax.random.key(seed), jnp.zeros((1, *IMAGE_SHAPE)))
    rng = np.random.default_rng(seed)

    def random_statistic(path, leaf):
        if jax.tree_util.keystr(path).endswith("['var']"):
            return jnp.asarray(rng.uniform(0.5, 1.5, leaf.shape), jnp.float32)
        return jnp.asarray(rng.normal(0.0, 0.1, leaf.shape), jnp.float32)

    stats = jax.tree_util.tree_map_with_path(random_statistic, variables["batch_stats"])
    params = jax.tree.map(lambda leaf: leaf, variables["params"])
    # A random deep ResNet maps every input to nearly the same logits; standardising each logit over noisy copies of
    # a few images (an affine change of the head) gives a classifier whose votes are spread over the classes.
    images = rng.uniform(0, 1, (8, *IMAGE_SHAPE)).astype(np.float32)
    noisy = np.repeat(images, 25, axis=0) + SIGMA * rng.standard_normal((200, *IMAGE_SHAPE)).astype(np.float32)
    logits = np.asarray(jax.jit(model.apply)({"params": params, "batch_stats": stats}, noisy))
    mean_C, std_C = logits.mean(0), logits.std(0) + 1e-12
    head = params["head"]
    params["head"] = {
        "kernel": head["kernel"] / std_C,
        "bias": (head["bias"] - mean_C) / std_C,
    }
    return model, {"params": params, "batch_stats": stats}


def _noisy_agreement(want_classes, got_classes, images: np.ndarray, batch_size: int, rng) -> tuple[int, int, set]:
    """(agreeing, total, classes `want_classes` predicted) over batch_size noisy copies (sigma SIGMA) of each image;
    want_classes / got_classes map a noisy batch to one class per row."""
    agree = total = 0
    classes = set()
    for x in images:
        noisy = x + SIGMA * rng.standard_normal((batch_size, *x.shape)).astype(np.float32)
        want, got = want_classes(noisy), got_classes(noisy)
        agree += int(np.sum(want == got))
        total += want.size
        classes.update(want.tolist())
    return agree, total, classes


def prediction_agreement(model, variables, dtype_name: str, images: int | np.ndarray = 4, seed: int = 1,
                         batch_size: int = BATCH_SIZE) -> float:
    """Fraction of noisy inputs (batch_size noisy copies of each image) where fast_inference in dtype_name and the
    unfolded float32 model predict the same class. `images`: a number of random images, or an (N, 32, 32, 3) array.

    On random images and the random network it is a stress test: that network maps all inputs to nearly the same
    features and the calibrated head magnifies what differences remain, so rounding flips predictions far more often
    than in a trained network (`trained_digits_resnet` gives one to check).
    """
    import jax
    import jax.numpy as jnp

    from robust_jax.models import resnet

    fast_apply, fast_params = resnet.fast_inference(model, variables, dtype=jnp.dtype(dtype_name))
    reference, fast = jax.jit(model.apply), jax.jit(fast_apply)
    rng = np.random.default_rng(seed)
    if isinstance(images, (int, np.integer)):
        images = rng.uniform(0, 1, (images, *IMAGE_SHAPE)).astype(np.float32)
    agree, total, classes = _noisy_agreement(
        lambda noisy: np.argmax(np.asarray(reference(variables, noisy)), -1),
        lambda noisy: np.argmax(np.asarray(fast(fast_params, noisy)), -1), images, batch_size, rng)
    print(f"agreement of {dtype_name} fast_inference with the float32 model: {agree / total:.4f} "
          f"({total} noisy inputs, {len(classes)} classes predicted)", flush=True)
    return agree / total


def stream_agreement(apply_fn, params, images: np.ndarray, batch_size: int = BATCH_SIZE, streams: int = 2,
                     seed: int = 1) -> float:
    """Fraction of noisy inputs (batch_size noisy copies of each image) on which the counting step's one-CPU-device
    form (`streams` single-threaded programs, each on its share of the rows: sampling.counting_streams) predicts the
    same class as one program on the whole batch with XLA's default threading."""
    import jax

    from robust_jax.core.streams import StreamedApply

    whole = jax.jit(apply_fn)
    in_shares = StreamedApply(apply_fn, streams)
    agree, total, _ = _noisy_agreement(lambda noisy: np.argmax(np.asarray(whole(params, noisy)), -1),
                                       lambda noisy: np.argmax(in_shares(params, noisy), -1),
                                       images, batch_size, np.random.default_rng(seed))
    print(f"agreement of {streams} single-threaded shares with one program: {agree / total:.4f} "
          f"({total} noisy inputs)", flush=True)
    return agree / total


def digits_as_cifar(images_Nx8x8x1: np.ndarray) -> np.ndarray:
    """sklearn digits (8x8, one channel, [0, 1]) as 32x32 RGB images: each pixel repeated 4x4, grey in all channels."""
    upsampled = np.repeat(np.repeat(images_Nx8x8x1, 4, axis=1), 4, axis=2)
    return np.repeat(upsampled, 3, axis=3).astype(np.float32)


def trained_digits_resnet(depth: int = 110, steps: int = 300, batch_size: int = 128, seed: int = 0):
    """A CIFAR ResNet of `depth` trained with Gaussian noise at sigma = 0.25 (Cohen et al.'s augmentation, the smoothing
    study's loss) on sklearn digits shown as 32x32 RGB (`digits_as_cifar`), through the core train step; Adam 1e-3
    with cosine decay over `steps` steps. Returns (model, variables, test images, test labels, noisy test accuracy:
    one noise draw per test image)."""
    import jax
    import optax

    from robust_jax.core import mesh as mesh_lib
    from robust_jax.core.train import compiled_train_step, initial_state
    from robust_jax.data.digits import load_digits_splits
    from robust_jax.models import resnet
    from robust_jax.smoothing.training import make_noise_loss_fn

    splits = load_digits_splits(0.2, seed=seed)
    train_images, train_labels = digits_as_cifar(splits["train"]["image"]), splits["train"]["label"]
    test_images, test_labels = digits_as_cifar(splits["test"]["image"]), splits["test"]["label"]
    model = resnet.CifarResNet(depth=depth, num_classes=NUM_CLASSES)

    def init_fn(key):
        variables = model.init(key, np.zeros((1, *IMAGE_SHAPE), np.float32))
        return variables["params"], {"batch_stats": variables["batch_stats"]}

    def apply_train(params, model_state, images):
        logits, updates = model.apply({"params": params, **model_state}, images, train=True, mutable=["batch_stats"])
        return logits, {**model_state, **updates}

    optimizer = optax.adam(optax.cosine_decay_schedule(1e-3, steps))
    mesh = mesh_lib.make_data_mesh()
    init_key, train_key = jax.random.split(jax.random.key(seed))
    state, shardings = initial_state(init_fn, optimizer, init_key, mesh)
    step = compiled_train_step(make_noise_loss_fn(apply_train, sigma=SIGMA), optimizer, shardings, mesh)
    train_key = mesh_lib.replicate(mesh, train_key)
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        rows = rng.choice(len(train_labels), batch_size, replace=False)
        batch = mesh_lib.global_batch(mesh, {"image": train_images[rows], "label": train_labels[rows]})
        state, metrics = step(state, batch, train_key, None)
    variables = {"params": state.params, **state.model_state}
    noisy = test_images + SIGMA * rng.standard_normal(test_images.shape).astype(np.float32)
    predictions = np.argmax(np.asarray(jax.jit(model.apply)(variables, noisy)), -1)
    accuracy = float(np.mean(predictions == test_labels))
    print(f"ResNet-{depth} trained {steps} steps on digits at sigma {SIGMA}: last loss "
          f"{float(metrics['loss']):.3f}, noisy test accuracy {accuracy:.3f}", flush=True)
    return model, variables, test_images, test_labels, accuracy


class JaxCounting:
    """The counting step that certify runs, on the default mesh, ready to time one batch at a time."""

    def __init__(self, apply_fn, params, batch_size: int, streams: int | None = None):
        import jax

        from robust_jax.core.mesh import make_data_mesh, replicated
        from robust_jax.smoothing.sampling import counting_step

        self.mesh = make_data_mesh()
        everywhere = replicated(self.mesh)
        self.step = counting_step(apply_fn, self.mesh, batch_size, NUM_CLASSES, streams)
        self.params = jax.device_put(params, everywhere)
        self.x = jax.device_put(np.random.default_rng(2).uniform(0, 1, IMAGE_SHAPE).astype(np.float32), everywhere)
        self.key = jax.device_put(jax.random.key(3), everywhere)
        self.sigma = jax.device_put(np.float32(SIGMA), everywhere)
        self.batch_size = batch_size
        self.batch_index = 0

    def arguments(self) -> tuple:
        return (self.params, self.x, self.key, np.int32(self.batch_index), np.int32(self.batch_size), self.sigma)

    def run_batch(self):
        import jax

        self.batch_index += 1
        counts = self.step(self.params, self.x, self.key, np.int32(self.batch_index), np.int32(self.batch_size),
                           self.sigma)
        jax.block_until_ready(counts)


def counting_flops(model, variables, dtype_name: str, batch_size: int) -> float:
    """XLA's FLOP count of one counting step of `batch_size` noisy samples through fast_inference in dtype_name (cost
    analysis of the lowered program: no compilation needed; of the compiled one where a backend only counts that).
    Counted on the unsliced network: XLA counts the body of a loop once, so the lax.map slices that fast_inference
    uses on one CPU device would hide most of the work."""
    import jax.numpy as jnp

    from robust_jax.models import resnet

    apply_fn, params = resnet.fast_inference(model, variables, dtype=jnp.dtype(dtype_name), batch_chunk=None)
    counting = JaxCounting(apply_fn, params, batch_size, streams=1)  # one program over the whole batch
    lowered = counting.step.lower(*counting.arguments())
    for analyse in (lowered.cost_analysis, lambda: lowered.compile().cost_analysis()):
        analysis = analyse()
        if isinstance(analysis, (list, tuple)):  # older jax: one dict per device program
            analysis = analysis[0] if analysis else None
        if analysis and analysis.get("flops", 0) > 0:
            return float(analysis["flops"])
    raise RuntimeError("XLA's cost analysis gave no FLOP count for this backend")


# ------------------------------------------------------------------------------------------------ torch reference


def torch_counting(batch_size: int):
    """Cohen et al.'s CIFAR ResNet-110 in PyTorch (normalisation layer first), one noisy batch + argmax + count."""
    import torch
    from torch import nn

    torch.set_num_threads(2)
    torch.manual_seed(0)

    class BasicBlock(nn.Module):
        def __init__(self, in_planes, planes, stride):
            super().__init__()
            self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(planes)
            self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(planes)
            self.downsample = None
            if stride != 1 or in_planes != planes:
                self.downsample = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False),
                                                nn.BatchNorm2d(planes))

        def forward(self, x):
            out = torch.relu(self.bn1(self.conv1(x)))
            out = self.bn2(self.conv2(out))
            return torch.relu(out + (x if self.downsample is None else self.downsample(x)))

    class ResNet110(nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("mean", torch.tensor([0.4914, 0.4822, 0.4465]).view(1, 3, 1, 1))
            self.register_buffer("std", torch.tensor([0.2470, 0.2435, 0.2616]).view(1, 3, 1, 1))
            self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(16)
            blocks, in_planes = [], 16
            for stage, planes in enumerate((16, 32, 64)):
                for block in range(18):
                    blocks.append(BasicBlock(in_planes, planes, 2 if stage > 0 and block == 0 else 1))
                    in_planes = planes
            self.layers = nn.Sequential(*blocks)
            self.fc = nn.Linear(64, NUM_CLASSES)

        def forward(self, x):
            x = (x - self.mean) / self.std
            x = self.layers(torch.relu(self.bn1(self.conv1(x))))
            return self.fc(torch.flatten(nn.functional.avg_pool2d(x, 8), 1))

    model = ResNet110().eval()
    x = torch.rand(1, 3, 32, 32)

    def run_batch():
        with torch.no_grad():
            logits = model(x + SIGMA * torch.randn(batch_size, 3, 32, 32))
            return torch.bincount(logits.argmax(1), minlength=NUM_CLASSES)

    return run_batch


# ---------------------------------------------------------------------------------------------------------- timing


def _timed(run_batch) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) of one batch."""
    wall, cpu = time.perf_counter(), time.process_time()
    run_batch()
    return time.perf_counter() - wall, time.process_time() - cpu


def counting_throughput(run_batch, batch_size: int, repeats: int) -> dict:
    """Median samples/s (wall, and per CPU-second of this process) of one runner after a warm-up batch."""
    run_batch()  # compile / warm up
    walls, cpus = [], []
    for _ in range(repeats):
        wall, cpu = _timed(run_batch)
        walls.append(batch_size / wall)
        cpus.append(batch_size / max(cpu, 1e-9))
    return {"samples_per_s": statistics.median(walls), "samples_per_cpu_s": statistics.median(cpus),
            "all_samples_per_s": [round(v, 1) for v in walls]}


def certify_seconds_per_image(apply_fn, params, images: int, batch_size: int) -> float:
    import jax

    from robust_jax.smoothing import certify

    rng = np.random.default_rng(4)
    key = jax.random.key(5)

    def one(index: int) -> float:
        x = rng.uniform(0, 1, IMAGE_SHAPE).astype(np.float32)
        start = time.perf_counter()
        certify(apply_fn, params, x, sigma=SIGMA, n0=N0, n=N, alpha=ALPHA, batch_size=batch_size,
                key=jax.random.fold_in(key, index), num_classes=NUM_CLASSES)
        return time.perf_counter() - start

    # Compiles every step certify needs (n0 and n batches) on a short run with the same shapes.
    certify(apply_fn, params, rng.uniform(0, 1, IMAGE_SHAPE).astype(np.float32), sigma=SIGMA, n0=N0,
            n=batch_size, alpha=ALPHA, batch_size=batch_size, key=key, num_classes=NUM_CLASSES)
    seconds = []
    for index in range(images):
        seconds.append(one(index))
        print(f"certify image {index}: {seconds[-1]:.1f} s (load {os.getloadavg()[0]:.1f})", flush=True)
    return statistics.median(seconds)


def ours(args) -> dict:
    """Our figures, this process only: prediction agreement, counting throughput, and certify seconds per image."""
    import jax.numpy as jnp

    from robust_jax.models import resnet
    from robust_jax.smoothing.sampling import counting_streams

    if args.streams:
        os.environ["ROBUST_JAX_COUNTING_STREAMS"] = str(args.streams)
    model, variables = random_resnet(args.depth)
    apply_fn, params = resnet.fast_inference(model, variables, dtype=jnp.dtype(args.dtype))
    # Folding and slicing change float rounding, bfloat16 much more: how often does the prediction change?
    figures = {"prediction_agreement_with_float32": prediction_agreement(model, variables, args.dtype,
                                                                         batch_size=args.batch_size)}
    counting = JaxCounting(apply_fn, params, args.batch_size)
    streams = counting_streams(counting.mesh)
    if streams > 1:  # the one-CPU-device form of the step: do its shares predict what one program does?
        images = np.random.default_rng(6).uniform(0, 1, (4, *IMAGE_SHAPE)).astype(np.float32)
        figures["stream_agreement_with_one_program"] = stream_agreement(apply_fn, params, images, args.batch_size,
                                                                        streams)
    figures.update(counting_throughput(counting.run_batch, args.batch_size, args.repeats))
    figures["counting_streams"] = streams
    if args.compare_unfolded:
        unfolded = counting_throughput(JaxCounting(model.apply, variables, args.batch_size).run_batch,
                                       args.batch_size, args.repeats)
        figures["unfolded_float32_samples_per_s"] = unfolded["samples_per_s"]
    print(f"ours {figures['samples_per_s']:7.1f} samples/s  {figures['samples_per_cpu_s']:7.1f} samples/CPU-s  "
          f"runs {figures['all_samples_per_s']}", flush=True)
    if args.images:
        figures["certify_s_per_image"] = certify_seconds_per_image(apply_fn, params, args.images, args.batch_size)
    return figures


def reference(args) -> dict:
    """The PyTorch ResNet-110's figures, this process only; its certify time estimated as (n0 + n) / samples_per_s
    (what Cohen et al.'s certify runs)."""
    figures = counting_throughput(torch_counting(args.batch_size), args.batch_size, args.repeats)
    figures["certify_s_per_image"] = (N0 + N) / figures["samples_per_s"]
    print(f"reference {figures['samples_per_s']:7.1f} samples/s  runs {figures['all_samples_per_s']}", flush=True)
    return figures


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"), help="compute dtype")
    parser.add_argument("--depth", type=int, default=110,
                        help="CIFAR ResNet depth, 6n + 2 (110; smaller for quick checks, ours only)")
    parser.add_argument("--batch_size", type=int, default=BATCH_SIZE)
    parser.add_argument("--repeats", type=int, default=5, help="timed batches per process for samples_per_s")
    parser.add_argument("--images", type=int, default=3, help="images timed for certify_s_per_image")
    parser.add_argument("--with_torch_reference", action="store_true",
                        help="also time the PyTorch ResNet-110 (2 threads), alternating processes with ours")
    parser.add_argument("--streams", type=int, default=0,
                        help="ours: single-threaded streams of the counting step on one CPU device (sets "
                             "ROBUST_JAX_COUNTING_STREAMS; 1 = one program with XLA's threads; 0 = the default, one "
                             "per core)")
    parser.add_argument("--compare_unfolded", action="store_true",
                        help="also time the plain (unfolded, float32) Flax model's counting step")
    alternate.add_side_flags(parser)
    args = parser.parse_args(argv)
    if args.batch_size < 1 or args.repeats < 1 or args.images < 0 or args.pairs < 1 or args.streams < 0:
        parser.error("--batch_size, --repeats and --pairs must be >= 1, --images and --streams >= 0")
    if args.depth < 8 or (args.depth - 2) % 6:
        parser.error(f"--depth={args.depth} must be 6n + 2 with n >= 1")
    if args.depth != 110 and (args.with_torch_reference or args.side == "reference"):
        parser.error(f"--depth={args.depth}: the PyTorch reference is ResNet-110 only")
    return args


def main(argv=None):
    args = parse_args(argv)
    if alternate.run_side_if_asked(args, ours, reference):
        return

    details = {"load_average_before": os.getloadavg(), "dtype": args.dtype, "depth": args.depth,
               "batch_size": args.batch_size,
               "xla_flags": os.environ.get("XLA_FLAGS", "")}
    if args.with_torch_reference:
        forwarded = [f"--dtype={args.dtype}", f"--depth={args.depth}", f"--batch_size={args.batch_size}",
                     f"--repeats={args.repeats}", f"--images={args.images}", f"--streams={args.streams}"]
        forwarded += ["--compare_unfolded"] if args.compare_unfolded else []
        comparison = alternate.compare("experiments.benchmarks.certify_throughput", forwarded, args.pairs)
        details["comparison"] = comparison
        figures = {name: value["ours"] for name, value in comparison["figures"].items()}
        results = {"samples_per_s": figures["samples_per_s"],
                   "certify_s_per_image": figures.get("certify_s_per_image"),
                   "samples_per_s_vs_torch": comparison["figures"]["samples_per_s"]["ratio"],
                   "prediction_agreement_with_float32": figures["prediction_agreement_with_float32"]}
    else:
        figures = ours(args)
        details.update(figures)
        results = {"samples_per_s": figures["samples_per_s"], "certify_s_per_image": figures.get("certify_s_per_image")}
    details["load_average_after"] = os.getloadavg()
    print(json.dumps({"details": details}))
    print(json.dumps({"benchmark": "certify_throughput", "results": results}))


if __name__ == "__main__":
    main()
