"""Itô SDE solvers on a fixed grid: Euler–Maruyama as a plain `lax.scan` (the default), and diffrax as an option.

Both take a drift f(i, t, z) and a diagonal diffusion g(i, t, z) (same shape as z, i the step index on the grid so
callers can look up per-step data such as the control path without searching for t). The scan loop is the
reference's scheme (torchsde "euler", Itô) and is what the models use; `diffrax_solve` adds Milstein and a
VirtualBrownianTree (any step size, differentiable) for checks and for users who want them.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

DriftFn = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]


def brownian_increments(key: jax.Array, ts: jax.Array, shape: tuple[int, ...], dtype=jnp.float32) -> jax.Array:
    """Independent increments W(t_{i+1}) - W(t_i) ~ N(0, t_{i+1} - t_i), shape (len(ts) - 1, *shape)."""
    dt = (ts[1:] - ts[:-1]).astype(dtype)
    noise = jax.random.normal(key, (dt.shape[0],) + tuple(shape), dtype)
    return noise * jnp.sqrt(dt).reshape((-1,) + (1,) * len(shape))


def euler_maruyama(
    drift: DriftFn,
    diffusion: DriftFn | None,
    z0: jax.Array,
    ts: jax.Array,
    dW: jax.Array | None = None,
    *,
    save_path: bool = False,
):
    """Itô Euler–Maruyama z_{i+1} = z_i + f(i, t_i, z_i) dt_i + g(i, t_i, z_i) * dW_i over the grid `ts`.

    `dW`: (len(ts) - 1, *z0.shape) Brownian increments (see `brownian_increments`); with `diffusion=None` it is an
    ODE/CDE Euler step. Returns z at ts[-1], or with `save_path=True` the whole path (len(ts), *z0.shape)."""
    steps = ts.shape[0] - 1
    dts = ts[1:] - ts[:-1]

    def step(z, inputs):
        i, t, dt, dw = inputs
        z_next = z + drift(i, t, z) * dt
        if diffusion is not None:
            z_next = z_next + diffusion(i, t, z) * dw
        return z_next, (z_next if save_path else None)

    if dW is None:
        if diffusion is not None:
            raise ValueError("euler_maruyama needs Brownian increments dW when a diffusion is given")
        dW = jnp.zeros((steps,), z0.dtype)
    z_final, path = jax.lax.scan(step, z0, (jnp.arange(steps), ts[:-1], dts.astype(z0.dtype), dW))
    if save_path:
        return jnp.concatenate([z0[None], path], axis=0)
    return z_final


def diffrax_solve(
    drift: Callable[[jax.Array, jax.Array], jax.Array],
    diffusion: Callable[[jax.Array, jax.Array], jax.Array] | None,
    z0: jax.Array,
    t0: float,
    t1: float,
    dt: float,
    key: jax.Array | None,
    *,
    method: str = "euler",
    brownian_tol: float | None = None,
    max_steps: int = 16384,
) -> jax.Array:
    """z(t1) from diffrax with constant steps `dt`, diagonal noise from a VirtualBrownianTree.

    `drift(t, z)`, `diffusion(t, z)` (diagonal, same shape as z). `method`: 'euler' (Itô Euler–Maruyama) or
    'milstein' (diffrax.ItoMilstein). The Brownian tree is resolved to `brownian_tol` (default dt / 8)."""
    import diffrax
    import lineax

    solvers = {"euler": diffrax.Euler, "milstein": diffrax.ItoMilstein}
    if method not in solvers:
        raise ValueError(f"method={method!r} must be one of {sorted(solvers)}")
    ode = diffrax.ODETerm(lambda t, z, args: drift(t, z))
    if diffusion is None:
        terms = ode
        solver = diffrax.Euler()
    else:
        tol = dt / 8 if brownian_tol is None else brownian_tol
        brownian = diffrax.VirtualBrownianTree(t0, t1, tol=tol, shape=jax.ShapeDtypeStruct(z0.shape, z0.dtype), key=key)
        noise = diffrax.ControlTerm(lambda t, z, args: lineax.DiagonalLinearOperator(diffusion(t, z)), brownian)
        terms = diffrax.MultiTerm(ode, noise)
        solver = solvers[method]()
    solution = diffrax.diffeqsolve(
        terms,
        solver,
        t0,
        t1,
        dt,
        z0,
        saveat=diffrax.SaveAt(t1=True),
        stepsize_controller=diffrax.ConstantStepSize(),
        max_steps=max_steps,
        adjoint=diffrax.RecursiveCheckpointAdjoint(),
    )
    return solution.ys[-1]
