"""Omniview-Tuning's min step on CLIP ViT-B/32 on CPU: images per second at batch 16.

    python -m experiments.benchmarks.omniview_min_step [--seconds 20] [--repeats 3] [--variant ovt]

Setting (issue 11, point 7): ViT-B/32 with random initialisation (`robust_jax.models.clip.get_config('ViT-B-32')`),
float32, the study's OVT min step exactly as `core.train` runs it (`core.train.compiled_train_step`): a batch of 16
(11 multi-view + 5 2D pairs, about 2:1) of 224 px images and 77-token captions, rotation/translation augmentation,
LoRA folded into the frozen image tower, VIFormer, the frozen text tower, L_ITC + L_VI (4 hard views in the batch),
AdamW on the 6.6M tuning parameters; the frozen backbone is a constant of the step. Compiled and warmed up, then
timed over `--repeats` runs of at least `--seconds` seconds; the median is reported. Compare with the full CLIP
training step of `clip_throughput.py` (both towers trained, batch 16), run in its own process.
The last line is {"benchmark": "omniview_min_step", "results": {"min_step_images_per_s": ...}}.
"""

from __future__ import annotations

import argparse
import json
import os

from experiments.benchmarks.clip_throughput import _timed

BATCH, MULTIVIEW, IMAGE_SIZE, CONTEXT = 16, 11, 224, 77


def min_step_rate(seconds: float, repeats: int, variant: str) -> float:
    import jax
    import numpy as np

    from robust_jax.configs import omniview as omniview_config
    from robust_jax.core import mesh as mesh_lib
    from robust_jax.core.train import compiled_train_step, initial_state
    from robust_jax.models import clip as clip_lib
    from robust_jax.omniview import tuning

    config = omniview_config.get_config("paper")
    model = clip_lib.CLIP(clip_lib.get_config("ViT-B-32"))
    base = clip_lib.init_params(model, jax.random.key(0))
    setup = tuning.setup_variant(tuning.VARIANTS[variant], model, base, config, None)
    mesh = mesh_lib.make_data_mesh()
    state, shardings = initial_state(setup.init_fn, setup.optimizer, jax.random.key(1), mesh)
    step = compiled_train_step(setup.loss_fn, setup.optimizer, shardings, mesh)
    rng = np.random.default_rng(0)
    rows = np.concatenate([np.arange(MULTIVIEW), np.full(BATCH - MULTIVIEW, -1)]).astype(np.int32)
    batch = mesh_lib.global_batch(mesh, {
        "image": rng.uniform(size=(BATCH, IMAGE_SIZE, IMAGE_SIZE, 3)).astype(np.float32),
        "row": rows, "example_id": np.arange(BATCH, dtype=np.int32),
        "token_ids": rng.integers(1, 49407, (BATCH, CONTEXT)).astype(np.int32)})
    num_objects = 4
    slot = np.full(MULTIVIEW, -1, np.int32)
    slot[:num_objects] = np.arange(num_objects)
    constants = jax.device_put({"clip": base, "targets_TxE": rng.normal(size=(num_objects, 512)).astype(np.float32),
                                "target_slot_N": slot}, mesh_lib.replicated(mesh))
    train_key = jax.device_put(jax.random.key(2), mesh_lib.replicated(mesh))
    holder = {"state": state}

    def run(n):
        metrics = None
        for _ in range(n):
            holder["state"], metrics = step(holder["state"], batch, train_key, constants)
        jax.block_until_ready(metrics)

    return _timed(run, seconds, repeats, BATCH)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="minimum length of one timed run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--variant", default="ovt", help="a tuning variant (ovt, lora_only, viformer_only, ...)")
    args = parser.parse_args(argv)
    load_before = os.getloadavg()
    rate = min_step_rate(args.seconds, args.repeats, args.variant)
    print(f"jax   min_step_images_per_s ({args.variant}) {rate:.2f}", flush=True)
    print(json.dumps({"details": {"variant": args.variant, "batch": BATCH, "load_average_before": load_before,
                                  "load_average_after": os.getloadavg()}}))
    print(json.dumps({"benchmark": "omniview_min_step", "results": {"min_step_images_per_s": rate}}))


if __name__ == "__main__":
    main()
