"""PREDICT / CERTIFY against base classifiers whose smoothed probabilities are exact."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from robust_jax.core.mesh import make_data_mesh
from robust_jax.smoothing import ABSTAIN, certify, predict, sample_counts
from robust_jax.smoothing.sampling import counting_step

from .linear_classifier import (
    DIMENSION,
    halfspace_logits,
    hyperplane,
    point_at_distance,
    random_linear_logits,
    random_linear_params,
)

SIGMA = 0.5


def test_counts_follow_the_closed_form_probability(key):
    params = hyperplane()
    n = 20_000
    for step, distance in enumerate([-0.4, 0.1, 0.3]):
        counts = sample_counts(
            halfspace_logits, params, point_at_distance(params, distance),
            sigma=SIGMA, num_samples=n, batch_size=1000, key=jax.random.fold_in(key, step),
        )
        p_class_one = stats.norm.cdf(distance / SIGMA)
        assert counts.sum() == n
        # 5 standard deviations: fails by chance with probability ~6e-7.
        assert abs(counts[1] - n * p_class_one) < 5 * np.sqrt(n * p_class_one * (1 - p_class_one)), distance


def test_certified_radius_never_exceeds_distance_to_hyperplane_beyond_alpha(key):
    params = hyperplane()
    alpha, trials = 0.01, 60
    rng = np.random.default_rng(0)
    distances = rng.uniform(0.05, 0.6, trials) * rng.choice([-1, 1], trials)
    violations, certified = 0, 0
    for trial, distance in enumerate(distances):
        predicted, radius = certify(
            halfspace_logits, params, point_at_distance(params, distance), sigma=SIGMA, n0=100, n=1000,
            alpha=alpha, batch_size=500, key=jax.random.fold_in(key, trial),
        )
        if predicted == ABSTAIN:
            assert radius == 0.0
            continue
        certified += 1
        true_class = int(distance > 0)
        # Exact robust radius of the smoothed classifier: the distance for its class, nothing for the other.
        true_radius = abs(distance) if predicted == true_class else 0.0
        violations += radius > true_radius
    # Each certificate is wrong with probability <= alpha; P(Binomial(60, 0.01) >= 5) ~ 3e-4.
    assert violations <= 4
    assert certified >= 0.8 * trials


def test_certified_radius_approaches_true_radius_as_n_grows(key):
    params = hyperplane()
    distance = 0.3
    x = point_at_distance(params, distance)
    for trial in range(3):
        gaps = []
        for n in (1_000, 100_000):
            predicted, radius = certify(
                halfspace_logits, params, x, sigma=SIGMA, n0=100, n=n, alpha=0.001, batch_size=10_000,
                key=jax.random.fold_in(key, trial),
            )
            assert predicted == 1
            gaps.append(distance - radius)
        # Expected gap is ~ sigma * z_alpha * sd(p_hat) / phi(Phi^-1(pA)): about 0.065 at n=1e3 and 0.0065 at n=1e5.
        assert 0 <= gaps[1] < 0.02 < gaps[0]


def test_predict_abstains_on_the_decision_boundary(key):
    params = hyperplane()
    on_boundary = point_at_distance(params, 0.0)
    # pA = 1/2 exactly, so each call returns a class with probability <= alpha = 1e-3.
    for trial in range(10):
        assert predict(
            halfspace_logits, params, on_boundary, sigma=SIGMA, n=1000, alpha=0.001, batch_size=500,
            key=jax.random.fold_in(key, trial),
        ) == ABSTAIN


def test_predict_returns_the_side_of_a_far_point(key):
    params = hyperplane()
    for distance, side in [(0.6, 1), (-0.6, 0)]:
        assert predict(
            halfspace_logits, params, point_at_distance(params, distance), sigma=SIGMA, n=1000, alpha=0.001,
            batch_size=500, key=key,
        ) == side


def test_counts_do_not_depend_on_device_count(key):
    batch_size = 100  # not a multiple of 8 (or 3) devices: padded and masked; 1001 samples also mask a tail
    params = random_linear_params()
    x = np.random.default_rng(2).uniform(0, 1, DIMENSION).astype(np.float32)
    arguments = dict(sigma=SIGMA, num_samples=1001, batch_size=batch_size, key=key)
    all_devices = sample_counts(random_linear_logits, params, x, mesh=make_data_mesh(), **arguments)
    assert len(jax.devices()) == 8 and all_devices.sum() == 1001
    for device_count in (1, 3):
        mesh = make_data_mesh(jax.devices()[:device_count])
        np.testing.assert_array_equal(sample_counts(random_linear_logits, params, x, mesh=mesh, **arguments),
                                      all_devices)


def test_certify_does_not_depend_on_device_count(key):
    params = hyperplane()
    x = point_at_distance(params, 0.2)
    arguments = dict(sigma=SIGMA, n0=100, n=2000, alpha=0.001, batch_size=400, key=key)
    one_device = certify(halfspace_logits, params, x, mesh=make_data_mesh(jax.devices()[:1]), **arguments)
    assert certify(halfspace_logits, params, x, mesh=make_data_mesh(), **arguments) == one_device


def test_different_keys_give_different_counts(key):
    params = random_linear_params()
    x = np.full(DIMENSION, 0.5, np.float32)
    counts = [
        sample_counts(random_linear_logits, params, x, sigma=SIGMA, num_samples=500, batch_size=100,
                      key=jax.random.fold_in(key, stream))
        for stream in range(2)
    ]
    assert not np.array_equal(*counts)


def test_integer_class_outputs_count_like_logits(key):
    params = random_linear_params()
    x = np.full(DIMENSION, 0.3, np.float32)

    def hard_classifier(params, inputs):
        return jnp.argmax(random_linear_logits(params, inputs), axis=-1)

    arguments = dict(sigma=SIGMA, num_samples=300, batch_size=64, key=key)
    np.testing.assert_array_equal(
        sample_counts(hard_classifier, params, x, num_classes=10, **arguments),
        sample_counts(random_linear_logits, params, x, **arguments),
    )
    with pytest.raises(ValueError, match="num_classes"):
        sample_counts(hard_classifier, params, x, **arguments)
    with pytest.raises(ValueError, match="num_classes"):
        sample_counts(random_linear_logits, params, x, num_classes=3, **arguments)


def test_many_images_compile_once(key):
    params = hyperplane()

    def fresh_apply_fn(params, inputs):  # a new function, so no earlier test shares its cache entry
        return halfspace_logits(params, inputs)

    for trial, (distance, sigma, n0, n) in enumerate([(0.1, 0.25, 10, 300), (-0.3, 0.5, 100, 1000), (0.5, 1.0, 7, 77)]):
        certify(fresh_apply_fn, params, point_at_distance(params, distance), sigma=sigma, n0=n0, n=n,
                alpha=0.01, batch_size=100, key=jax.random.fold_in(key, trial))
    assert counting_step(fresh_apply_fn, make_data_mesh(), 100)._cache_size() == 1  # one jitted program on 8 devices


def _never_called(params, inputs):
    raise AssertionError("validation must happen before any sampling")


GOOD = dict(sigma=0.5, n0=100, n=1000, alpha=0.001, batch_size=100)
BAD_SETTINGS = [
    ("sigma", 0.0), ("sigma", -0.25), ("sigma", float("nan")), ("sigma", float("inf")),
    ("n0", 0), ("n0", 2.5), ("n", 0), ("n", -3), ("alpha", 0.0), ("alpha", 1.0), ("alpha", 1.5),
    ("batch_size", 0), ("batch_size", 12.0),
]
BAD_INPUTS = [
    np.full(DIMENSION, 1.5), np.full(DIMENSION, -0.1), np.array([0.5, np.nan]), np.array([0.5, np.inf]),
]


@pytest.mark.parametrize("name, value", BAD_SETTINGS, ids=[f"{n}={v}" for n, v in BAD_SETTINGS])
def test_bad_settings_raise_naming_the_argument(key, name, value):
    x = np.full(DIMENSION, 0.5, np.float32)
    settings = {**GOOD, name: value}
    with pytest.raises(ValueError, match=rf"{name}.*{value!r}".replace("(", r"\(").replace(")", r"\)")):
        certify(_never_called, {}, x, key=key, **settings)
    if name != "n0":
        settings.pop("n0")
        with pytest.raises(ValueError, match=name):
            predict(_never_called, {}, x, key=key, **settings)
    if name not in ("n0", "alpha"):
        settings["num_samples"] = settings.pop("n")
        settings.pop("alpha")
        with pytest.raises(ValueError, match="num_samples" if name == "n" else name):
            sample_counts(_never_called, {}, x, key=key, **settings)


@pytest.mark.parametrize("x", BAD_INPUTS, ids=["above_one", "below_zero", "nan", "inf"])
def test_bad_inputs_raise_naming_x(key, x):
    with pytest.raises(ValueError, match=r"^x=<array .*> is not allowed"):
        certify(_never_called, {}, x, key=key, **GOOD)
    with pytest.raises(ValueError, match=r"^x=<array .*> is not allowed"):
        predict(_never_called, {}, x, key=key, **{k: v for k, v in GOOD.items() if k != "n0"})


def test_certify_selects_and_estimates_with_independent_key_streams(key):
    params = hyperplane()
    x = point_at_distance(params, 0.3)
    sampling = dict(sigma=SIGMA, batch_size=100, num_classes=None)
    selection = sample_counts(halfspace_logits, params, x, num_samples=50, key=jax.random.fold_in(key, 0),
                              **sampling)
    estimation = sample_counts(halfspace_logits, params, x, num_samples=400, key=jax.random.fold_in(key, 1),
                               **sampling)
    candidate = int(np.argmax(selection))
    p_a_lower = stats.beta.ppf(0.01, estimation[candidate], 400 - estimation[candidate] + 1)
    expected = (candidate, SIGMA * stats.norm.ppf(p_a_lower)) if p_a_lower > 0.5 else (ABSTAIN, 0.0)
    predicted, radius = certify(halfspace_logits, params, x, sigma=SIGMA, n0=50, n=400, alpha=0.01,
                                batch_size=100, key=key)
    assert predicted == expected[0] and radius == pytest.approx(expected[1], rel=1e-12)
    assert predicted != ABSTAIN
