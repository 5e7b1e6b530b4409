"""Randomized smoothing (Cohen et al. 2019): noise-trained base classifiers, CERTIFY, certified-accuracy curves.

Command:
  python -m experiments.main --config=smoothing:cpu --workdir=workdirs/smoothing

Presets:
  tiny      seconds; tests and Colab (two sigmas, n = 200, a handful of test digits). Numbers are not meaningful.
  cpu       (default) digits, SmallCNN (32, 64 channels) per sigma in {0.12, 0.25, 0.5}: Gaussian noise, consistency
            regularisation (Jeong & Shin, lambda = 10, eta = 0.5, 2 copies), 1-pixel translations, 4,000 Adam steps
            at batch 128; CERTIFY (alpha = 0.001, n0 = 100, n = 10,000) on every 3rd test digit (120 of 360).
            2-core CPU: 7.0 min idle; 10 min 38 s in `make reproduce` (2026-11-30, light other load).
            Expected certified accuracy at r = 0 / 0.25 / 0.5 / 0.75: sigma 0.25: 0.98 / 0.93 / 0.68 / 0.17;
            sigma 0.5: 0.89 / 0.62 / 0.22 / 0 (one run on 120 digits: about +-0.04 at 0.79).
  cifar10   Cohen et al.'s CIFAR-10 setting, for accelerators (not run): ResNet-110, sigma in {0.12, 0.25, 0.5, 1.0},
            SGD (lr 0.1, momentum 0.9, weight decay 1e-4, x0.1 every 30 epochs), 90 epochs at batch 256, crop + flip;
            CERTIFY with n = 100,000, batch 400 on every 20th test image (500). Needs tfds cifar10 in array_record
            format: --config.data_dir=DIR.
  imagenet  the same for ImageNet: ResNet-50, sigma in {0.25, 0.5, 1.0}, every 100th validation image (500).
  The ResNets are certified BatchNorm-folded (resnet.fast_inference). config.methods: cpu and tiny train
  "gaussian_consistency", cifar10 and imagenet "gaussian"; configs/rrcm.py compares all four methods.

Output: certified_accuracy.{md,csv,png}, <method>/certified_accuracy.*, inference_cost.json; results.json
metrics["certified_accuracy"][method]["sigma=0.25"]["r=0.5"] ("best": the envelope over sigma).
Measurements and history: docs/results/smoothing.md
"""

import ml_collections

from robust_jax.core.config import new_config

PRESETS = ("tiny", "cpu", "cifar10", "imagenet")


def rrcm_block() -> ml_collections.ConfigDict:
    """The "rrcm" method: pretraining (consistency + instance discrimination) once, then fine-tuning per sigma.

    Backbone: a ViT preset ("Ti", "S", "B"); patch_size, width, depth, num_heads, mlp_dim override it (0: the
    preset's; patch 0: 4 at 32x32, 16 at 224x224). Pretraining: AdamW with linear warm-up then cosine decay, gradient
    clipping by global norm, the official rounding-up discretisation curriculum start -> end levels, the official
    EMA schedule ema_start -> ema_end (shape ema_shape), the two views of `views`. Fine-tuning: a linear head
    (trained or frozen, init std head_init_std), AdamW with warm-up, cosine decay and layer-wise learning-rate decay
    (1.0: none), the consistency loss of the config (consistency_lambda, consistency_eta, consistency_copies) and
    max_translation.
    """
    b = ml_collections.ConfigDict()
    b.backbone = "Ti"
    b.patch_size = 4
    b.width = 64
    b.depth = 4
    b.num_heads = 4
    b.mlp_dim = 128
    b.projection_dim = 64
    b.projector_hidden_dim = 256
    b.level_embedding_dim = 64
    b.temperature = 0.2
    b.curriculum_start_levels = 21
    b.curriculum_end_levels = 81
    b.ema_start = 0.99
    b.ema_end = 0.0  # 0: tied to the run, an averaging horizon of ema_end_horizon of the pretraining steps
    b.ema_end_horizon = 1 / 30  # the official 0.9999 over 300k steps
    b.ema_shape = 15.0  # the official schedule's A (CIFAR-10; 10 for ImageNet)
    b.views = "augment"  # the instance views: "augment" (crop, intensity jitter, blur, solarize) or "translate"
    b.crop_min_area = 0.35
    b.jitter = 0.4
    b.blur_max_sigma = 1.0
    b.pretrain_steps = 2000
    b.pretrain_batch_size = 128
    b.pretrain_learning_rate = 1e-3
    b.pretrain_weight_decay = 0.0
    b.pretrain_warmup_steps = 100
    b.gradient_clip = 2.0  # global-norm clipping of the pretraining gradient (0: none)
    b.finetune_steps = 1000
    b.finetune_batch_size = 128
    b.finetune_learning_rate = 5e-4
    b.finetune_weight_decay = 0.0
    b.finetune_warmup_steps = 0
    b.layer_decay = 1.0
    b.finetune_head = "trained"  # or "frozen" at its init, as the official consistency fine-tuning has it
    b.head_init_std = 0.0  # 0: a zero head; the official draws it with std 2e-5
    return b


def denoised_block() -> ml_collections.ConfigDict:
    """The "denoised" method (Carlini et al.): a DDPM denoiser (TinyUNet, linear betas) trained on the training
    images, or loaded from `denoiser_checkpoint` (a safetensors file written by an earlier run); a classifier of
    config.model trained on clean images (with max_translation); optionally (finetune_steps > 0) that classifier
    fine-tuned per sigma on one-step-denoised noisy images with the config's consistency loss."""
    b = ml_collections.ConfigDict()
    b.denoiser_channels = 32
    b.denoiser_checkpoint = ""  # "": train the denoiser; else a <workdir>/denoised/denoiser.safetensors to reuse
    b.denoiser_steps = 2000
    b.denoiser_batch_size = 128
    b.denoiser_learning_rate = 2e-3
    b.classifier_steps = 2000
    b.classifier_learning_rate = 1e-3
    b.finetune_steps = 1000
    b.finetune_learning_rate = 5e-4
    return b


def get_config(preset: str = "cpu") -> ml_collections.ConfigDict:
    c, preset = new_config("smoothing", preset, PRESETS, num_steps=4000, batch_size=128, learning_rate=1e-3,
                           log_every=100, checkpoint_every=1000)
    c.dataset = "digits"
    c.data_dir = ""  # tfds datasets: where they were prepared in array_record format ("" = the TFDS default)
    c.test_fraction = 0.2  # digits only
    c.model = "small_cnn"
    c.cnn_features = (32, 64)
    c.cnn_hidden = 128
    c.sigmas = (0.12, 0.25, 0.5)
    c.radii = (0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5)
    # Which smoothed classifiers to build, train and certify (each in its own subfolder of the workdir):
    # "gaussian" (noise augmentation), "gaussian_consistency" (+ consistency regularisation), "denoised"
    # (diffusion denoiser + classifier), "rrcm" (consistency-pretrained ViT, fine-tuned). See configs/rrcm.py.
    c.methods = ("gaussian_consistency",)
    # Training (per sigma).
    c.eval_batch_size = 512
    c.optimizer = "adam"  # or "sgd" (with momentum and weight_decay)
    c.lr_schedule = "cosine"  # or "step": x0.1 after 1/3 and 2/3 of the steps
    c.momentum = 0.9
    c.weight_decay = 0.0
    # Jeong & Shin consistency regularisation with consistency_copies noisy copies: the loss of gaussian_consistency,
    # of rRCM fine-tuning and of the denoised method's optional fine-tuning (gaussian ignores it).
    c.consistency_lambda = 10.0
    c.consistency_eta = 0.5
    c.consistency_copies = 2
    c.max_translation = 1  # > 0: random translation by up to this many pixels before the noise
    c.rrcm = rrcm_block()
    c.denoised = denoised_block()
    # Certification.
    c.n0 = 100
    c.n = 10_000
    c.alpha = 0.001
    c.certify_batch_size = 1000
    c.certify_every = 3
    if preset == "tiny":
        c.cnn_features = (8, 16)
        c.cnn_hidden = 32
        c.sigmas = (0.25, 0.5)
        c.num_steps = 30
        c.batch_size = 64
        c.log_every = 10
        c.checkpoint_every = 15
        c.n0 = 20
        c.n = 200
        c.certify_batch_size = 200
        c.certify_every = 40
    elif preset in ("cifar10", "imagenet"):
        cifar = preset == "cifar10"
        c.dataset = "cifar10" if cifar else "imagenet2012"
        c.model = "resnet110" if cifar else "resnet50"
        c.sigmas = (0.12, 0.25, 0.5, 1.0) if cifar else (0.25, 0.5, 1.0)
        c.radii = tuple(0.25 * i for i in range(17)) if cifar else tuple(0.5 * i for i in range(9))
        train_examples = 50_000 if cifar else 1_281_167
        c.batch_size = 256
        c.num_steps = 90 * train_examples // c.batch_size
        c.eval_batch_size = 512 if cifar else 256
        c.optimizer = "sgd"
        c.lr_schedule = "step"
        c.learning_rate = 0.1
        c.weight_decay = 1e-4
        c.consistency_lambda = 0.0
        c.methods = ("gaussian",)
        c.max_translation = 0  # the loaders augment (crop + flip)
        c.log_every = 500
        c.checkpoint_every = 5000
        c.n = 100_000
        c.certify_batch_size = 400
        c.certify_every = 20 if cifar else 100
    return c
