"""The paper's stability properties on the `theory` variants (no stabilisers), over a long horizon.

GSDE stays positive from a positive start; LSDE and LNSDE stay finite with a bounded second moment; an SDE whose
diffusion grows like z^2 blows up under the same Euler–Maruyama step."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from robust_jax.data.timeseries import hermite_coefficients
from robust_jax.sde import SDEClassifier, solvers

HORIZON, STEPS, BATCH, HIDDEN = 10.0, 1000, 16, 8  # dt = 0.01, as for a 101-point series on [0, 1]


def _random_walk_path(horizon, steps):
    rng = np.random.default_rng(0)
    times = np.linspace(0.0, horizon, steps + 1)
    values = np.cumsum(rng.normal(scale=0.1, size=(BATCH, steps + 1, 2)), axis=1)  # random-walk inputs
    values = np.concatenate([np.broadcast_to(times[None, :, None] / horizon, (BATCH, steps + 1, 1)), values], -1)
    return jnp.asarray(times, jnp.float32), tuple(jnp.asarray(c, jnp.float32) for c in hermite_coefficients(times, values))


@pytest.fixture(scope="module")
def long_path():
    return _random_walk_path(HORIZON, STEPS)


def _latent_path(model_name, long_path, key):
    times, coeffs = long_path
    model = SDEClassifier(model_name, num_classes=2, hidden_dim=HIDDEN, hidden_hidden_dim=HIDDEN, theory=True)
    init_key, noise_key = jax.random.split(key)
    variables = model.init(init_key, times, coeffs, noise_key)
    return np.asarray(
        model.apply(variables, times, coeffs, noise_key, method=SDEClassifier.latent, save_path=True)
    )  # (STEPS + 1, BATCH, HIDDEN)


def test_gsde_stays_positive(long_path, key):
    # Positivity is a property of the SDE; an Euler step keeps it while 1 + γ dt + σ dW > 0, i.e. for bounded
    # γ, σ and a small enough dt (a diffusion σ(t) of raw t, growing with t, eventually breaks it).
    path = _latent_path("gsde", long_path, key)
    assert np.isfinite(path).all()
    assert path.min() > 0.0
    assert path[0].min() >= 1e-4  # z0 = softplus(Linear(X(t0))) + 1e-4


@pytest.mark.parametrize("model_name", ["lsde", "lnsde"])
def test_lsde_lnsde_stay_bounded(model_name, long_path, key):
    path = _latent_path(model_name, long_path, key)
    assert np.isfinite(path).all()
    second_moment = np.mean(path**2, axis=(1, 2))  # E|z_t|^2 / H along the horizon
    # Bounded drift (|γ| <= 1) and at most linear diffusion: the second moment grows at most polynomially
    # (LSDE) or with a modest exponential rate (LNSDE), far from the superlinear blow-up below.
    assert second_moment.max() < 1e3, second_moment.max()


def test_superlinear_diffusion_blows_up_at_the_same_step(key):
    """dz = z^2 dW from z0 = 1 under the same Euler step: z_{n+1} = z_n (1 + z_n dW_n) explodes as soon as z_n dW_n
    is of order one, so a fraction of the paths (about 1.5% here) overflows and the second moment is unbounded."""
    times = jnp.linspace(0.0, HORIZON, STEPS + 1)
    num_paths = 4096
    dW = solvers.brownian_increments(key, times, (num_paths,))
    z_final = np.asarray(
        solvers.euler_maruyama(lambda i, t, z: jnp.zeros_like(z), lambda i, t, z: z**2, jnp.ones((num_paths,)), times, dW)
    )
    exploded = ~np.isfinite(z_final) | (np.abs(z_final) > 1e6)
    assert exploded.sum() >= 20, exploded.sum()  # Binomial(4096, ~0.015): 20 or fewer is far in the tail
    with np.errstate(over="ignore", invalid="ignore"):
        second_moment = np.mean(np.where(np.isfinite(z_final), z_final, np.inf) ** 2)
    assert not second_moment < 1e6
