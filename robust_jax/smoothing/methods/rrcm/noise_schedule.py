"""The EDM / Karras noise levels of rRCM, their discretisation curriculum, and the level used for certification.

Units: levels are standard deviations of Gaussian noise on data in [-1, 1] (variance exploding: x_t = x + t * eps).
Smoothing noise sigma on [0, 1] pixels is 2 * sigma in these units, so certification and fine-tuning tell the model
the discrete level nearest to 2 * sigma (`smoothing_level`).

Levels (descending, index 0 is the noisiest):
    sigma_i = (sigma_max^(1/rho) + i / (N - 1) * (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho,  i = 0 .. N - 1,
with sigma_max = 80, sigma_min = 0.002, rho = 7, so sigma_0 = sigma_max and sigma_{N-1} = sigma_min.
Pretraining draws one index i uniformly from {0, .., N - 2} per batch and pairs sigma_i with the next, smaller level
sigma_{i+1}.

Discretisation curriculum (`DiscretisationCurriculum`), as the official code rounds it (up): with s0 = start_levels
- 1 and s1 = end_levels - 1 intervals,
    N(step) = min(s0 * 2^ceil(step / K'), s1) + 1,   K' = ceil(total_steps / log2(ceil(s1 / s0) + 1)).
For the rRCM defaults (21 -> 81 levels, s1 / s0 = 4) K' = ceil(K / log2(5)) ~ 0.43 K: N = 21 at step 0 only, 41 on
[1, K'] and 81 from K' + 1 (~ 57% of the steps) on. `boundaries` lists the steps where N changes.
"""

from __future__ import annotations

import dataclasses
import math
import numbers

import jax
import jax.numpy as jnp
import numpy as np

SIGMA_MAX = 80.0
SIGMA_MIN = 0.002
RHO = 7.0
SIGMA_DATA = 0.5
# Levels used at fine-tuning and certification time: the curriculum's final discretisation.
CERTIFICATION_NUM_LEVELS = 81


def _check_num_levels(num_levels) -> int:
    if isinstance(num_levels, bool) or not isinstance(num_levels, numbers.Integral) or num_levels < 2:
        raise ValueError(f"num_levels must be an integer >= 2 (the schedule pairs adjacent levels), "
                         f"got {num_levels!r}")
    return int(num_levels)


def level_sigma(index, num_levels, sigma_max: float = SIGMA_MAX, sigma_min: float = SIGMA_MIN,
                rho: float = RHO) -> jax.Array:
    """sigma_index of the N = num_levels schedule; index and num_levels may be traced (the curriculum's N is)."""
    fraction = jnp.asarray(index, jnp.float32) / (jnp.asarray(num_levels, jnp.float32) - 1.0)
    high, low = sigma_max ** (1.0 / rho), sigma_min ** (1.0 / rho)
    return (high + fraction * (low - high)) ** rho


def karras_levels(num_levels: int, sigma_max: float = SIGMA_MAX, sigma_min: float = SIGMA_MIN,
                  rho: float = RHO) -> np.ndarray:
    """All N levels as a float64 numpy array, descending from sigma_max to sigma_min (host side, static N)."""
    num_levels = _check_num_levels(num_levels)
    fraction = np.arange(num_levels, dtype=np.float64) / (num_levels - 1)
    high, low = sigma_max ** (1.0 / rho), sigma_min ** (1.0 / rho)
    return (high + fraction * (low - high)) ** rho


def input_scale(sigma, sigma_data: float = SIGMA_DATA) -> jax.Array:
    """c_in(sigma) = 1 / sqrt(sigma^2 + sigma_data^2): the noisy input times c_in has about unit variance."""
    sigma = jnp.asarray(sigma, jnp.float32)
    return jax.lax.rsqrt(sigma ** 2 + sigma_data ** 2)


def sample_level_index(key: jax.Array, num_levels) -> jax.Array:
    """One index i uniform on {0, .., N - 2} (int32 scalar): the pair (sigma_i, sigma_{i+1}) of a batch."""
    return jax.random.randint(key, (), 0, jnp.asarray(num_levels, jnp.int32) - 1)


def nearest_level(level: float, num_levels: int = CERTIFICATION_NUM_LEVELS) -> tuple[int, float]:
    """(index, sigma_index) of the discrete level closest (absolute difference) to `level`, in [-1, 1] data units.

    A level outside [sigma_min, sigma_max] is a ValueError: the model never saw such noise.
    """
    num_levels = _check_num_levels(num_levels)
    if isinstance(level, bool) or not isinstance(level, numbers.Real) or not math.isfinite(level):
        raise ValueError(f"level must be a finite number, got {level!r}")
    if not SIGMA_MIN <= level <= SIGMA_MAX:
        raise ValueError(f"level={level!r} is outside the noise schedule's range [{SIGMA_MIN}, {SIGMA_MAX}] "
                         "(noise std on [-1, 1] data)")
    levels = karras_levels(num_levels)
    index = int(np.argmin(np.abs(levels - level)))
    return index, float(levels[index])


def smoothing_level(sigma: float, num_levels: int = CERTIFICATION_NUM_LEVELS) -> tuple[int, float]:
    """The level the model is told for smoothing noise sigma on [0, 1] pixels: nearest_level(2 * sigma).

    With N = 81: sigma = 0.25 / 0.5 / 1.0 -> sigma_i ~ 0.493 / 0.965 / 2.004.
    """
    if isinstance(sigma, bool) or not isinstance(sigma, numbers.Real) or not math.isfinite(sigma) or sigma <= 0:
        raise ValueError(f"sigma must be a finite number > 0 (noise std on [0, 1] pixels), got {sigma!r}")
    if not SIGMA_MIN <= 2 * sigma <= SIGMA_MAX:
        raise ValueError(f"sigma={sigma!r} (level 2*sigma={2 * sigma!r} on [-1, 1] data) is outside the noise "
                         f"schedule's range: sigma must be in [{SIGMA_MIN / 2}, {SIGMA_MAX / 2}]")
    return nearest_level(2.0 * float(sigma), num_levels)


@dataclasses.dataclass(frozen=True)
class DiscretisationCurriculum:
    """N(step): the number of discrete levels at a training step (see the module docstring for the rule)."""

    total_steps: int
    start_levels: int = 21
    end_levels: int = 81

    def __post_init__(self):
        for name in ("total_steps", "start_levels", "end_levels"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral):
                raise ValueError(f"{name} must be an integer, got {value!r}")
        if self.total_steps < 1:
            raise ValueError(f"total_steps must be >= 1, got {self.total_steps!r}")
        if self.start_levels < 2:
            raise ValueError(f"start_levels must be >= 2 (adjacent levels are paired), got {self.start_levels!r}")
        if self.end_levels < self.start_levels:
            raise ValueError(f"end_levels={self.end_levels!r} is below start_levels={self.start_levels!r}: "
                             "the curriculum only refines the discretisation (end_levels >= start_levels)")

    @property
    def stage_length(self) -> int:
        """K' = ceil(total_steps / log2(ceil(s1 / s0) + 1)): steps between doublings of the interval count."""
        ratio = math.ceil((self.end_levels - 1) / (self.start_levels - 1))
        return max(1, math.ceil(self.total_steps / math.log2(ratio + 1.0)))

    @property
    def _max_doublings(self) -> int:
        return math.ceil(math.log2((self.end_levels - 1) / (self.start_levels - 1)))

    @property
    def boundaries(self) -> tuple[int, ...]:
        """Steps at which N changes (N(b - 1) < N(b)): 1, K' + 1, 2 K' + 1, ...; those at or beyond total_steps are
        never reached in training."""
        return tuple((k - 1) * self.stage_length + 1 for k in range(1, self._max_doublings + 1))

    def num_levels(self, step):
        """N at `step`: a Python int for an int step, an int32 array for a traced one."""
        s0, s1 = self.start_levels - 1, self.end_levels - 1
        if isinstance(step, numbers.Integral) and not isinstance(step, bool):
            if step < 0:
                raise ValueError(f"step must be >= 0, got {step!r}")
            doublings = min(-(-step // self.stage_length), self._max_doublings)
            return min(s0 * 2 ** doublings, s1) + 1
        step = jnp.asarray(step, jnp.int32)
        doublings = jnp.minimum((step + self.stage_length - 1) // self.stage_length, self._max_doublings)
        return jnp.minimum(s0 * 2 ** doublings, s1).astype(jnp.int32) + 1
