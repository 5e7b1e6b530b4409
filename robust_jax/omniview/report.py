"""The study's table in the paper's shape: zero-shot top-1 per model (base and each variant) and split, as markdown,
CSV and a grouped bar plot."""

from __future__ import annotations

import csv
import os

MAIN_SPLITS = ("canonical", "viewpoint_ood", "corrupted")


def table_columns(top1: dict[str, dict[str, float]]) -> list[str]:
    """The three headline splits, then the per-kind viewpoint-OOD splits, then the per-corruption ones."""
    names = list(next(iter(top1.values())))
    return [*MAIN_SPLITS, *[n for n in names if n.startswith("ood_")], *[n for n in names if n.startswith("corrupted_")]]


def markdown_table(top1: dict[str, dict[str, float]]) -> str:
    columns = table_columns(top1)
    lines = ["| model | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
    for model, row in top1.items():
        lines.append(f"| {model} | " + " | ".join(f"{100 * row[c]:.1f}" for c in columns) + " |")
    return "\n".join(lines) + "\n"


def write_reports(top1: dict[str, dict[str, float]], workdir: str) -> None:
    """zero_shot_top1.md, zero_shot_top1.csv (fractions) and zero_shot_top1.png in `workdir`."""
    columns = table_columns(top1)
    with open(os.path.join(workdir, "zero_shot_top1.md"), "w") as f:
        f.write("Zero-shot top-1 (%) on held-out objects\n\n" + markdown_table(top1))
    with open(os.path.join(workdir, "zero_shot_top1.csv"), "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["model", *columns])
        for model, row in top1.items():
            writer.writerow([model, *(f"{row[c]:.6f}" for c in columns)])
    _bar_plot(top1, os.path.join(workdir, "zero_shot_top1.png"))


def _bar_plot(top1: dict[str, dict[str, float]], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = [*MAIN_SPLITS, *[n for n in table_columns(top1) if n.startswith("ood_")]]
    models = list(top1)
    width = 0.8 / len(models)
    fig, ax = plt.subplots(figsize=(10, 3.8))
    for m, model in enumerate(models):
        positions = [c + (m - (len(models) - 1) / 2) * width for c in range(len(columns))]
        ax.bar(positions, [100 * top1[model][c] for c in columns], width, label=model)
    ax.set_xticks(range(len(columns)), columns, rotation=15)
    ax.set_ylabel("zero-shot top-1 (%)")
    ax.set_ylim(0, 100)
    ax.set_title("held-out objects: base CLIP vs Omniview-Tuning and ablations")
    ax.legend(fontsize=7, ncol=4)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
