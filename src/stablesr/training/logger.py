"""Training logs: one CSV row per logging interval, TensorBoard scalars when installed, a tqdm bar.

`OUTPUT/logs/train_log.csv` has the columns `step, <metrics...>, lr, steps_per_s, elapsed_s`;
rows are appended (a resumed run continues the same file). Only the main process logs.
"""

from __future__ import annotations

import csv
import time
from pathlib import Path

from tqdm.auto import tqdm


class TrainingLogger:
    """Averages metrics between `write` calls; `enabled=False` (non-main processes) makes it silent."""

    def __init__(self, output_dir: str | Path, *, start_step: int, max_steps: int, enabled: bool,
                 progress: bool) -> None:
        self.enabled = enabled
        self.folder = Path(output_dir) / "logs"
        self.sums: dict[str, float] = {}
        self.count = 0
        self.last_step, self.last_time, self.start_time = start_step, time.perf_counter(), time.perf_counter()
        self.bar = tqdm(total=max_steps, initial=start_step, disable=not (enabled and progress), desc="train")
        self.tensorboard = self._open_tensorboard() if enabled else None

    def _open_tensorboard(self):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard is optional; the CSV always exists
            return None
        return SummaryWriter(str(self.folder / "tensorboard"))

    def add(self, metrics: dict[str, float]) -> None:
        for name, value in metrics.items():
            self.sums[name] = self.sums.get(name, 0.0) + float(value)
        self.count += 1

    def step(self, step: int) -> None:
        self.bar.update(1)
        if self.count:
            self.bar.set_postfix({name: f"{value / self.count:.4g}" for name, value in self.sums.items()})

    def write(self, step: int, *, lr: float) -> dict[str, float]:
        """Append the averaged metrics of the interval ending at `step`; returns the row."""
        now = time.perf_counter()
        row = {"step": step, **{name: value / max(self.count, 1) for name, value in self.sums.items()}, "lr": lr,
               "steps_per_s": (step - self.last_step) / max(now - self.last_time, 1e-9),
               "elapsed_s": now - self.start_time}
        self.sums, self.count, self.last_step, self.last_time = {}, 0, step, now
        if self.enabled:
            self._append_csv(row)
            if self.tensorboard is not None:
                for name, value in row.items():
                    if name != "step":
                        self.tensorboard.add_scalar(name, value, step)
        return row

    def _append_csv(self, row: dict) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / "train_log.csv"
        new = not path.exists()
        with path.open("a", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(row))
            if new:
                writer.writeheader()
            writer.writerow(row)

    def close(self) -> None:
        self.bar.close()
        if self.tensorboard is not None:
            self.tensorboard.close()
