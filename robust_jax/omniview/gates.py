"""The omniview testbed's gates: whether the paper's claim can be tested at all on this data and model, measured on
every run and reported before any claim (results.json metrics["gates"], and the REPORT's expected figures).

  pixel_1nn[kind]        1-nearest-neighbour on grey pixels (area-averaged to at most 16 x 16), the training
                         objects' views of a kind -> the held-out objects' views of that kind: how learnable each
                         kind is from its own examples, with no model at all ("viewpoint_ood": the headline's
                         OOD kinds together, each view against its own kind).
  pixel_1nn_from_canonical[kind]
                         the same from the training objects' canonical views only: how far each kind is from what
                         the base saw (a kind near the canonical views is nearly in-distribution).
  linear_probe[kind]     a multinomial logistic regression on the frozen base's unit-norm image embeddings, trained
                         on the training objects' views of a kind, tested on the held-out objects' views of that
                         kind: what the base's features already separate (a tuning that only re-weights them can at
                         best reach about this). "viewpoint_ood": trained and tested on the headline's OOD kinds
                         together.
  ceiling                zero-shot top-1 of the same CLIP pre-trained on every view of the training objects
                         (config.ceiling; the study adds it): what this architecture and budget reach on the
                         held-out objects' OOD views when it has seen such views.
  tuning_losses[variant] the means of ITC and of L_VI over the first and the last epoch's logged steps, and their
                         ratios last / first: whether the tuning moves the model at all. ITC has a floor above 0
                         wherever a batch holds identical captions (`pretrain.contrastive_floor`, logged as
                         itc_floor); itc_reducible_ratio is the ratio of ITC minus that floor.

Each accuracy has a count beside it (`<name>_count`): the held-out views it is measured on.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from robust_jax.data import multiview

PIXEL_SIDE = 16  # the pixel 1-NN's grey images are area-averaged down to at most this side


def grey_pixels(images_NxSxSx3: np.ndarray, side: int = PIXEL_SIDE) -> np.ndarray:
    """(N, s * s) float64 grey images in [0, 1]: the channel mean, area-averaged by the largest integer factor
    that brings the side to at most `side` (none when the side is already that small)."""
    grey = np.asarray(images_NxSxSx3, np.float64).mean(axis=-1) / 255.0
    size = grey.shape[1]
    factor = next((f for f in range(1, size + 1) if size % f == 0 and size // f <= side), size)
    grey = grey.reshape(len(grey), size // factor, factor, size // factor, factor).mean(axis=(2, 4))
    return grey.reshape(len(grey), -1)


def nearest_neighbour_accuracy(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray,
                               test_y: np.ndarray) -> float:
    """Fraction of test rows whose nearest training row (Euclidean; ties: the lower row) has their label."""
    squared = (np.sum(test_x ** 2, axis=1)[:, None] - 2.0 * test_x @ train_x.T
               + np.sum(train_x ** 2, axis=1)[None, :])
    return float(np.mean(train_y[np.argmin(squared, axis=1)] == test_y))


def linear_probe_accuracy(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray,
                          seed: int = 0) -> float:
    """Test accuracy of an L2-regularised (C = 1) multinomial logistic regression fitted on the training rows."""
    from sklearn.linear_model import LogisticRegression

    probe = LogisticRegression(C=1.0, max_iter=2000, random_state=seed)
    probe.fit(train_x, train_y)
    return float(np.mean(probe.predict(test_x) == test_y))


def _kind_rows(data: dict, kind: int, heldout: bool) -> np.ndarray:
    return np.flatnonzero((data["view_kind"] == kind) & (data["heldout"] == heldout))


def _ood_kinds(names=None) -> list[tuple[int, str]]:
    """(index, name) of the OOD view kinds, or of those in `names`."""
    return [(k, name) for k, name in enumerate(multiview.VIEW_KINDS)
            if name != "canonical" and (names is None or name in names)]


def pixel_gates(data: dict, headline_view_kinds=None) -> dict:
    """{'pixel_1nn': {kind: acc}, 'pixel_1nn_from_canonical': {kind: acc}, 'pixel_1nn_count': {kind: n}};
    'viewpoint_ood' pools headline_view_kinds (default: every OOD kind)."""
    pixels = grey_pixels(data["image"])
    labels = np.asarray(data["category"])
    canonical = _kind_rows(data, multiview.VIEW_KINDS.index("canonical"), heldout=False)
    same, from_canonical, count = {}, {}, {}
    for kind, name in enumerate(multiview.VIEW_KINDS):
        train, test = _kind_rows(data, kind, heldout=False), _kind_rows(data, kind, heldout=True)
        if len(train) == 0 or len(test) == 0:
            continue
        same[name] = nearest_neighbour_accuracy(pixels[train], labels[train], pixels[test], labels[test])
        from_canonical[name] = nearest_neighbour_accuracy(pixels[canonical], labels[canonical], pixels[test],
                                                          labels[test])
        count[name] = int(len(test))
    ood = [name for _, name in _ood_kinds(headline_view_kinds) if name in same]
    if ood:  # all OOD kinds together: each held-out view against the training views of its own kind
        total = sum(count[name] for name in ood)
        for table in (same, from_canonical):
            table["viewpoint_ood"] = sum(table[name] * count[name] for name in ood) / total
        count["viewpoint_ood"] = total
    return {"pixel_1nn": same, "pixel_1nn_from_canonical": from_canonical, "pixel_1nn_count": count}


def probe_gates(data: dict, embed: Callable[[np.ndarray], np.ndarray], seed: int = 0,
                headline_view_kinds=None) -> dict:
    """{'linear_probe': {kind: acc, 'viewpoint_ood': acc}, 'linear_probe_count': ...} on the frozen features
    embed(uint8 images) -> (N, E); 'viewpoint_ood' pools headline_view_kinds (default: every OOD kind)."""
    labels = np.asarray(data["category"])
    rows = np.flatnonzero(data["view_kind"] != multiview.VIEW_KINDS.index("canonical"))
    features = np.zeros((len(labels), 0))
    if len(rows):
        embedded = np.asarray(embed(data["image"][rows]), np.float64)
        features = np.zeros((len(labels), embedded.shape[1]))
        features[rows] = embedded / np.linalg.norm(embedded, axis=1, keepdims=True)
    accuracy, count = {}, {}
    groups = [([kind], name) for kind, name in _ood_kinds()]
    groups += [([k for k, _ in _ood_kinds(headline_view_kinds)], "viewpoint_ood")]
    for kinds, name in groups:
        train = np.concatenate([_kind_rows(data, k, heldout=False) for k in kinds])
        test = np.concatenate([_kind_rows(data, k, heldout=True) for k in kinds])
        if len(test) == 0 or len(np.unique(labels[train])) < 2:
            continue
        accuracy[name] = linear_probe_accuracy(features[train], labels[train], features[test], labels[test], seed)
        count[name] = int(len(test))
    return {"linear_probe": accuracy, "linear_probe_count": count}


def tuning_loss_gates(history: list[dict], epoch_steps: int, num_steps: int) -> dict:
    """{'itc_first', 'itc_last', 'itc_ratio'[, 'l_vi_first', 'l_vi_last', 'l_vi_ratio']} from one variant's logged
    rows (running means over each log window): the mean over the rows logged in the first epoch and over those in
    the last one (a ratio below 1: the loss fell)."""
    first = [row for row in history if 0 < row["step"] <= epoch_steps]
    last = [row for row in history if row["step"] > num_steps - epoch_steps]
    out = {}
    for name in ("itc", "l_vi", "itc_floor"):
        if not first or not last or name not in first[0]:
            continue
        start = float(np.mean([row[name] for row in first]))
        end = float(np.mean([row[name] for row in last]))
        out.update({f"{name}_first": start, f"{name}_last": end})
        if name != "itc_floor":
            out[f"{name}_ratio"] = end / start if start else np.nan
    if "itc_floor_first" in out:  # the part of ITC that identical captions in a batch leave reducible
        reducible = out["itc_first"] - out["itc_floor_first"]
        out["itc_reducible_ratio"] = (out["itc_last"] - out["itc_floor_last"]) / reducible if reducible else np.nan
    return out
