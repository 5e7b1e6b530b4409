"""CLIP ViT-B/32 throughput on CPU: image-tower forward and full training step, images per second.

    python -m experiments.benchmarks.clip_throughput [--with_torch_reference] [--seconds 20] [--repeats 3]

Setting (issue 6): ViT-B/32 with random initialisation (`robust_jax.models.clip.get_config('ViT-B-32')`), float32.
  forward: `encode_image` on a batch of 32 images of 224x224, no gradient.
  train:   a full CLIP step at batch 16: both towers (77 text tokens), symmetric contrastive loss, backward, AdamW
           (lr 5e-4, weight decay 0.1), parameters and optimiser state donated to the step.
Each is compiled and warmed up, then timed over `--repeats` runs of at least `--seconds` seconds; the median is
reported. Reference (open-clip-torch 3.3, ViT-B-32 random init, torch 2.13 CPU, 2 threads, on the project's 2-core
machine, quiet): forward 17.9 images/s, train 2.97 images/s; targets >= 1.2x of both. open_clip cannot be installed
here, so `--with_torch_reference` times HuggingFace transformers' torch `CLIPModel` (ViT-B/32 by default config,
the same architecture) in the same run, and prints the ratios: on a shared machine the ratio is the fair comparison.
The last line is {"benchmark": "clip_throughput", "results": {"forward_images_per_s": ..., "train_images_per_s": ...}}.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

FORWARD_BATCH, TRAIN_BATCH, IMAGE_SIZE, CONTEXT = 32, 16, 224, 77
LEARNING_RATE, WEIGHT_DECAY = 5e-4, 0.1


def _timed(run_batches, seconds: float, repeats: int, batch_size: int) -> float:
    """Median images/s; run_batches(n) runs n batches and waits for them."""
    run_batches(1)  # compile and warm up
    start = time.perf_counter()
    run_batches(1)
    n = max(1, int(round(seconds / max(time.perf_counter() - start, 1e-6))))
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        run_batches(n)
        rates.append(n * batch_size / (time.perf_counter() - start))
    return statistics.median(rates)


def jax_rates(seconds: float, repeats: int) -> dict[str, float]:
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax

    from robust_jax.models import clip as clip_lib

    model = clip_lib.CLIP(clip_lib.get_config("ViT-B-32"))
    params = clip_lib.init_params(model, jax.random.key(0))
    rng = np.random.default_rng(0)
    images = jnp.asarray(rng.normal(size=(FORWARD_BATCH, IMAGE_SIZE, IMAGE_SIZE, 3)).astype(np.float32))
    encode_image, _ = clip_lib.jit_encoders(model)

    def forward(n):
        out = None
        for _ in range(n):
            out = encode_image(params, images)
        jax.block_until_ready(out)

    rates = {"forward_images_per_s": _timed(forward, seconds, repeats, FORWARD_BATCH)}

    optimizer = optax.adamw(LEARNING_RATE, weight_decay=WEIGHT_DECAY)
    train_images = images[:TRAIN_BATCH]
    token_ids = jnp.asarray(rng.integers(1, 49407, (TRAIN_BATCH, CONTEXT)).astype(np.int32))

    def loss_fn(p):
        logits_per_image, _ = model.apply(p, train_images, token_ids)
        labels = jnp.arange(TRAIN_BATCH)
        return 0.5 * (optax.softmax_cross_entropy_with_integer_labels(logits_per_image, labels).mean()
                      + optax.softmax_cross_entropy_with_integer_labels(logits_per_image.T, labels).mean())

    @jax.jit
    def step(p, opt_state):
        loss, grads = jax.value_and_grad(loss_fn)(p)
        updates, opt_state = optimizer.update(grads, opt_state, p)
        return optax.apply_updates(p, updates), opt_state, loss

    step = jax.jit(step.__wrapped__, donate_argnums=(0, 1))
    holder = {"params": params, "opt_state": optimizer.init(params)}

    def train(n):
        loss = None
        for _ in range(n):
            holder["params"], holder["opt_state"], loss = step(holder["params"], holder["opt_state"])
        jax.block_until_ready(loss)

    rates["train_images_per_s"] = _timed(train, seconds, repeats, TRAIN_BATCH)
    return rates


def torch_rates(seconds: float, repeats: int) -> dict[str, float]:
    """HuggingFace transformers' torch CLIPModel, default config = ViT-B/32 (open_clip is not installable here)."""
    import torch
    import transformers

    torch.set_num_threads(2)
    torch.manual_seed(0)
    model = transformers.CLIPModel(transformers.CLIPConfig())
    images = torch.randn(FORWARD_BATCH, 3, IMAGE_SIZE, IMAGE_SIZE)
    model.eval()

    def forward(n):
        with torch.no_grad():
            for _ in range(n):
                model.get_image_features(pixel_values=images)

    rates = {"forward_images_per_s": _timed(forward, seconds, repeats, FORWARD_BATCH)}
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE, weight_decay=WEIGHT_DECAY)
    train_images = images[:TRAIN_BATCH]
    token_ids = torch.randint(1, 49407, (TRAIN_BATCH, CONTEXT))

    def train(n):
        for _ in range(n):
            out = model(input_ids=token_ids, pixel_values=train_images)
            labels = torch.arange(TRAIN_BATCH)
            loss = 0.5 * (torch.nn.functional.cross_entropy(out.logits_per_image, labels)
                          + torch.nn.functional.cross_entropy(out.logits_per_text, labels))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

    rates["train_images_per_s"] = _timed(train, seconds, repeats, TRAIN_BATCH)
    return rates


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="minimum length of one timed run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--with_torch_reference", action="store_true",
                        help="also time transformers' torch CLIPModel ViT-B/32 (2 threads) in this run")
    args = parser.parse_args(argv)
    details = {"load_average_before": os.getloadavg(), "reference_open_clip": {"forward_images_per_s": 17.9,
                                                                                "train_images_per_s": 2.97}}
    results = jax_rates(args.seconds, args.repeats)
    for name, value in results.items():
        print(f"jax   {name:22s} {value:.2f}", flush=True)
        details[f"{name}_vs_open_clip_reference"] = value / details["reference_open_clip"][name]
    if args.with_torch_reference:
        reference = torch_rates(args.seconds, args.repeats)
        for name, value in reference.items():
            print(f"torch {name:22s} {value:.2f}", flush=True)
            details[f"torch_hf_{name}"] = value
            details[f"{name}_speedup_vs_torch_hf"] = results[name] / value
    details["load_average_after"] = os.getloadavg()
    print(json.dumps({"details": details}))
    print(json.dumps({"benchmark": "clip_throughput", "results": results}))


if __name__ == "__main__":
    main()
