"""Metric logs: JSON lines and CSV always, TensorBoard when tensorboardX is installed and asked for."""

from __future__ import annotations

import csv
import json
import math
import os


def _plain(v):
    try:
        v = float(v)
    except (TypeError, ValueError):
        return v
    return v if math.isfinite(v) else repr(v)


class MetricLogger:
    """Append rows of scalar metrics to ``DIR/metrics.jsonl`` and ``DIR/metrics.csv``.

    Rows are flushed on every write, so a crash loses nothing already logged. The CSV's
    columns are those of the first row (later new keys go to the JSONL only).
    """

    def __init__(self, directory: str, *, tensorboard: bool = False, enabled: bool = True):
        self.enabled = enabled
        self._tb = None
        if not enabled:
            return
        os.makedirs(directory, exist_ok=True)
        self._jsonl = open(os.path.join(directory, "metrics.jsonl"), "a")
        csv_path = os.path.join(directory, "metrics.csv")
        self._columns = None
        if os.path.exists(csv_path) and os.path.getsize(csv_path) > 0:
            with open(csv_path) as f:
                self._columns = next(csv.reader(f))
        self._csv_file = open(csv_path, "a", newline="")
        self._csv = csv.writer(self._csv_file)
        if tensorboard:
            try:
                from tensorboardX import SummaryWriter
            except ImportError as e:
                raise ImportError("TensorBoard logging needs: pip install 'diffalign[tensorboard]'") from e
            self._tb = SummaryWriter(os.path.join(directory, "tensorboard"))

    def write(self, step: int, metrics: dict) -> None:
        if not self.enabled:
            return
        row = {"step": int(step), **{k: _plain(v) for k, v in metrics.items()}}
        self._jsonl.write(json.dumps(row) + "\n")
        self._jsonl.flush()
        if self._columns is None:
            self._columns = list(row)
            self._csv.writerow(self._columns)
        self._csv.writerow([row.get(c, "") for c in self._columns])
        self._csv_file.flush()
        if self._tb is not None:
            for k, v in row.items():
                if k != "step" and isinstance(v, float):
                    self._tb.add_scalar(k, v, int(step))

    def close(self) -> None:
        if not self.enabled:
            return
        self._jsonl.close()
        self._csv_file.close()
        if self._tb is not None:
            self._tb.close()


def read_log(directory: str) -> list[dict]:
    """The rows of ``DIR/metrics.jsonl``, one per step in step order; where a resumed run
    logged a step again (after a crash between a log and a checkpoint) the last row wins."""
    path = os.path.join(directory, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    rows = {}
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line:
                row = json.loads(line)
                rows[int(row["step"])] = row
    return [rows[s] for s in sorted(rows)]


def logged_train_seconds(rows: list[dict]) -> float | None:
    """Run time (compile excluded) of all logged steps, summed over every segment of a resumed
    run: each row's step count since the previous row over its ``steps_per_sec``."""
    total, prev = 0.0, 0
    for row in rows:
        rate = row.get("steps_per_sec")
        if not isinstance(rate, (int, float)) or rate <= 0:
            return None
        total += (row["step"] - prev) / rate
        prev = row["step"]
    return total
