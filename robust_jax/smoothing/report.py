"""Certified accuracy at radii: per-sigma tables, the best-over-sigma envelope, CSV, markdown and a PNG plot.

Certified accuracy at radius r = fraction of evaluated examples whose certified class is the true label and whose
certified radius is >= r. An abstention (prediction -1) is never correct, so it counts as wrong at every radius.
The envelope takes, at each radius, the best accuracy over sigma (the headline number of Cohen et al.).
"""

from __future__ import annotations

import csv
import dataclasses
import os

import numpy as np

DEFAULT_RADII = (0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0)
ENVELOPE = "best"


@dataclasses.dataclass(frozen=True)
class CertificationResults:
    """Per-example outcome of certification at one sigma (ABSTAIN = -1 in predictions, radius 0 there)."""

    labels: np.ndarray
    predictions: np.ndarray
    radii: np.ndarray

    def __post_init__(self):
        for name in ("labels", "predictions", "radii"):
            object.__setattr__(self, name, np.asarray(getattr(self, name)))
        lengths = {len(self.labels), len(self.predictions), len(self.radii)}
        if len(lengths) != 1:
            raise ValueError(
                f"labels, predictions and radii must have one entry per example, got lengths "
                f"{len(self.labels)}, {len(self.predictions)}, {len(self.radii)}"
            )


def certified_accuracy(results: CertificationResults, radii) -> np.ndarray:
    """Certified accuracy at each radius in `radii` (0.0 for an empty result set)."""
    radii = np.asarray(radii, dtype=np.float64)
    if len(results.labels) == 0:
        return np.zeros(radii.shape)
    correct = (results.predictions == results.labels) & (results.predictions >= 0)
    certified_at = correct[:, None] & (results.radii[:, None] >= radii[None, :])
    return certified_at.mean(axis=0)


def accuracy_table(results_by_sigma: dict[float, CertificationResults], radii=DEFAULT_RADII) -> dict:
    """{sigma: accuracies at radii, ..., ENVELOPE: best over sigma}, sigmas in increasing order."""
    if not results_by_sigma:
        raise ValueError("results_by_sigma must hold at least one sigma, got none")
    table = {sigma: certified_accuracy(results_by_sigma[sigma], radii) for sigma in sorted(results_by_sigma)}
    table[ENVELOPE] = np.max(np.stack(list(table.values())), axis=0)
    return table


def _row_name(sigma) -> str:
    return ENVELOPE if sigma == ENVELOPE else f"sigma={sigma:g}"


def markdown_table(table: dict, radii=DEFAULT_RADII) -> str:
    header = "| | " + " | ".join(f"r={radius:g}" for radius in radii) + " |"
    rule = "|---|" + "---|" * len(radii)
    rows = [
        f"| {_row_name(sigma)} | " + " | ".join(f"{accuracy:.3f}" for accuracy in accuracies) + " |"
        for sigma, accuracies in table.items()
    ]
    return "\n".join([header, rule, *rows]) + "\n"


def write_csv(table: dict, path: str, radii=DEFAULT_RADII) -> None:
    """Long format (sigma, radius, certified_accuracy); the envelope has sigma = 'best'."""
    with open(path, "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["sigma", "radius", "certified_accuracy"])
        for sigma, accuracies in table.items():
            for radius, accuracy in zip(radii, accuracies):
                writer.writerow([sigma if sigma == ENVELOPE else f"{sigma:g}", f"{radius:g}", f"{accuracy:.6f}"])


def plot_certified_accuracy(results_by_sigma: dict[float, CertificationResults], path: str) -> None:
    """Certified accuracy against radius, one curve per sigma plus the best-over-sigma envelope (dashed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    largest = max((float(np.max(r.radii, initial=0.0)) for r in results_by_sigma.values()), default=0.0)
    grid = np.linspace(0.0, max(largest * 1.05, 0.5), 200)
    table = accuracy_table(results_by_sigma, grid)
    figure, axes = plt.subplots(figsize=(6, 4))
    for sigma, accuracies in table.items():
        if sigma == ENVELOPE:
            axes.plot(grid, accuracies, "k--", label="best over sigma")
        else:
            axes.plot(grid, accuracies, label=f"sigma = {sigma:g}")
    axes.set_xlabel("L2 radius")
    axes.set_ylabel("certified accuracy")
    axes.set_ylim(0, 1)
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def write_report(
    results_by_sigma: dict[float, CertificationResults], out_dir: str, radii=DEFAULT_RADII
) -> dict[str, str]:
    """Writes certified_accuracy.{md,csv,png} to out_dir and returns their paths by kind."""
    os.makedirs(out_dir, exist_ok=True)
    table = accuracy_table(results_by_sigma, radii)
    paths = {
        kind: os.path.join(out_dir, f"certified_accuracy.{kind}") for kind in ("md", "csv", "png")
    }
    with open(paths["md"], "w") as file:
        file.write(markdown_table(table, radii))
    write_csv(table, paths["csv"], radii)
    plot_certified_accuracy(results_by_sigma, paths["png"])
    return paths
