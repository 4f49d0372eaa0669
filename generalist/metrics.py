"""A run's logged scalars: their fixed names, the writer (TensorBoard event files and metrics.csv) and the reader.

Names (docs/STYLE.md item 10): `train/loss`, `train/loss_text`, `train/loss_action`, `train/lr`,
`train/tokens_per_s`, `task_loss/<task>` (each task's loss per target token since the previous log),
`eval/<task>/return` and `eval/<task>/normalized`.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping
from pathlib import Path

import numpy as np

METRICS_FILE = "metrics.csv"
TASK_LOSS_PREFIX = "task_loss/"


class MetricLog:
    """Scalars to TensorBoard event files and to metrics.csv (step, metric, value), appended across resumes."""

    def __init__(self, run_dir: Path, after_step: int | None = None) -> None:
        """Open the run's logs; a resumed run (`after_step`: its checkpoint's step) first drops the rows logged
        after that step by the run that stopped, which the resumed run logs again."""
        # Imported here: tensorboardX takes 0.9 s to import (it pulls protobuf), and only a writer needs it.
        from tensorboardX import SummaryWriter

        self.writer = SummaryWriter(str(run_dir / "tensorboard"))
        path = run_dir / METRICS_FILE
        if after_step is not None and path.exists():
            _drop_rows_after(path, after_step)
        new = not path.exists()
        self.file = path.open("a", newline="")
        self.csv = csv.writer(self.file)
        if new:
            self.csv.writerow(["step", "metric", "value"])

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        """Write every metric of one step; a NaN (no targets of that kind this step) is left out."""
        for name, value in metrics.items():
            if math.isnan(value):
                continue
            self.writer.add_scalar(name, value, step)
            self.csv.writerow([step, name, f"{value:.6g}"])
        self.file.flush()
        self.writer.flush()

    def close(self) -> None:
        """Flush and close both files."""
        self.writer.close()
        self.file.close()


def read_metrics(path: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """metrics.csv as metric -> (steps, values); a resumed run's repeated steps keep their last value."""
    series: dict[str, dict[int, float]] = {}
    with path.open(newline="") as file:
        for row in csv.DictReader(file):
            series.setdefault(row["metric"], {})[int(row["step"])] = float(row["value"])
    return {
        name: (np.array(sorted(points)), np.array([points[s] for s in sorted(points)]))
        for name, points in series.items()
    }


def _drop_rows_after(path: Path, step: int) -> None:
    """Keep the rows of metrics.csv up to `step`, rewriting it atomically."""
    with path.open(newline="") as file:
        rows = list(csv.reader(file))
    kept = [rows[0], *(row for row in rows[1:] if row and int(row[0]) <= step)] if rows else []
    partial = path.with_name(path.name + ".partial")
    with partial.open("w", newline="") as file:
        csv.writer(file).writerows(kept)
    partial.replace(path)
