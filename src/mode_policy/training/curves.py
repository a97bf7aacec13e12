"""The learning curve of a run: ``metrics.csv`` and ``learning_curve.png`` from the loss history rows."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from mode_policy.io import atomic_write, atomic_write_text


def write_metrics_csv(rows: list[dict[str, float]], path: str | Path) -> None:
    """rows: [{"step": ..., "loss": ..., ...}] -> CSV with the union of the keys as columns."""
    columns = ["step", *sorted({k for row in rows for k in row} - {"step"})]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buffer.getvalue())


def plot_learning_curve(rows: list[dict[str, float]], path: str | Path, title: str = "training") -> None:
    """Loss (log scale) and learning rate against the optimizer step, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")  # headless: no display on servers or in tests
    import matplotlib.pyplot as plt

    figure, (loss_axis, lr_axis) = plt.subplots(2, 1, figsize=(7, 5), sharex=True, height_ratios=(3, 1))
    for key, label in (("loss", "total loss"), ("diffusion", "diffusion loss"),
                       ("val_diffusion", "validation diffusion loss")):  # fmt: skip
        points = [(row["step"], row[key]) for row in rows if row.get(key) is not None]
        if points:
            loss_axis.plot(
                *zip(*points, strict=True), label=label, marker="o" if key.startswith("val") else None
            )
    loss_axis.set_yscale("log")
    loss_axis.set_ylabel("loss (window mean)")
    loss_axis.legend()
    loss_axis.grid(alpha=0.3)
    loss_axis.set_title(title)
    learning_rates = [(row["step"], row["lr"]) for row in rows if row.get("lr") is not None]
    if learning_rates:
        lr_axis.plot(*zip(*learning_rates, strict=True), color="tab:gray")
    lr_axis.set_ylabel("lr")
    lr_axis.set_xlabel("optimizer step")
    lr_axis.grid(alpha=0.3)
    figure.tight_layout()
    atomic_write(path, lambda tmp: figure.savefig(tmp, format="png", dpi=100))
    plt.close(figure)
