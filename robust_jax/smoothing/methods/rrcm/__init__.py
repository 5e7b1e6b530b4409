"""The rrcm method: see method.py."""

from robust_jax.smoothing.methods.rrcm.method import check, classifiers, trainings  # noqa: F401
