"""The rRCM base classifier in the form certify / sample_counts take: apply_fn(variables, inputs) -> logits.

inputs are x + delta with x in [0, 1] and delta ~ N(0, sigma^2 I) (sampling.py adds the noise); they are mapped to
[-1, 1] (2 * inputs - 1, so the noise std becomes 2 sigma), the model is told the discrete level nearest to 2 sigma
(noise_schedule.smoothing_level), and one forward pass gives the head's logits. No separate denoiser.

The apply_fn is a frozen dataclass: two built with the same model, sigma and number of levels are equal and hash
equal, so sample_counts' compiled step is reused across calls.
"""

from __future__ import annotations

import dataclasses

import jax

from robust_jax.smoothing.methods.rrcm.noise_schedule import CERTIFICATION_NUM_LEVELS, smoothing_level
from robust_jax.smoothing.methods.rrcm.model import RRCMNet


@dataclasses.dataclass(frozen=True)
class RRCMClassifierApply:
    model: RRCMNet
    level: float  # the discrete level the model is told, in [-1, 1] data units

    def __call__(self, variables, inputs_BxHxWxC: jax.Array) -> jax.Array:
        out = self.model.apply(variables, 2.0 * inputs_BxHxWxC - 1.0, self.level, train=False, project=False)
        return out.logits


def rrcm_apply_fn(model: RRCMNet, sigma: float, num_levels: int = CERTIFICATION_NUM_LEVELS) -> RRCMClassifierApply:
    """apply_fn(variables, inputs) -> (batch, num_classes) logits for smoothing noise sigma on [0, 1] inputs.

    variables = {"params": ...} of a model with a classification head (num_classes >= 1).
    """
    if model.backbone.num_classes < 1:
        raise ValueError("certification needs a classification head: build the model with num_classes >= 1")
    _, level = smoothing_level(sigma, num_levels)
    return RRCMClassifierApply(model=model, level=level)
