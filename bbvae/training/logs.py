"""The trainer's log: rows of ``LOG_FIELDS`` in ``log.jsonl`` / ``log.csv``, and the progress bar.

A row is written at every logging point (every ``log_every`` steps, and with every validation):
``step``, ``epoch``, the mean training ``loss`` since the previous row, ``valid_bound`` (or None),
wall-clock ``time`` in seconds since the run began (over resumes) and the learning rate ``lr``.
"""

from __future__ import annotations

import csv
import json
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bbvae.training.data import EpochBatches

__all__ = ["LOG_FIELDS", "LogWriter", "TrainerLogging"]

LOG_FIELDS = ("step", "epoch", "loss", "valid_bound", "time", "lr")


class LogWriter:
    """Rank 0's log: JSON lines or CSV with the columns :data:`LOG_FIELDS`."""

    def __init__(self, path: Path, fmt: str, keep_rows: int | None) -> None:
        self.path = path
        self.fmt = fmt
        path.parent.mkdir(parents=True, exist_ok=True)
        lines: list[str] = []
        if keep_rows is not None and path.is_file():
            with open(path, encoding="utf-8", newline="") as f:
                lines = f.read().splitlines(keepends=True)
            header = 1 if fmt == "csv" and lines else 0
            lines = lines[: header + keep_rows]
        if fmt == "csv" and not lines:
            lines = [",".join(LOG_FIELDS) + "\r\n"]
        self._file = open(path, "w", encoding="utf-8", newline="")
        self._file.writelines(lines)
        self._file.flush()
        self._csv = csv.DictWriter(self._file, fieldnames=LOG_FIELDS) if fmt == "csv" else None

    def write(self, record: dict[str, Any]) -> None:
        if self._csv is not None:
            self._csv.writerow({k: ("" if record[k] is None else record[k]) for k in LOG_FIELDS})
        else:
            row = {
                k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()
            }
            self._file.write(json.dumps(row) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


class TrainerLogging:
    """The :class:`~bbvae.training.Trainer`'s log rows, log file and progress bar."""

    def _elapsed_now(self) -> float:
        return time.perf_counter() - self._t0

    def _write_row(self, valid_bound: float | None) -> None:
        new = self.loss_history_[self._rows_upto :]
        mean_loss = sum(new) / len(new) if new else None
        self._rows_upto = len(self.loss_history_)
        record = {
            "step": self.n_iter_,
            "epoch": self.n_epochs_ + int(self._batch_in_epoch > 0),  # the epoch this step is in
            "loss": mean_loss,
            "valid_bound": valid_bound,
            "time": round(self._elapsed_now(), 4),
            "lr": self.optimizer_.param_groups[0]["lr"],
        }
        if self._writer is not None:
            self._writer.write(record)
        if self._tensorboard is not None:
            self._tensorboard.write(record)
        self._log_rows += 1
        if self._bar is not None:
            postfix = {}
            if mean_loss is not None:
                postfix["bound"] = f"{-mean_loss:.4g}"
            if self.best_valid_ is not None:
                postfix["valid"] = f"{self.best_valid_:.4g}"
            self._bar.set_postfix(postfix, refresh=False)
        for cb in self.callbacks:
            cb.on_log(self, record)

    def _open_log(self, resumed: bool) -> LogWriter | None:
        if self._logdir is None or not self._is_main:
            return None
        path = self._logdir / f"log.{self.log_format}"
        return LogWriter(path, self.log_format, keep_rows=self._log_rows if resumed else None)

    def _open_tensorboard(self):
        if not self.tensorboard or not self._is_main:
            return None
        from bbvae.training.tensorboard import open_tensorboard

        if self.tensorboard is True:
            return open_tensorboard(self._logdir / "tensorboard", self)
        return open_tensorboard(self.tensorboard, self)

    def _open_bar(self, train: EpochBatches):
        if not self.progress or not self._is_main:
            return None
        from tqdm.auto import tqdm

        total = self.max_steps
        if self.max_epochs is not None:
            per_epoch = train.num_batches()
            if per_epoch:
                by_epochs = self.max_epochs * per_epoch
                total = by_epochs if total is None else min(total, by_epochs)
        return tqdm(total=total, initial=self.n_iter_, unit="step", dynamic_ncols=True, leave=False)
