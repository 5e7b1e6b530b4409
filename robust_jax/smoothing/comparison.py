"""The comparison of smoothing methods: certified accuracy of every method at every sigma and radius in one table
(markdown and long CSV) and one plot (a panel per sigma, a curve per method), with each method's inference cost.

Rows: (method, sigma) for every certified sigma, and (method, "best"): the best over sigma at each radius.
"""

from __future__ import annotations

import csv
import os

import numpy as np

from robust_jax.smoothing.report import ENVELOPE, CertificationResults, accuracy_table


def comparison_table(results: dict[str, dict[float, CertificationResults]], radii) -> dict[str, dict]:
    """{method: {sigma or "best": accuracies at radii}} (report.accuracy_table per method)."""
    if not results:
        raise ValueError("results must hold at least one method, got none")
    return {method: accuracy_table(by_sigma, radii) for method, by_sigma in results.items()}


def _row_name(sigma) -> str:
    return ENVELOPE if sigma == ENVELOPE else f"{sigma:g}"


def markdown_comparison(table: dict, radii, cost: dict | None = None) -> str:
    """One row per (method, sigma); with cost = {method: {"flops": .., "seconds": ..}}, a second table of the
    inference cost per noise sample."""
    header = "| method | sigma | " + " | ".join(f"r={radius:g}" for radius in radii) + " |"
    lines = [header, "|---|---|" + "---|" * len(radii)]
    for method, rows in table.items():
        for sigma, accuracies in rows.items():
            lines.append(f"| {method} | {_row_name(sigma)} | " + " | ".join(f"{a:.3f}" for a in accuracies) + " |")
    if cost:
        lines += ["", "| method | MFLOPs per noise sample | microseconds per noise sample |", "|---|---|---|"]
        for method, figures in cost.items():
            seconds = figures.get("seconds")
            measured = "" if seconds is None else f"{seconds * 1e6:.1f}"
            lines.append(f"| {method} | {figures['flops'] / 1e6:.3f} | {measured} |")
    return "\n".join(lines) + "\n"


def write_comparison_csv(table: dict, path: str, radii) -> None:
    """Long format (method, sigma, radius, certified_accuracy); sigma = 'best' for the envelope."""
    with open(path, "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["method", "sigma", "radius", "certified_accuracy"])
        for method, rows in table.items():
            for sigma, accuracies in rows.items():
                for radius, accuracy in zip(radii, accuracies):
                    writer.writerow([method, _row_name(sigma), f"{radius:g}", f"{accuracy:.6f}"])


def plot_comparison(results: dict[str, dict[float, CertificationResults]], path: str,
                    flops: dict[str, float] | None = None) -> None:
    """Certified accuracy against radius: one panel per sigma, one curve per method (labelled with its MFLOPs per
    noise sample when given)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sigmas = sorted({sigma for by_sigma in results.values() for sigma in by_sigma})
    largest = max((float(np.max(r.radii, initial=0.0)) for by_sigma in results.values() for r in by_sigma.values()),
                  default=0.0)
    grid = np.linspace(0.0, max(largest * 1.05, 0.5), 200)
    figure, axes = plt.subplots(1, len(sigmas), figsize=(4.5 * len(sigmas), 3.8), squeeze=False)
    for panel, sigma in zip(axes[0], sigmas):
        for method, by_sigma in results.items():
            if sigma not in by_sigma:
                continue
            label = method if not flops else f"{method} ({flops[method] / 1e6:.2g} MFLOP/sample)"
            panel.plot(grid, accuracy_table({sigma: by_sigma[sigma]}, grid)[sigma], label=label)
        panel.set_title(f"sigma = {sigma:g}")
        panel.set_xlabel("L2 radius")
        panel.set_ylim(0, 1)
        panel.grid(alpha=0.3)
    axes[0][0].set_ylabel("certified accuracy")
    axes[0][-1].legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def write_comparison(results: dict[str, dict[float, CertificationResults]], out_dir: str, radii,
                     cost: dict | None = None) -> dict[str, str]:
    """Writes certified_accuracy.{md,csv,png} (every method) to out_dir; returns their paths by kind."""
    os.makedirs(out_dir, exist_ok=True)
    table = comparison_table(results, radii)
    paths = {kind: os.path.join(out_dir, f"certified_accuracy.{kind}") for kind in ("md", "csv", "png")}
    with open(paths["md"], "w") as file:
        file.write(markdown_comparison(table, radii, cost))
    write_comparison_csv(table, paths["csv"], radii)
    plot_comparison(results, paths["png"], None if cost is None else {m: c["flops"] for m, c in cost.items()})
    return paths
