"""The denoised method: see method.py."""

from robust_jax.smoothing.methods.denoised.method import check, classifiers, trainings  # noqa: F401
