"""configs/rrcm.py and the smoothing study's checks of its methods: bad input fails before any work, with a
ConfigError naming the field; the presets are valid."""

import numpy as np
import pytest

from robust_jax.configs import rrcm
from robust_jax.core.checks import ConfigError
from robust_jax.core.run import run_study
from robust_jax.smoothing import study
from robust_jax.smoothing.methods.denoised.method import denoiser_shapes


@pytest.mark.parametrize("preset", rrcm.PRESETS)
def test_every_preset_is_the_smoothing_study_with_every_method_and_passes_its_checks(preset):
    config = rrcm.get_config(preset)
    assert config.study == "smoothing" and config.preset == preset
    every = ("gaussian", "gaussian_consistency", "denoised", "denoised_finetuned", "rrcm", "rrcm_scratch")
    # the cpu preset leaves out the fine-tuned denoised baseline (its certification alone takes about 6 minutes)
    assert tuple(config.methods) == (tuple(m for m in every if m != "denoised_finetuned") if preset == "cpu" else every)
    study.check_config(config, device_count=8)


def test_accelerator_presets_follow_the_paper_sizes():
    cifar = rrcm.get_config("cifar10")
    assert (cifar.dataset, cifar.rrcm.backbone, cifar.rrcm.patch_size) == ("cifar10", "B", 4)
    assert (cifar.rrcm.pretrain_batch_size, cifar.rrcm.pretrain_steps) == (2048, 300_000)
    imagenet = rrcm.get_config("imagenet")
    assert (imagenet.dataset, imagenet.rrcm.backbone, imagenet.rrcm.patch_size) == ("imagenet2012", "B", 16)


def _bad(tmp_path, field_pattern, **changes):
    """run_study on the tiny preset with `changes` fails naming the field, and writes nothing."""
    config = rrcm.get_config("tiny")
    for dotted, value in changes.items():
        node = config
        *parents, name = dotted.split("__")
        for parent in parents:
            node = node[parent]
        node[name] = value
    workdir = tmp_path / "run"
    with pytest.raises(ConfigError, match=field_pattern):
        run_study(config, str(workdir))
    assert not workdir.exists()


def test_sigma_outside_the_rrcm_noise_schedule(tmp_path):
    _bad(tmp_path, r"config\.sigmas\[1\]=50\.0 .*rrcm", sigmas=(0.25, 50.0))


def test_sigma_outside_the_diffusion_schedule_names_the_denoised_method(tmp_path):
    # 2 sigma = 0.006 is inside rRCM's levels [0.002, 80] but below the DDPM's smallest noise-to-signal ratio (0.01).
    _bad(tmp_path, r"config\.sigmas\[0\]=0\.003 .*denoised", sigmas=(0.003,))


def test_unknown_method(tmp_path):
    _bad(tmp_path, r"config\.methods\[1\]='diffusion'", methods=("rrcm", "diffusion"))


def test_repeated_method(tmp_path):
    _bad(tmp_path, r"config\.methods=", methods=("rrcm", "rrcm"))


def test_unknown_backbone(tmp_path):
    _bad(tmp_path, r"config\.rrcm\.backbone='XL'", rrcm__backbone="XL")


def test_backbone_that_does_not_fit_the_images(tmp_path):
    _bad(tmp_path, r"config\.rrcm .*patch_size", rrcm__patch_size=3)


def test_curriculum_that_ends_below_its_start(tmp_path):
    _bad(tmp_path, r"config\.rrcm\.curriculum_end_levels=11 .*curriculum_start_levels", rrcm__curriculum_end_levels=11)


def test_consistency_method_without_consistency(tmp_path):
    _bad(tmp_path, r"config\.consistency_lambda=0\.0", consistency_lambda=0.0)


def _write_denoiser(path, channels, image_shape=(8, 8, 1)):
    from robust_jax.configs.smoothing import denoised_block
    from safetensors.numpy import save_file

    block = denoised_block()
    block.denoiser_channels = channels
    save_file({name: np.zeros(shape, np.float32) for name, shape in denoiser_shapes(block, image_shape).items()},
              str(path))


def test_denoiser_checkpoint_of_another_shape(tmp_path):
    path = tmp_path / "denoiser16.safetensors"
    _write_denoiser(path, channels=16)
    _bad(tmp_path, r"config\.denoised\.denoiser_checkpoint=.* has shape \(16,\) .*denoiser_channels.* needs \(8,\)",
         denoised__denoiser_checkpoint=str(path))


def test_denoiser_checkpoint_that_is_missing(tmp_path):
    _bad(tmp_path, r"config\.denoised\.denoiser_checkpoint=.*no such file",
         denoised__denoiser_checkpoint=str(tmp_path / "absent.safetensors"))


def test_denoiser_checkpoint_of_the_right_shape_passes_the_checks(tmp_path):
    path = tmp_path / "denoiser8.safetensors"
    _write_denoiser(path, channels=8)
    config = rrcm.get_config("tiny")
    config.denoised.denoiser_checkpoint = str(path)
    study.check_config(config, device_count=8)
