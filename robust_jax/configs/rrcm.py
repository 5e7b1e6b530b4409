"""Consistency denoising (rRCM) against diffusion-denoised smoothing and noise-trained classifiers: the smoothing
study with every method on the same data, certified through the same path.

Command:
  python -m experiments.main --config=rrcm:cpu --workdir=workdirs/rrcm

Methods (config.methods): gaussian, gaussian_consistency, denoised, rrcm (see robust_jax/smoothing/study.py); each is
certified with CERTIFY (alpha = 0.001, n0 = 100) on the same test examples with the same noise, and its inference
cost per noise sample is measured (XLA FLOPs in results.json, seconds in inference_cost.json).

Presets:
  tiny  seconds; tests and Colab: every method with a few steps each, n = 200 on 9 test digits. Numbers are not
        meaningful.
  cpu   (default) sklearn digits (8x8, 1,437 training / 360 test images), sigma in {0.25, 0.5}, every 3rd test digit
        certified (120) with n = 10,000.
          gaussian / gaussian_consistency: SmallCNN (32, 64 channels), 4,000 Adam steps at batch 128 per sigma,
            1-pixel translations; consistency lambda = 20, eta = 0.5, 2 copies
            (also the fine-tuning loss of rrcm and denoised).
          denoised: TinyUNet (32 channels) DDPM denoiser, 2,000 steps; SmallCNN on clean digits, 2,000 steps;
            fine-tuned on denoised digits per sigma, 1,000 steps with the consistency loss.
          rrcm: ViT (width 64, depth 4, 4 heads, MLP 128, 4x4 patches: 6 tokens), pretrained 2,000 steps at
            batch 128 (curriculum 21 -> 81 levels, EMA 0.99 -> 0.9999, tau 0.2), fine-tuned 1,000 steps per sigma.
        Measured: see MEASURED below.
  cifar10   for accelerators: CIFAR-10 through the tfds loaders (--config.data_dir), sigma in {0.25, 0.5, 1.0},
            CERTIFY with n = 100,000 on every 20th test image. rrcm: ViT-B/4 at 32x32 (86 M backbone parameters),
            projector 2048 -> 256, pretrained 300k steps at batch 2048 (AdamW 1e-4, weight decay 0, 10k warm-up
            steps then cosine, clipping 2.0), fine-tuned per sigma with layer-wise decay 0.75. gaussian(_consistency):
            Cohen et al.'s ResNet-110 for 90 epochs. denoised: a TinyUNet with 128 channels as the diffusion model
            (Carlini et al. use an off-the-shelf ADM model; a TinyUNet checkpoint can be loaded with
            --config.denoised.denoiser_checkpoint) and the ResNet-110 on clean images, fine-tuned on denoised ones.
  imagenet  the same for ImageNet: ViT-B/16 at 224x224, projector hidden 4096, batch 4096, 600k steps, AdamW 2e-4,
            weight decay 0.03; ResNet-50 for the other methods; sigma in {0.25, 0.5, 1.0}, every 100th validation image.

Output: certified_accuracy.{md,csv,png} (every method, one table and one plot), inference_cost.json, and
results.json metrics["certified_accuracy"][method]["sigma=0.25"]["r=0.5"], metrics["inference_flops_per_sample"][method].

MEASURED (cpu preset), 2026-11-29, on the project's shared 2-core CPU under a load average of 12-17 (other
jobs on the machine; everything runs 5-10x slower than on an idle machine):
  * inference cost per noise sample (experiments/benchmarks/rrcm_inference_cost.py, batch 1000, the certification
    apply_fns): gaussian 2.295 MFLOP / 97 us; denoised 13.639 MFLOP / 981 us; rrcm 1.866 MFLOP / 104 us.
    rrcm / denoised = 0.137 in FLOPs and 0.106 in time: below 1/5 both ways.
  * the full preset did not finish in the time it was given: under that load it needs well over an hour (the rrcm
    pretraining ran at ~1 step/s, the denoised certification alone needs 2.4 M samples at ~1 ms). Estimated on an idle
    machine from the parts: ~35-40 min, over the 25-minute target (the denoised method's certification is ~12 min).
  * proxy at sigma = 0.25 (same data and models; the fraction of every-3rd test digits whose noisy accuracy over
    1,000 draws is >= 0.985, about what certifies r = 0.5 with n = 10,000): denoised with the clean classifier 0.67
    (r = 0: 0.97), fine-tuned on denoised digits 0.65 (r = 0: 0.98).
"""

import ml_collections

from robust_jax.configs import smoothing

PRESETS = ("tiny", "cpu", "cifar10", "imagenet")
METHODS = ("gaussian", "gaussian_consistency", "denoised", "rrcm")


def get_config(preset: str = "cpu") -> ml_collections.ConfigDict:
    from robust_jax.core.checks import check_preset

    preset = check_preset(preset, PRESETS)
    c = smoothing.get_config(preset)  # the smoothing study's preset of the same name, then every method
    c.methods = METHODS
    c.consistency_lambda = 10.0
    if preset == "tiny":
        c.rrcm.update(backbone="Ti", patch_size=4, width=16, depth=1, num_heads=2, mlp_dim=32, projection_dim=8,
                      projector_hidden_dim=32, level_embedding_dim=16, pretrain_steps=8, pretrain_batch_size=32,
                      pretrain_warmup_steps=2, finetune_steps=6, finetune_batch_size=32)
        c.denoised.update(denoiser_channels=8, denoiser_steps=8, denoiser_batch_size=32, classifier_steps=8,
                          finetune_steps=4)
        c.num_steps = 12
        c.checkpoint_every = 4
        c.certify_every = 40
    elif preset == "cpu":
        c.sigmas = (0.25, 0.5)
        c.radii = (0.0, 0.25, 0.5, 0.75, 1.0)
        c.consistency_lambda = 20.0
    else:
        cifar = preset == "cifar10"
        c.sigmas = (0.25, 0.5, 1.0)
        c.rrcm.update(
            backbone="B", patch_size=4 if cifar else 16, width=0, depth=0, num_heads=0, mlp_dim=0,
            projection_dim=256, projector_hidden_dim=2048 if cifar else 4096, level_embedding_dim=256,
            pretrain_steps=300_000 if cifar else 600_000, pretrain_batch_size=2048 if cifar else 4096,
            pretrain_learning_rate=1e-4 if cifar else 2e-4, pretrain_weight_decay=0.0 if cifar else 0.03,
            pretrain_warmup_steps=10_000, gradient_clip=2.0,
            # Fine-tuning length and rates are not in the notes: 100 epochs at batch 1024 (CIFAR), 30 (ImageNet).
            finetune_steps=100 * 50_000 // 1024 if cifar else 30 * 1_281_167 // 1024, finetune_batch_size=1024,
            finetune_learning_rate=5e-4, finetune_weight_decay=0.05, layer_decay=0.75)
        c.denoised.update(
            denoiser_channels=128, denoiser_steps=200_000 if cifar else 400_000, denoiser_batch_size=512,
            denoiser_learning_rate=2e-4, classifier_steps=c.num_steps, classifier_learning_rate=c.learning_rate,
            finetune_steps=10 * (50_000 if cifar else 1_281_167) // c.batch_size, finetune_learning_rate=0.01)
    return c
