"""Run logging for the trainer: a CSV of every logged scalar, TensorBoard, and a PNG of the curves.

The CSV is long-format (``step,epoch,name,value``, one row per scalar) so new scalars never change its
header and a resumed run appends to the same file. Only rank 0 of a distributed run creates a logger.
"""
from __future__ import annotations

import csv
import math
from collections import defaultdict
from pathlib import Path

from pipeline.files import atomic_path


class RunLogger:
    """Append scalars to ``<run_dir>/metrics.csv`` and to TensorBoard under ``<run_dir>/tb``."""

    def __init__(self, run_dir: str | Path, tensorboard: bool = True, keep_until_step: int | None = None):
        """``keep_until_step`` (a resumed run: the checkpoint's step) drops the rows and TensorBoard events
        logged after it by the interrupted run, which the resumed run logs again."""
        self.run_dir = Path(run_dir)
        self.csv_path = self.run_dir / "metrics.csv"
        if keep_until_step is not None and self.csv_path.exists():
            self._truncate(keep_until_step)
        new = not self.csv_path.exists()
        self._file = open(self.csv_path, "a", newline="")
        self._csv = csv.writer(self._file)
        if new:
            self._csv.writerow(["step", "epoch", "name", "value"])
        self._tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter  # imported lazily: slow and optional

            purge = None if keep_until_step is None else keep_until_step + 1
            self._tb = SummaryWriter(log_dir=str(self.run_dir / "tb"), purge_step=purge)

    def _truncate(self, keep_until_step: int) -> None:
        with open(self.csv_path, newline="") as f:
            rows = list(csv.reader(f))
        kept = rows[:1] + [r for r in rows[1:] if r and int(r[0]) <= keep_until_step]
        with atomic_path(self.csv_path) as tmp, open(tmp, "w", newline="") as f:
            csv.writer(f).writerows(kept)

    def log(self, step: int, epoch: int, scalars: dict[str, float]) -> None:
        for name, value in scalars.items():
            value = float(value)
            self._csv.writerow([step, epoch, name, repr(value)])
            if self._tb is not None:
                self._tb.add_scalar(name, value, step)
        self._file.flush()

    def close(self) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.close()


def read_metrics(csv_path: str | Path) -> dict[str, list[tuple[int, float]]]:
    """``metrics.csv`` -> {name: [(step, value), ...]} in file order."""
    series: dict[str, list[tuple[int, float]]] = defaultdict(list)
    with open(csv_path, newline="") as f:
        for row in csv.DictReader(f):
            series[row["name"]].append((int(row["step"]), float(row["value"])))
    return dict(series)


def plot_curves(csv_path: str | Path, png_path: str | Path) -> Path:
    """Draw the training curves of ``metrics.csv`` into one PNG (a panel per group of scalars).

    Panels: training losses (total and terms, log scale), learning rate, validation AUCs, throughput. Groups with no data are left out.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = read_metrics(csv_path)
    panels = [
        ("training loss", [n for n in series if n.startswith("train/loss")], True),
        ("learning rate", [n for n in series if n == "train/lr"], False),
        ("validation AUC", [n for n in series if n.startswith("val/auc")], False),
        ("throughput (images/s)", [n for n in series if n == "train/images_per_s"], False),
    ]
    panels = [p for p in panels if p[1]]
    fig, axes = plt.subplots(1, max(len(panels), 1), figsize=(4.5 * max(len(panels), 1), 3.6), squeeze=False)
    for ax, (title, names, logy) in zip(axes[0], panels):
        for name in sorted(names):
            pts = [(s, v) for s, v in series[name] if math.isfinite(v)]
            if not pts:
                continue
            xs, ys = zip(*pts)
            ax.plot(xs, ys, marker="o" if len(xs) < 30 else None, ms=3, label=name.split("/", 1)[-1])
        if logy and all(v > 0 for n in names for _, v in series[n] if math.isfinite(v)):
            ax.set_yscale("log")
        if title == "validation AUC":
            ax.set_ylim(0, 1.02)
            ax.axhline(0.5, color="grey", ls=":", lw=1)
        ax.set_title(title)
        ax.set_xlabel("optimiser step")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    png_path = Path(png_path)
    fig.savefig(png_path, dpi=110)
    plt.close(fig)
    return png_path
