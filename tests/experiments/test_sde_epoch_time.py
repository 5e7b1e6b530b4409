"""sde_epoch_time's torch reference computes what our models compute: the same data, and the same logits as
SDEClassifier from the same weights and Brownian increments (torchsde's Euler, torchcde's spline), so its timings
compare like with like."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.benchmarks import sde_epoch_time
from robust_jax.data.timeseries import prepare_timeseries
from robust_jax.sde import SDEClassifier
from robust_jax.sde.solvers import brownian_increments
from tests.requirements import require

torch = require("torch")
torchcde = require("torchcde")
require("torchsde")

HIDDEN, LAYERS, BATCH = 8, 2, 5


@pytest.fixture(scope="module")
def data():
    return prepare_timeseries(sde_epoch_time.DATASET, sde_epoch_time.MISSING_RATE, 1, split="original")


def test_reference_data_is_ours(data):
    reference = sde_epoch_time.reference_data(1)
    np.testing.assert_array_equal(np.isnan(reference["path"]), np.isnan(data.values))
    np.testing.assert_allclose(reference["path"], data.values, rtol=1e-6, atol=1e-6, equal_nan=True)
    np.testing.assert_allclose(reference["times"], data.times, atol=1e-7)
    np.testing.assert_array_equal(reference["labels"], data.labels)
    np.testing.assert_array_equal(reference["train"], data.splits["train"])
    np.testing.assert_array_equal(reference["test"], data.splits["test"])


class GridBrownian:
    """A torchsde Brownian motion through given increments on a grid, W linear between grid points."""

    levy_area_approximation = "none"

    def __init__(self, times, dW):  # dW: (L - 1, batch, channels)
        self.times = times
        self.W = torch.cat([torch.zeros_like(dW[:1]), torch.cumsum(dW, 0)])
        self.shape, self.dtype, self.device = dW.shape[1:], dW.dtype, dW.device

    def _at(self, t):
        t = float(t)
        i = min(max(int(np.searchsorted(self.times, t, side="right")) - 1, 0), len(self.times) - 2)
        s = (t - self.times[i]) / (self.times[i + 1] - self.times[i])
        return (1 - s) * self.W[i] + s * self.W[i + 1]

    def __call__(self, ta, tb=None, return_U=False, return_A=False):
        return self._at(tb) - self._at(ta)


def _load_weights(module, params, batch_stats):
    def linear(layer, p):
        layer.weight.copy_(torch.tensor(np.asarray(p["kernel"]).T))
        layer.bias.copy_(torch.tensor(np.asarray(p["bias"])))

    with torch.no_grad():
        linear(module.initial, params["initial"])
        field = params["field"]
        for name in field:
            if name in ("control", "state", "embed", "out"):
                linear(getattr(module.field, name), field[name])
        for i, layer in enumerate(module.field.hidden_layers):
            linear(layer, field[f"hidden_{i}"])
        linear(module.field.sigma[0], params["noise"]["sigma"]["Dense_0"])
        linear(module.field.sigma[2], params["noise"]["sigma"]["Dense_1"])
        module.field.theta.copy_(torch.tensor(float(params["noise"]["theta"])))
        linear(module.readout[1], params["readout_net"]["hidden"])
        linear(module.readout[3], params["readout_net"]["out"])
        linear(module.head[0], params["head"]["Dense_0"])
        linear(module.head[4], params["head"]["Dense_1"])
        norm, stats = module.head[1], batch_stats["head"]["BatchNorm_0"]
        norm.weight.copy_(torch.tensor(np.asarray(params["head"]["BatchNorm_0"]["scale"])))
        norm.bias.copy_(torch.tensor(np.asarray(params["head"]["BatchNorm_0"]["bias"])))
        norm.running_mean.copy_(torch.tensor(np.asarray(stats["mean"])))
        norm.running_var.copy_(torch.tensor(np.asarray(stats["var"])))


@pytest.mark.parametrize("model_name", ["lsde", "lnsde", "gsde", "naive_sde"])
def test_torch_reference_computes_our_logits(model_name, data, key):
    rows = data.splits["train"][:BATCH]
    coeffs = tuple(jnp.asarray(c[rows]) for c in data.coeffs)
    model = SDEClassifier(model_name, data.num_classes, hidden_dim=HIDDEN, hidden_hidden_dim=HIDDEN,
                          num_hidden_layers=LAYERS)
    variables = model.init(key, data.times, coeffs, key)
    # Trained-looking statistics, so BatchNorm's evaluation path is exercised too.
    # (a mean below the features keeps the ReLU after BatchNorm open, so the logits depend on z)
    norm = variables["batch_stats"]["head"]["BatchNorm_0"]
    stats = {"head": {"BatchNorm_0": {"mean": norm["mean"] - 0.3, "var": norm["var"] + 0.3}}}
    variables = {"params": variables["params"], "batch_stats": stats}
    noise_key = jax.random.fold_in(key, 1)
    ours = np.asarray(model.apply(variables, data.times, coeffs, noise_key, train=False))
    dW = np.asarray(brownian_increments(noise_key, data.times, (BATCH, HIDDEN)))  # what the model drew

    reference = sde_epoch_time.torch_classifier(model_name, data.num_channels, data.num_classes, hidden=HIDDEN,
                                                layers=LAYERS)
    _load_weights(reference, variables["params"], stats)
    reference.eval()
    times = torch.tensor(data.times)
    path = torchcde.hermite_cubic_coefficients_with_backward_differences(
        torch.tensor(data.values[rows]), t=times)
    with torch.no_grad():
        theirs = reference(times, path, bm=GridBrownian(data.times, torch.tensor(dW))).numpy()
        other_noise = reference(times, path, bm=GridBrownian(data.times, torch.tensor(-dW))).numpy()
    np.testing.assert_allclose(theirs, ours, rtol=1e-3, atol=1e-4)
    assert np.abs(other_noise - ours).max() > 2e-3  # the noise matters (20x the tolerance), so agreement is no accident
