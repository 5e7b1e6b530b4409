"""The smoothing methods, one subpackage each, and their registry.

Every method module has `check(config, device_count)` (its config block; may be absent), `trainings(config, data,
method)` (the generator of its `core.train.Training`s, named "<method>/...") and `classifiers(config, data, method,
trained, method_dir)` ({sigma: the base classifier to certify} from the trained states).

  gaussian              per sigma, the config's classifier on noisy images (Cohen et al.)
  gaussian_consistency  the same with consistency regularisation (Jeong & Shin): the gaussian module
  denoised              diffusion-denoised smoothing as Carlini et al. have it: a denoiser, then a classifier trained
                        on clean images (no fine-tuning)
  denoised_finetuned    the same, the classifier fine-tuned per sigma on denoised noisy images (the denoised module;
                        it shares the denoised method's denoiser and clean classifier when both run)
  rrcm                  rRCM (Lei et al.): consistency pretraining of a ViT, fine-tuned per sigma
  rrcm_scratch          the ablation: rRCM's fine-tuning from a random init (the rrcm module)
"""

from robust_jax.smoothing.methods import denoised, gaussian, rrcm

METHODS = {"gaussian": gaussian, "gaussian_consistency": gaussian, "denoised": denoised,
           "denoised_finetuned": denoised, "rrcm": rrcm, "rrcm_scratch": rrcm}
