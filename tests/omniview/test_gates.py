"""The testbed's gates against independent computations: grey pixels against a direct block mean, the pixel 1-NN
against scikit-learn's nearest-neighbour classifier, the probe on features whose answer is known, the per-kind
splits on a set built so that each gate's answer is known, and the tuning-loss summary against the logged rows."""

import numpy as np
import pytest
from sklearn.neighbors import KNeighborsClassifier

from robust_jax.data import multiview
from robust_jax.omniview import gates


def test_grey_pixels_are_channel_means_area_averaged_to_at_most_16_px():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (3, 32, 32, 3)).astype(np.uint8)
    got = gates.grey_pixels(images).reshape(3, 16, 16)
    grey = images.astype(np.float64).mean(-1) / 255.0
    for i in range(16):
        for j in range(16):
            np.testing.assert_allclose(got[:, i, j], grey[:, 2 * i:2 * i + 2, 2 * j:2 * j + 2].mean(axis=(1, 2)))
    small = rng.integers(0, 256, (2, 12, 12, 3)).astype(np.uint8)
    np.testing.assert_allclose(gates.grey_pixels(small), (small.mean(-1) / 255.0).reshape(2, -1))
    assert gates.grey_pixels(rng.integers(0, 256, (1, 48, 48, 3)).astype(np.uint8)).shape == (1, 16 * 16)
    assert gates.grey_pixels(rng.integers(0, 256, (1, 40, 40, 3)).astype(np.uint8)).shape == (1, 10 * 10)


def test_nearest_neighbour_accuracy_is_sklearns_one_nn():
    rng = np.random.default_rng(1)
    train_x, test_x = rng.normal(size=(60, 7)), rng.normal(size=(40, 7))
    train_y, test_y = rng.integers(0, 4, 60), rng.integers(0, 4, 40)
    reference = KNeighborsClassifier(n_neighbors=1).fit(train_x, train_y).predict(test_x)
    assert gates.nearest_neighbour_accuracy(train_x, train_y, test_x, test_y) == pytest.approx(
        np.mean(reference == test_y))


def test_linear_probe_separates_linearly_separable_classes_and_not_random_labels():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(600, 8))
    y = np.argmax(x @ rng.normal(size=(8, 3)), axis=1)
    assert gates.linear_probe_accuracy(x[:400] * 10, y[:400], x[400:] * 10, y[400:]) > 0.9
    shuffled = rng.permutation(y)
    assert gates.linear_probe_accuracy(x[:400], shuffled[:400], x[400:], shuffled[400:]) < 0.6


def _set_with_known_gates():
    """6 categories x 4 objects (1 held out each) x one view of each kind. A category's 'below' views are the same
    image for every object (exact 1-NN from the training 'below' views); its canonical views are the next
    category's 'below' image (so 1-NN from the canonical views names every 'below' view wrong); every other kind's
    views are noise."""
    rng = np.random.default_rng(3)
    kinds = len(multiview.VIEW_KINDS)
    below, canonical = multiview.VIEW_KINDS.index("below"), multiview.VIEW_KINDS.index("canonical")
    templates = rng.integers(0, 256, (6, 16, 16, 3)).astype(np.uint8)
    rows = [(c, o, k) for c in range(6) for o in range(4) for k in range(kinds)]
    image = np.stack([templates[c] if k == below else templates[(c + 1) % 6] if k == canonical
                      else rng.integers(0, 256, (16, 16, 3)).astype(np.uint8) for c, o, k in rows])
    return {"image": image, "category": np.array([c for c, _, _ in rows]),
            "view_kind": np.array([k for _, _, k in rows], np.int8),
            "heldout": np.array([o == 3 for _, o, _ in rows])}


def test_pixel_gates_measure_each_kind_from_its_own_and_from_the_canonical_views():
    data = _set_with_known_gates()
    got = gates.pixel_gates(data)
    assert got["pixel_1nn"]["below"] == 1.0
    assert got["pixel_1nn_from_canonical"]["below"] == 0.0
    assert got["pixel_1nn"]["canonical"] == got["pixel_1nn_from_canonical"]["canonical"] == 1.0
    assert got["pixel_1nn_count"] == {**{name: 6 for name in multiview.VIEW_KINDS}, "viewpoint_ood": 24}
    assert set(got["pixel_1nn"]) == {*multiview.VIEW_KINDS, "viewpoint_ood"}
    ood = [name for name in multiview.VIEW_KINDS if name != "canonical"]
    assert got["pixel_1nn"]["viewpoint_ood"] == pytest.approx(np.mean([got["pixel_1nn"][k] for k in ood]))
    # The headline's kinds only: 'below' (1.0) and one other kind, pooled.
    two = gates.pixel_gates(data, ("below", "rolled"))
    assert two["pixel_1nn_count"]["viewpoint_ood"] == 12
    assert two["pixel_1nn"]["viewpoint_ood"] == pytest.approx((1.0 + got["pixel_1nn"]["rolled"]) / 2)


def test_probe_gates_train_on_the_training_objects_and_test_on_the_held_out_ones():
    data = _set_with_known_gates()
    seen = []

    def embed(images):  # the first grey pixels: one vector per category on 'below' views, noise elsewhere
        seen.append(len(images))
        return gates.grey_pixels(images)[:, :6]

    got = gates.probe_gates(data, embed)
    assert seen == [int(np.sum(data["view_kind"] != 0))]  # embedded once, the OOD views only
    assert set(got["linear_probe"]) == {"below", "above", "behind", "rolled", "viewpoint_ood"}
    assert got["linear_probe_count"]["viewpoint_ood"] == 4 * 6
    # The same 'below' image per category: the probe on its features names every held-out 'below' view.
    assert got["linear_probe"]["below"] == 1.0
    # Noise views: fitted on the training objects, the probe cannot name the held-out ones (fitted on the held-out
    # ones themselves, 6 points in 6 dimensions, it would name them all).
    assert max(got["linear_probe"][kind] for kind in ("above", "behind", "rolled")) < 0.9
    # Pooled over the headline's kinds only: 'below' alone is what the probe on 'below' measures.
    below_only = gates.probe_gates(data, embed, headline_view_kinds=("below",))
    assert below_only["linear_probe"]["viewpoint_ood"] == 1.0
    assert below_only["linear_probe_count"]["viewpoint_ood"] == 6


def test_tuning_loss_gates_average_the_first_and_the_last_epochs_rows():
    history = [{"step": s, "itc": 3.0 - s / 100, "l_vi": 0.4 - s / 1000} for s in (50, 100, 150, 180, 230, 280, 300)]
    got = gates.tuning_loss_gates(history, epoch_steps=100, num_steps=300)
    assert got["itc_first"] == pytest.approx(np.mean([2.5, 2.0]))
    assert got["itc_last"] == pytest.approx(np.mean([3.0 - 2.3, 3.0 - 2.8, 0.0]))
    assert got["itc_ratio"] == pytest.approx(got["itc_last"] / got["itc_first"])
    assert got["l_vi_first"] == pytest.approx(np.mean([0.35, 0.3]))
    assert "l_vi_first" not in gates.tuning_loss_gates([{"step": 50, "itc": 1.0}], 100, 100)
    floored = [{**row, "itc_floor": 0.5} for row in history]
    got = gates.tuning_loss_gates(floored, epoch_steps=100, num_steps=300)
    assert got["itc_reducible_ratio"] == pytest.approx((got["itc_last"] - 0.5) / (got["itc_first"] - 0.5))
