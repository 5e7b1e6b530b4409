"""The classifiers: shapes, BatchNorm state, gradients, what each drift reads, the readout, solver options and bad
names."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from robust_jax.data.timeseries import hermite_coefficients
from robust_jax.sde import MODELS, SDEClassifier, check_model_name
from tests.requirements import require

BATCH, LENGTH, CHANNELS, CLASSES = 6, 12, 3, 3


@pytest.fixture(scope="module")
def inputs():
    rng = np.random.default_rng(0)
    values = rng.normal(size=(BATCH, LENGTH, CHANNELS))
    values[:, 3:5, 1:] = np.nan
    times = np.linspace(0.0, 1.0, LENGTH)
    values[..., 0] = times
    coeffs = tuple(jnp.asarray(c, jnp.float32) for c in hermite_coefficients(times, values))
    return jnp.asarray(times, jnp.float32), coeffs, jnp.asarray(rng.integers(0, CLASSES, BATCH))


@pytest.mark.parametrize(
    "model_name, theory", [(name, False) for name in MODELS] + [("gsde", True), ("lnsde", True)]
)
def test_train_step_shapes_and_gradients(model_name, theory, inputs, key):
    times, coeffs, labels = inputs
    model = SDEClassifier(model_name, CLASSES, hidden_dim=8, hidden_hidden_dim=8, theory=theory)
    variables = model.init(key, times, coeffs, key)
    assert set(variables) == {"params", "batch_stats"}

    def loss_fn(params):
        logits, updates = model.apply(
            {"params": params, "batch_stats": variables["batch_stats"]},
            times, coeffs, key, train=True, rngs={"dropout": key}, mutable=["batch_stats"],
        )
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean(), (logits, updates)

    (loss, (logits, updates)), grads = jax.value_and_grad(loss_fn, has_aux=True)(variables["params"])
    assert logits.shape == (BATCH, CLASSES) and np.isfinite(float(loss))
    assert all(np.isfinite(g).all() for g in jax.tree.leaves(grads))
    assert any(float(jnp.abs(g).max()) > 0 for g in jax.tree.leaves(grads["initial"]))
    moved = jax.tree.map(lambda a, b: float(jnp.abs(a - b).max()), updates["batch_stats"], variables["batch_stats"])
    assert max(jax.tree.leaves(moved)) > 0  # BatchNorm statistics update in training mode
    eval_logits = model.apply(variables, times, coeffs, key, train=False)
    assert eval_logits.shape == (BATCH, CLASSES)
    if model_name != "ncde":
        other = model.apply(variables, times, coeffs, jax.random.fold_in(key, 1), train=False)
        assert not np.allclose(eval_logits, other)  # the Brownian motion comes from the key


def test_reference_stabilisers_present(inputs, key):
    times, coeffs, _ = inputs
    params = SDEClassifier("lnsde", CLASSES, hidden_dim=8).init(key, times, coeffs, key)["params"]
    assert float(params["noise"]["theta"]) == 1.0  # tanh(sigmoid(θ) g) with θ initialised at 1
    theory = SDEClassifier("lnsde", CLASSES, hidden_dim=8, theory=True).init(key, times, coeffs, key)["params"]
    assert "theta" not in theory["noise"]


def test_diffrax_euler_matches_scan_for_the_cde(inputs, key):
    require("diffrax")
    times, coeffs, _ = inputs
    scan = SDEClassifier("ncde", CLASSES, hidden_dim=8, hidden_hidden_dim=8)
    variables = scan.init(key, times, coeffs, key)
    via_diffrax = SDEClassifier("ncde", CLASSES, hidden_dim=8, hidden_hidden_dim=8, solver="diffrax_euler")
    z_scan = scan.apply(variables, times, coeffs, key, method=SDEClassifier.latent)
    z_diffrax = via_diffrax.apply(variables, times, coeffs, key, method=SDEClassifier.latent)
    np.testing.assert_allclose(np.asarray(z_diffrax), np.asarray(z_scan), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"model": "sde"}, "model='sde' is not a known model"),
        ({"model": "lsde", "solver": "rk4"}, "solver='rk4'"),
        ({"model": "gsde", "gsde_gate": "relu"}, "gsde_gate='relu'"),
        ({"model": "lsde", "time_features": "fourier"}, "time_features='fourier'"),
    ],
)
def test_bad_options(kwargs, match, inputs, key):
    times, coeffs, _ = inputs
    with pytest.raises(ValueError, match=match):
        SDEClassifier(num_classes=CLASSES, **kwargs).init(key, times, coeffs, key)
    with pytest.raises(ValueError, match="allowed: lsde, lnsde, gsde, naive_sde, naive_sde_controlled, ncde"):
        check_model_name("LSDE")


def test_per_example_brownian_keys_do_not_depend_on_the_batch(inputs, key):
    times, coeffs, _ = inputs
    model = SDEClassifier("lnsde", CLASSES, hidden_dim=8, hidden_hidden_dim=8)
    variables = model.init(key, times, coeffs, key)
    index = jnp.arange(BATCH) + 100
    keys = jax.vmap(jax.random.fold_in, (None, 0))(key, index)
    whole = model.apply(variables, times, coeffs, keys, train=False)
    part = model.apply(variables, times, tuple(c[2:5] for c in coeffs), keys[2:5], train=False)
    np.testing.assert_allclose(part, whole[2:5], rtol=1e-5, atol=1e-6)
    shuffled = model.apply(variables, times, tuple(c[::-1] for c in coeffs), keys[::-1], train=False)
    np.testing.assert_allclose(shuffled[::-1], whole, rtol=1e-5, atol=1e-6)
    other = model.apply(variables, times, coeffs, jax.vmap(jax.random.fold_in, (None, 0))(key, index + 1), train=False)
    assert not np.allclose(other, whole)  # each example's noise really comes from its own key
    diffrax_model = SDEClassifier("lsde", CLASSES, hidden_dim=8, solver="diffrax_euler")
    diffrax_variables = diffrax_model.init(key, times, coeffs, key)
    with pytest.raises(ValueError, match="per-example keys need 'euler'"):
        diffrax_model.apply(diffrax_variables, times, coeffs, keys)


@pytest.mark.parametrize("model_name, reads_control", [("naive_sde", False), ("naive_sde_controlled", True),
                                                        ("lsde", True), ("lnsde", True), ("gsde", True)])
def test_which_drifts_read_the_control_path(model_name, reads_control, key):
    """The naive SDE's drift is f(t, z) (the reference's neuralsde_3_18: X enters through z0 only): for any z and t,
    replacing X(t) by anything else leaves it unchanged; the controlled ablation's (neuralsde_4_18) and the stable
    classes' drifts change."""
    from robust_jax.sde.models import Drift

    hidden = 8
    drift = Drift(model_name, hidden, hidden, 2, "sincos", "relu", False, "tanh")
    rng = np.random.default_rng(1)
    z = jnp.asarray(rng.normal(size=(16, hidden)), jnp.float32)
    x = jnp.asarray(rng.normal(size=(16, CHANNELS)), jnp.float32)
    variables = drift.init(key, 0.3, z, x)
    assert ("control" in variables["params"]) == reads_control
    for t in (0.0, 0.3, 0.9):
        for other_x in (jnp.zeros_like(x), 10.0 * x[::-1], jnp.asarray(rng.normal(size=x.shape), jnp.float32)):
            same = np.allclose(drift.apply(variables, t, z, x), drift.apply(variables, t, z, other_x), atol=0)
            assert same == (not reads_control)
    # the naive drift still reads t and z
    if not reads_control:
        assert not np.allclose(drift.apply(variables, 0.3, z, x), drift.apply(variables, 0.9, z, x))
        assert not np.allclose(drift.apply(variables, 0.3, z, x), drift.apply(variables, 0.3, z[::-1], x))


@pytest.mark.parametrize("model_name", ["lsde", "ncde"])
def test_readout_is_the_references(model_name, inputs, key):
    """The head reads Tanh -> Linear -> ReLU -> Linear of the final z for the SDEs and one Linear for the neural CDE
    (torch-ists' NeuralSDE / NeuralCDE), recomputed here in numpy from the parameters; readout='none' reads z."""
    times, coeffs, _ = inputs
    model = SDEClassifier(model_name, CLASSES, hidden_dim=8, hidden_hidden_dim=8)
    variables = model.init(key, times, coeffs, key)
    z = np.asarray(model.apply(variables, times, coeffs, key, method=SDEClassifier.latent), np.float64)
    readout = jax.tree.map(lambda leaf: np.asarray(leaf, np.float64), variables["params"]["readout_net"])
    if model_name == "ncde":
        features = z @ readout["out"]["kernel"] + readout["out"]["bias"]
    else:
        hidden = np.maximum(np.tanh(z) @ readout["hidden"]["kernel"] + readout["hidden"]["bias"], 0.0)
        features = hidden @ readout["out"]["kernel"] + readout["out"]["bias"]
    head = jax.tree.map(lambda leaf: np.asarray(leaf, np.float64), variables["params"]["head"])
    stats = variables["batch_stats"]["head"]["BatchNorm_0"]
    h = features @ head["Dense_0"]["kernel"] + head["Dense_0"]["bias"]
    h = (h - np.asarray(stats["mean"])) / np.sqrt(np.asarray(stats["var"]) + 1e-5)
    h = np.maximum(h * head["BatchNorm_0"]["scale"] + head["BatchNorm_0"]["bias"], 0.0)
    expected = h @ head["Dense_1"]["kernel"] + head["Dense_1"]["bias"]
    logits = np.asarray(model.apply(variables, times, coeffs, key, train=False))
    np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-5)
    without = SDEClassifier(model_name, CLASSES, hidden_dim=8, hidden_hidden_dim=8, readout="none")
    assert "readout_net" not in without.init(key, times, coeffs, key)["params"]
