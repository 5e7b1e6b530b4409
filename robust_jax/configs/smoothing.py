"""Randomized smoothing (Cohen et al. 2019): noise-trained base classifiers, CERTIFY, certified-accuracy curves.

Command:
  python -m experiments.main --config=smoothing:cpu --workdir=workdirs/smoothing

Presets:
  tiny  seconds; tests and Colab (two sigmas, n = 200, a handful of test digits). Numbers are not meaningful.
  cpu   (default) digits, SmallCNN (32, 64 channels) trained per sigma in {0.12, 0.25, 0.5} with Gaussian noise,
        consistency regularisation (Jeong & Shin, lambda = 10, eta = 0.5, 2 copies) and 1-pixel translations;
        4,000 Adam steps at batch 128; CERTIFY with
        alpha = 0.001, n0 = 100, n = 10,000 on every 3rd test digit (120 of 360). See results.json / certified_accuracy.md.
        Measured: 7.0 min on an idle 2-core CPU (a run on a loaded machine gave identical metrics). Certified accuracy
        at r = 0 / 0.25 / 0.5 / 0.75: sigma 0.12: 1.00 / 0.95 / 0 / 0; sigma 0.25: 0.98 / 0.93 / 0.68 / 0.17;
        sigma 0.5: 0.89 / 0.62 / 0.22 / 0. (n = 10,000 at alpha = 0.001 caps the radius at 3.2 sigma.)

  cifar10   Cohen et al.'s CIFAR-10 setting, for accelerators: ResNet-110, sigma in {0.12, 0.25, 0.5, 1.0}, SGD
            (lr 0.1, momentum 0.9, weight decay 1e-4, x0.1 every 30 epochs) for 90 epochs at batch 256 with the
            loaders' crop + flip augmentation; CERTIFY with alpha = 0.001, n0 = 100, n = 100,000, batch 400 on every
            20th test image (500). Needs tfds cifar10 prepared in array_record format: --config.data_dir=DIR.
  imagenet  the same for ImageNet: ResNet-50, sigma in {0.25, 0.5, 1.0}, 90 epochs at batch 256, every 100th
            validation image (500). Needs tfds imagenet2012 in array_record format under --config.data_dir.
  For the ResNets, certification runs the BatchNorm-folded network (resnet.fast_inference).

Output: certified_accuracy.{md,csv,png} in the workdir and
results.json metrics["certified_accuracy"]["sigma=0.25"]["r=0.5"] etc. ("best" is the envelope over sigma).
"""

import ml_collections

from robust_jax.core.config import new_config

PRESETS = ("tiny", "cpu", "cifar10", "imagenet")


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
    # Training (per sigma).
    c.eval_batch_size = 512
    c.optimizer = "adam"  # or "sgd" (with momentum and weight_decay)
    c.lr_schedule = "cosine"  # or "step": x0.1 after 1/3 and 2/3 of the steps
    c.momentum = 0.9
    c.weight_decay = 0.0
    c.consistency_lambda = 10.0  # > 0: Jeong & Shin consistency regularisation with consistency_copies copies
    c.consistency_eta = 0.5
    c.consistency_copies = 2
    c.max_translation = 1  # > 0: random translation by up to this many pixels before the noise
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
        c.max_translation = 0  # the loaders augment (crop + flip)
        c.log_every = 500
        c.checkpoint_every = 5000
        c.n = 100_000
        c.certify_batch_size = 400
        c.certify_every = 20 if cifar else 100
    return c
