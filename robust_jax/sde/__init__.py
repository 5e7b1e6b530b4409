"""Stable neural SDEs for irregular time series (Oh, Lim & Kim, ICLR 2024): models and solvers."""

from robust_jax.sde.models import MODELS, SOLVERS, SDEClassifier, check_model_name, lipswish
from robust_jax.sde.solvers import brownian_increments, diffrax_solve, euler_maruyama

__all__ = [
    "MODELS",
    "SOLVERS",
    "SDEClassifier",
    "brownian_increments",
    "check_model_name",
    "diffrax_solve",
    "euler_maruyama",
    "lipswish",
]
