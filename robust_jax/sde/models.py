"""Neural SDE / CDE classifiers of irregular series (Oh, Lim & Kim 2024): LSDE, LNSDE, GSDE, naive SDE, neural CDE.

All of them evolve a latent z from z0 = Linear(X(t0)), where X is the control path (cubic Hermite,
`robust_jax.data.timeseries.hermite_coefficients`); the readout Tanh -> Linear -> ReLU -> Linear (the reference's, on
the SDEs; one Linear on the neural CDE; `readout='none'` drops it) and a head Linear -> BatchNorm -> ReLU ->
Dropout(0.1) -> Linear classify z at the final time. With x_t = Linear(X(t)) and tf(t) the time features
([sin t, cos t] by default):

  lsde                  dz = γ(z, x_t) dt + σ(t) dW
  lnsde                 dz = γ(t, z, x_t) dt + σ(t) z dW
  gsde                  dz = z γ(t, z, x_t) dt + σ(t) z dW        (positive paths from z0 > 0)
  naive_sde             dz = γ₀(t, z) dt + g(t, z) dW             (X enters through z0 only)
  naive_sde_controlled  dz = γ(t, z, x_t) dt + g(t, z) dW         (an ablation: the naive SDE reading X(t))
  ncde                  dz = f(z) dX(t)

γ: concat(Linear(tf(t), z), x_t) -> Linear -> act -> (L-1) x [Linear, act] -> Linear -> tanh (the reference's net);
γ₀: Linear(tf(t), z) -> act -> (L-1) x [Linear, act] -> Linear -> tanh; σ(t) = ReLU(MLP(tf(t))); g(t, z) =
ReLU(MLP(tf(t), z)). In the reference's naming (yongkyung-oh/Stable-Neural-SDEs, torch-ists): lsde = neuralsde_2_16,
lnsde = neuralsde_4_17, gsde = neuralsde_6_17, naive_sde = neuralsde_3_18 (its README's "neural SDE"), and
naive_sde_controlled = neuralsde_4_18.

The reference's engineering stabilisers are on by default and are options: sin/cos time features
(`time_features`), the diffusion clip tanh(sigmoid(θ) · g) with a learnable θ = 1 (`clip_diffusion`), and the GSDE
drift written as tanh(γ_pre · gate(z)) with gate = tanh (current code) or 1 - sigmoid (first release) instead of z·γ.
`theory=True` drops the clips, as the authors' tutorials do: LipSwish activations, no tanh(sigmoid(θ) ·) clip,
GSDE drift exactly z·γ and z0 = softplus(Linear(X(t0))) + 1e-4 > 0, so the paper's stability results apply. The
time features stay sin/cos unless `time_features='linear'`: the theory needs σ(t) bounded on the horizon, and a
LipSwish MLP of raw t grows with t (over t in [0, 10] such an LNSDE overflows under Euler–Maruyama at dt = 0.01).

The reference initialises the head's two Linear layers Xavier-uniform with biases 0.01; `head_init='xavier'` does
the same (default: Flax's initialisers, as the study's results so far were measured). Its other protocol options,
weight decay and the x100 gradient on the last layer (`LAST_LAYER`), are the optimizer's: `robust_jax.sde.training`.

Solvers: 'euler' (default) is Itô Euler–Maruyama as a `lax.scan` on the observation grid (dt = the grid spacing; the
reference's dt = max(min Δt, 1e-3) is the same for series of up to 1001 points); 'diffrax_euler' and
'diffrax_milstein' use diffrax with a VirtualBrownianTree on the same step size.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from robust_jax.data.timeseries import hermite_evaluate
from robust_jax.sde import solvers

MODELS = ("lsde", "lnsde", "gsde", "naive_sde", "naive_sde_controlled", "ncde")
NAIVE_MODELS = ("naive_sde", "naive_sde_controlled")  # diffusion g(t, z)
READOUTS = ("reference", "none")
SOLVERS = ("euler", "diffrax_euler", "diffrax_milstein")
GSDE_GATES = ("tanh", "one_minus_sigmoid")
HEAD_INITS = ("default", "xavier")
# The parameter path of the classifier's last Linear (the head's second Dense), whose gradient the reference scales.
LAST_LAYER = ("head", "Dense_1")


def lipswish(x: jax.Array) -> jax.Array:
    """0.909 · x · sigmoid(x): 1-Lipschitz (Chen et al. 2019), smooth, used by the theory variants."""
    return 0.909 * jax.nn.silu(x)


def check_model_name(model: str) -> str:
    if model not in MODELS:
        raise ValueError(f"model={model!r} is not a known model; allowed: {', '.join(MODELS)}")
    return model


def _key_batch_ndim(key: jax.Array) -> int:
    """Dimensions of a key array beyond one key (typed keys, or legacy uint32 keys with a trailing (2,))."""
    typed = jnp.issubdtype(key.dtype, jax.dtypes.prng_key)
    return key.ndim if typed else key.ndim - 1


class MLP(nn.Module):
    features: Sequence[int]
    activation: str = "relu"  # 'relu' | 'lipswish'
    activate_last: bool = False

    @nn.compact
    def __call__(self, x):
        act = jax.nn.relu if self.activation == "relu" else lipswish
        for i, width in enumerate(self.features):
            x = nn.Dense(width)(x)
            if i < len(self.features) - 1 or self.activate_last:
                x = act(x)
        return x


def time_features(t: jax.Array, kind: str, batch_shape: tuple[int, ...]) -> jax.Array:
    t = jnp.broadcast_to(jnp.asarray(t, jnp.float32), batch_shape + (1,))
    return jnp.concatenate([jnp.sin(t), jnp.cos(t)], -1) if kind == "sincos" else t


class Drift(nn.Module):
    """γ of the notes, including the GSDE form; (t, z (B, H), X(t) (B, C)) -> (B, H)."""

    model: str
    hidden_dim: int
    hidden_hidden_dim: int
    num_hidden_layers: int
    time_kind: str
    activation: str
    theory: bool
    gsde_gate: str

    @nn.compact
    def __call__(self, t, z, x):
        act = jax.nn.relu if self.activation == "relu" else lipswish
        state = z if self.model == "lsde" else jnp.concatenate([time_features(t, self.time_kind, z.shape[:-1]), z], -1)
        state = nn.Dense(self.hidden_hidden_dim, name="state")(state)
        if self.model == "naive_sde":
            h = act(state)  # the naive SDE's drift never reads the control path
        else:
            control = nn.Dense(self.hidden_dim, name="control")(x)
            h = act(nn.Dense(self.hidden_hidden_dim, name="embed")(jnp.concatenate([state, control], -1)))
        for i in range(self.num_hidden_layers - 1):
            h = act(nn.Dense(self.hidden_hidden_dim, name=f"hidden_{i}")(h))
        h = nn.Dense(self.hidden_dim, name="out")(h)
        if self.model != "gsde":
            return jnp.tanh(h)
        if self.theory:
            return z * jnp.tanh(h)
        gate = jnp.tanh(z) if self.gsde_gate == "tanh" else 1.0 - jax.nn.sigmoid(z)
        return jnp.tanh(h * gate)


class Diffusion(nn.Module):
    """Diagonal diffusion; (t, z (B, H)) -> (B, H)."""

    model: str
    hidden_dim: int
    time_kind: str
    activation: str
    clip: bool
    theta_init: float = 1.0

    @nn.compact
    def __call__(self, t, z):
        feats = time_features(t, self.time_kind, z.shape[:-1])
        final_relu = self.activation == "relu"  # the reference's ReLU(MLP(.)); the theory variant keeps the MLP raw
        if self.model in NAIVE_MODELS:
            g = MLP((self.hidden_dim, self.hidden_dim), self.activation, final_relu, name="sigma")(
                jnp.concatenate([feats, z], -1)
            )
        else:
            g = MLP((self.hidden_dim, self.hidden_dim), self.activation, final_relu, name="sigma")(feats)
            if self.model in ("lnsde", "gsde"):
                g = g * z
        if self.clip:
            theta = self.param("theta", nn.initializers.constant(self.theta_init), ())
            g = jnp.tanh(jax.nn.sigmoid(theta) * g)
        return g


class CDEField(nn.Module):
    """f(z) of dz = f(z) dX: (B, H) -> (B, H, C)."""

    hidden_dim: int
    hidden_hidden_dim: int
    num_hidden_layers: int
    activation: str

    @nn.compact
    def __call__(self, z, num_channels: int):
        widths = (self.hidden_hidden_dim,) * self.num_hidden_layers + (self.hidden_dim * num_channels,)
        h = MLP(widths, self.activation)(z)
        return jnp.tanh(h).reshape(z.shape[:-1] + (self.hidden_dim, num_channels))


class Readout(nn.Module):
    """The reference's map of the final z before the head: Tanh -> Linear -> ReLU -> Linear on the SDEs' z, one
    Linear on the neural CDE's (as torch-ists' NeuralSDE and NeuralCDE have them)."""

    hidden_dim: int
    model: str

    @nn.compact
    def __call__(self, z):
        if self.model == "ncde":
            return nn.Dense(self.hidden_dim, name="out")(z)
        h = jax.nn.relu(nn.Dense(self.hidden_dim, name="hidden")(jnp.tanh(z)))
        return nn.Dense(self.hidden_dim, name="out")(h)


class Head(nn.Module):
    """Linear -> BatchNorm -> ReLU -> Dropout -> Linear. init 'xavier': both Linear kernels Xavier-uniform
    (variance 2 / (fan_in + fan_out)) and biases 0.01, as the reference initialises its classifier; 'default':
    Flax's (LeCun-normal kernels, zero biases)."""

    hidden_dim: int
    num_classes: int
    dropout_rate: float = 0.1
    init: str = "default"

    @nn.compact
    def __call__(self, z, *, train: bool):
        if self.init == "xavier":
            dense = functools.partial(nn.Dense, kernel_init=nn.initializers.xavier_uniform(),
                                      bias_init=nn.initializers.constant(0.01))
        else:
            dense = nn.Dense
        h = dense(self.hidden_dim)(z)
        h = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5)(h)
        h = jax.nn.relu(h)
        h = nn.Dropout(self.dropout_rate, deterministic=not train)(h)
        return dense(self.num_classes)(h)  # its parameters sit at LAST_LAYER


class SDEClassifier(nn.Module):
    """`apply(variables, ts, coeffs, key, train=..., rngs={'dropout': k}, mutable=['batch_stats'] when training)`.

    ts: (L,) observation times; coeffs: (d, c, b, a) each (B, L-1, C); key: the Brownian motion's key, either one
    key for the batch or (solver 'euler') a (B,) array of keys, one per example (e.g. fold_in(key, example index)).
    Returns logits (B, num_classes)."""

    model: str
    num_classes: int
    hidden_dim: int = 64
    hidden_hidden_dim: int = 64
    num_hidden_layers: int = 2
    theory: bool = False
    time_features: str = "sincos"  # 'sincos' ([sin t, cos t]) | 'linear' ([t])
    clip_diffusion: bool | None = None  # default: not theory
    gsde_gate: str = "tanh"
    solver: str = "euler"
    dropout_rate: float = 0.1
    head_init: str = "default"  # 'default' (Flax's) | 'xavier' (the reference's; see Head)
    readout: str = "reference"  # 'reference' (see Readout) | 'none' (the head reads z itself)

    def setup(self):
        check_model_name(self.model)
        if self.solver not in SOLVERS:
            raise ValueError(f"solver={self.solver!r} must be one of {', '.join(SOLVERS)}")
        if self.gsde_gate not in GSDE_GATES:
            raise ValueError(f"gsde_gate={self.gsde_gate!r} must be one of {', '.join(GSDE_GATES)}")
        if self.head_init not in HEAD_INITS:
            raise ValueError(f"head_init={self.head_init!r} must be one of {', '.join(HEAD_INITS)}")
        if self.readout not in READOUTS:
            raise ValueError(f"readout={self.readout!r} must be one of {', '.join(READOUTS)}")
        kind = self.time_features
        if kind not in ("sincos", "linear"):
            raise ValueError(f"time_features={kind!r} must be 'sincos' or 'linear'")
        activation = "lipswish" if self.theory else "relu"
        clip = (not self.theory) if self.clip_diffusion is None else self.clip_diffusion
        self.initial = nn.Dense(self.hidden_dim)
        if self.model == "ncde":
            self.cde_field = CDEField(self.hidden_dim, self.hidden_hidden_dim, self.num_hidden_layers, activation)
        else:
            self.field = Drift(
                self.model,
                self.hidden_dim,
                self.hidden_hidden_dim,
                self.num_hidden_layers,
                kind,
                activation,
                self.theory,
                self.gsde_gate,
            )
            self.noise = Diffusion(self.model, self.hidden_dim, kind, activation, clip)
        if self.readout == "reference":
            self.readout_net = Readout(self.hidden_dim, self.model)
        self.head = Head(self.hidden_dim, self.num_classes, self.dropout_rate, self.head_init)

    def initial_state(self, x0: jax.Array) -> jax.Array:
        z0 = self.initial(x0)
        if self.theory and self.model == "gsde":
            z0 = jax.nn.softplus(z0) + 1e-4
        return z0

    def latent(self, ts, coeffs, key, *, save_path: bool = False):
        """z at ts[-1] (B, H), or the path on the grid (L, B, H) with save_path (the 'euler' solver only)."""
        d, c, b, a = coeffs
        ts = jnp.asarray(ts, a.dtype)
        z0 = self.initial_state(a[:, 0])
        if self.model == "ncde":
            return self._solve_cde(ts, coeffs, z0, save_path)
        if self.is_initializing():
            self.field(ts[0], z0, a[:, 0])
            self.noise(ts[0], z0)
            if not save_path:
                # The parameters do not depend on the solve: skipping it saves compiling the scan twice (init + step).
                return z0
        drift_params, noise_params = self.field.variables, self.noise.variables
        drift_module, noise_module = self.field.clone(parent=None), self.noise.clone(parent=None)

        if self.solver == "euler":
            if _key_batch_ndim(key) == 1:  # one key per example: its noise does not depend on the batch it lands in
                dW = jax.vmap(lambda k: solvers.brownian_increments(k, ts, z0.shape[1:], z0.dtype))(key)
                dW = jnp.moveaxis(dW, 0, 1)  # (B, L-1, H) -> (L-1, B, H)
            else:
                dW = solvers.brownian_increments(key, ts, z0.shape, z0.dtype)
            drift = lambda i, t, z: drift_module.apply(drift_params, t, z, a[:, i])
            diffusion = lambda i, t, z: noise_module.apply(noise_params, t, z)
            return solvers.euler_maruyama(drift, diffusion, z0, ts, dW, save_path=save_path)
        if save_path:
            raise ValueError("save_path needs solver='euler'")
        if _key_batch_ndim(key) != 0:
            raise ValueError(f"solver={self.solver!r} takes one Brownian key for the batch; per-example keys need 'euler'")
        drift = lambda t, z: drift_module.apply(drift_params, t, z, hermite_evaluate(ts, coeffs, t))
        diffusion = lambda t, z: noise_module.apply(noise_params, t, z)
        method = "euler" if self.solver == "diffrax_euler" else "milstein"
        dt = ts[1] - ts[0]
        return solvers.diffrax_solve(
            drift, diffusion, z0, ts[0], ts[-1], dt, key, method=method, max_steps=int(ts.shape[0]) + 8
        )

    def _solve_cde(self, ts, coeffs, z0, save_path):
        d, c, b, a = coeffs
        channels = a.shape[-1]
        if self.is_initializing():
            self.cde_field(z0, channels)
            if not save_path:
                return z0
        params = self.cde_field.variables
        module = self.cde_field.clone(parent=None)
        field = lambda z: module.apply(params, z, channels)
        if self.solver == "euler":
            # dX/dt at the left knot of step i is b_i (the backward difference), as torchcde's Euler evaluates it.
            drift = lambda i, t, z: jnp.einsum("bhc,bc->bh", field(z), b[:, i])
            return solvers.euler_maruyama(drift, None, z0, ts, None, save_path=save_path)
        if save_path:
            raise ValueError("save_path needs solver='euler'")

        def drift(t, z):
            index = jnp.clip(jnp.searchsorted(ts, t, side="right") - 1, 0, ts.shape[0] - 2)
            s = t - ts[index]
            dx = b[:, index] + s * (2 * c[:, index] + 3 * s * d[:, index])
            return jnp.einsum("bhc,bc->bh", field(z), dx)

        return solvers.diffrax_solve(drift, None, z0, ts[0], ts[-1], ts[1] - ts[0], None, max_steps=int(ts.shape[0]) + 8)

    def __call__(self, ts, coeffs, key, *, train: bool = False):
        z_final = self.latent(ts, coeffs, key)
        if self.readout == "reference":
            z_final = self.readout_net(z_final)
        return self.head(z_final, train=train)
