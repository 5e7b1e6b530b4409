"""The gaussian method: see method.py."""

from robust_jax.smoothing.methods.gaussian.method import check, classifiers, trainings  # noqa: F401
