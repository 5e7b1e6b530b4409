"""Euler–Maruyama against the closed-form geometric Brownian motion, driven by the same Brownian increments."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from robust_jax.sde import solvers
from tests.requirements import require

MU, SIGMA, X0, T = 1.0, 0.5, 1.0, 1.0
FINEST = 7  # 2^7 steps on the finest grid
LEVELS = (3, 4, 5, 6, 7)  # step sizes 2^-3 ... 2^-7


def _gbm_errors(key, num_paths=20000):
    fine_ts = jnp.linspace(0.0, T, 2**FINEST + 1)
    dW_fine = solvers.brownian_increments(key, fine_ts, (num_paths,))
    exact = X0 * jnp.exp((MU - SIGMA**2 / 2) * T + SIGMA * dW_fine.sum(0))
    strong, weak = [], []
    for level in LEVELS:
        # Coarse increments are sums of the fine ones, so every grid sees the same Brownian path.
        dW = dW_fine.reshape(2**level, 2 ** (FINEST - level), num_paths).sum(1)
        ts = jnp.linspace(0.0, T, 2**level + 1)
        euler = solvers.euler_maruyama(
            lambda i, t, x: MU * x, lambda i, t, x: SIGMA * x, jnp.full((num_paths,), X0), ts, dW
        )
        strong.append(float(jnp.mean(jnp.abs(euler - exact))))
        # Weak error of the mean; the common Brownian paths cancel most of the Monte Carlo noise.
        weak.append(abs(float(jnp.mean(euler - exact))))
    return np.array(strong), np.array(weak)


def _slope(errors):
    steps = np.array([2.0**-level for level in LEVELS])
    return np.polyfit(np.log(steps), np.log(errors), 1)[0]


def test_euler_maruyama_orders_on_geometric_brownian_motion(key):
    strong, weak = _gbm_errors(key)
    assert np.all(np.diff(strong) < 0) and np.all(np.diff(weak) < 0)
    assert 0.35 <= _slope(strong) <= 0.7, strong
    assert 0.7 <= _slope(weak) <= 1.3, weak
    # The weak error of the mean is known in closed form: X0 (e^{μT} - (1 + μ dt)^{T/dt}).
    exact_weak = [X0 * (np.exp(MU * T) - (1 + MU * 2.0**-lv) ** (2**lv)) for lv in LEVELS]
    np.testing.assert_allclose(weak, exact_weak, rtol=0.15)


def test_save_path_and_ode_mode():
    ts = jnp.linspace(0.0, 1.0, 11)
    path = solvers.euler_maruyama(lambda i, t, x: -x, None, jnp.ones(3), ts, save_path=True)
    assert path.shape == (11, 3)
    np.testing.assert_allclose(np.asarray(path[:, 0]), 0.9 ** np.arange(11), rtol=1e-6)
    with pytest.raises(ValueError, match="needs Brownian increments"):
        solvers.euler_maruyama(lambda i, t, x: -x, lambda i, t, x: x, jnp.ones(3), ts)


@pytest.mark.slow
def test_diffrax_milstein_strong_order_one_on_gbm(key):
    """diffrax option: on GBM driven by the Brownian tree's own W_T, Milstein's strong error falls at order ~1 and
    Euler's at ~0.5. μ = 0.1, σ = 1: the noise term dominates, so the two orders separate (with μ = 1, σ = 0.5 the
    O(dt) drift error both schemes share makes Euler look better than order 0.5 on coarse grids)."""
    diffrax = require("diffrax")
    mu, sigma, levels, tol = 0.1, 1.0, (3, 5, 7), 2.0**-10
    keys = jax.random.split(key, 512)

    def strong_error(method, dt):
        def one_path(path_key):
            x = solvers.diffrax_solve(
                lambda t, x: mu * x, lambda t, x: sigma * x, jnp.ones((1,)), 0.0, T, dt, path_key,
                method=method, brownian_tol=tol,
            )
            tree = diffrax.VirtualBrownianTree(0.0, T, tol=tol, shape=(1,), key=path_key)
            exact = X0 * jnp.exp((mu - sigma**2 / 2) * T + sigma * tree.evaluate(0.0, T))
            return jnp.abs(x - exact)[0]

        return float(jnp.mean(jax.jit(jax.vmap(one_path))(keys)))

    steps = np.array([2.0**-level for level in levels])
    slopes = {}
    for method in ("euler", "milstein"):
        errors = np.array([strong_error(method, dt) for dt in steps])
        slopes[method] = np.polyfit(np.log(steps), np.log(errors), 1)[0]
    assert 0.35 <= slopes["euler"] <= 0.7, slopes
    assert 0.8 <= slopes["milstein"] <= 1.2, slopes
