"""Omniview-Tuning's min step on CLIP ViT-B/32: images per second at batch 16.

    python -m experiments.benchmarks.omniview_min_step [--seconds 20] [--repeats 3] [--variant ovt] [--batch 16]

Setting (issue 11, point 7): ViT-B/32 with random initialisation (`robust_jax.models.clip.get_config('ViT-B-32')`,
the paper preset's base model), float32, the study's OVT min step exactly as `core.train` runs it
(`core.train.compiled_train_step`): a batch of 16 (11 multi-view + 5 2D pairs, about 2:1) of 224 px images and
77-token captions, rotation/translation augmentation, LoRA folded into the frozen image tower, VIFormer, the frozen
text tower, L_ITC + L_VI (4 hard views in the batch), AdamW on the 6.6M tuning parameters; the frozen backbone is a
constant of the step. Compiled and warmed up, then timed over `--repeats` runs of at least `--seconds` seconds; the
median is reported. Compare with the full CLIP training step of `clip_throughput.py` (both towers trained, batch 16),
run in its own process. `min_step_runner` builds the same step for any omniview config and batch (the benchmark
suite times the paper preset's batch of 512 + 256 with it, and the tiny preset's small CLIP for quick checks).
The last line is {"benchmark": "omniview_min_step", "results": {"min_step_images_per_s": ...}}.
"""

from __future__ import annotations

import argparse
import json
import os

from experiments.benchmarks.clip_throughput import _timed, caption_token_ids

BATCH, MULTIVIEW = 16, 11
ALIGNED_VIEWS = 4


def base_clip(config):
    """The omniview config's base CLIP architecture: the named OpenCLIP model for imported bases, else the
    from-scratch CLIP of the config's fields (vocabulary of the procedural captions)."""
    from robust_jax.models import clip as clip_lib
    from robust_jax.omniview import pretrain

    if config.base_source in ("openclip", "huggingface") and config.base_model_name:
        clip_config = clip_lib.get_config(config.base_model_name)
        if clip_config.vision.image_size != config.image_size:
            raise ValueError(f"config.image_size={config.image_size} but {config.base_model_name} takes "
                             f"{clip_config.vision.image_size} px images")
        return clip_lib.CLIP(clip_config)
    return pretrain.build_model(config, pretrain.build_tokenizer(config).vocab_size)


def min_step_runner(config, batch: int, multiview: int, variant: str = "ovt", seed: int = 0):
    """The min step of `variant` for an omniview config as a `CoreStep`, on random base weights, images and captions:
    `multiview` multi-view rows (the first ALIGNED_VIEWS aligned to targets) and batch - multiview 2D pairs."""
    import jax
    import numpy as np

    from experiments.benchmarks.train_step import CoreStep
    from robust_jax.models import clip as clip_lib
    from robust_jax.omniview import tuning

    if not 0 < multiview <= batch:
        raise ValueError(f"multiview={multiview} must be in [1, batch={batch}]")
    model = base_clip(config)
    base = clip_lib.init_params(model, jax.random.key(seed))
    # The learning-rate schedule does not change the step's work: any epoch length serves an epoch-stepped one.
    setup = tuning.setup_variant(tuning.VARIANTS[variant], model, base, config, None,
                                 epoch_steps=config.steps_per_epoch or 1)
    rng = np.random.default_rng(seed)
    size, text = model.config.vision.image_size, model.config.text
    rows = np.concatenate([np.arange(multiview), np.full(batch - multiview, -1)]).astype(np.int32)
    arrays = {"image": rng.uniform(size=(batch, size, size, 3)).astype(np.float32),
              "row": rows, "example_id": np.arange(batch, dtype=np.int32),
              "token_ids": caption_token_ids(rng, batch, text.context_length, text.vocab_size)}
    aligned = min(ALIGNED_VIEWS, multiview)
    slot = np.full(multiview, -1, np.int32)
    slot[:aligned] = np.arange(aligned)
    constants = {"clip": base, "targets_TxE": rng.normal(size=(aligned, model.config.embed_dim)).astype(np.float32),
                 "target_slot_N": slot}
    return CoreStep(setup.init_fn, setup.loss_fn, setup.optimizer, arrays, constants, seed=seed + 1)


def min_step_rate(seconds: float, repeats: int, variant: str = "ovt", *, preset: str = "paper", batch: int = BATCH,
                  multiview: int = MULTIVIEW) -> float:
    """Median images/s of the min step of configs/omniview.py's `preset` (its base model) at `batch`."""
    from robust_jax.configs import omniview as omniview_config

    step = min_step_runner(omniview_config.get_config(preset), batch, multiview, variant)
    return _timed(step.run, seconds, repeats, batch)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="minimum length of one timed run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--variant", default="ovt", help="a tuning variant (ovt, lora_only, viformer_only, ...)")
    parser.add_argument("--batch", type=int, default=BATCH, help="images per step (about 2/3 multi-view)")
    parser.add_argument("--preset", default="paper", help="omniview preset whose base model is tuned")
    args = parser.parse_args(argv)
    multiview = MULTIVIEW if args.batch == BATCH else max(1, round(2 * args.batch / 3))
    load_before = os.getloadavg()
    rate = min_step_rate(args.seconds, args.repeats, args.variant, preset=args.preset, batch=args.batch,
                         multiview=multiview)
    print(f"jax   min_step_images_per_s ({args.variant}) {rate:.2f}", flush=True)
    print(json.dumps({"details": {"variant": args.variant, "batch": args.batch, "multiview": multiview,
                                  "preset": args.preset, "load_average_before": load_before,
                                  "load_average_after": os.getloadavg()}}))
    print(json.dumps({"benchmark": "omniview_min_step", "results": {"min_step_images_per_s": rate}}))


if __name__ == "__main__":
    main()
