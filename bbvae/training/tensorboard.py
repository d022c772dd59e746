"""The trainer's log rows as TensorBoard scalars (``torch.utils.tensorboard``, optional).

``Trainer(..., tensorboard=True)`` (the events go to ``logdir/tensorboard``) or the callback
:class:`TensorBoardLogger` (any trainer, estimator or ``bbvae train --tensorboard``) writes, at
every logging point, the scalars of ``log.jsonl``: ``loss`` (the training loss, the negative bound,
mean since the previous row), ``bound/train`` (its negative), ``bound/valid`` (when validated),
``epoch`` and ``lr``, at the row's ``step`` and wall-clock time. Only rank 0 writes. A resumed
run drops the events its checkpoint does not know of (``purge_step``), as the log file does.
Needs the ``tensorboard`` package: ``pip install 'bbvae[tensorboard]'``.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from bbvae.training.callbacks import Callback

__all__ = ["TensorBoardLogger", "TensorBoardWriter", "open_tensorboard"]


class TensorBoardWriter:
    """Writes log rows (``{"step", "epoch", "loss", "valid_bound", "time", "lr"}``) as scalars.

    Args:
        log_dir: the events directory.
        purge_step: drop earlier events at or after this step (a resumed run), or None.
        start_time: the wall-clock time (``time.time()``) at which the run's ``time`` column is 0
            (None: now).
    """

    def __init__(
        self, log_dir: str | os.PathLike, purge_step: int | None = None, start_time: float | None = None
    ) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:
            raise ImportError(
                "TensorBoard logging needs the tensorboard package, an optional dependency: "
                "pip install 'bbvae[tensorboard]'"
            ) from exc
        self.log_dir = Path(log_dir)
        self._writer = SummaryWriter(str(self.log_dir), purge_step=purge_step)
        self._t0 = time.time() if start_time is None else start_time

    def write(self, record: dict[str, Any]) -> None:
        step = int(record["step"])
        wall = self._t0 + float(record.get("time") or 0.0)
        scalars = {
            "epoch": record.get("epoch"),
            "lr": record.get("lr"),
            "bound/valid": record.get("valid_bound"),
        }
        if record.get("loss") is not None:
            scalars["loss"] = record["loss"]
            scalars["bound/train"] = -record["loss"]
        for tag, value in scalars.items():
            if value is not None:
                self._writer.add_scalar(tag, float(value), step, walltime=wall)
        self._writer.flush()  # only at logging points

    def close(self) -> None:
        self._writer.close()


class TensorBoardLogger(Callback):
    """A :class:`~bbvae.training.Callback` writing the trainer's log rows to TensorBoard.

    Args:
        log_dir: the events directory (e.g. ``runs/x/tensorboard``).
    """

    def __init__(self, log_dir: str | os.PathLike) -> None:
        self.log_dir = log_dir
        self._writer: TensorBoardWriter | None = None

    def on_fit_start(self, trainer) -> None:
        if getattr(trainer, "_is_main", True):
            self._writer = open_tensorboard(self.log_dir, trainer)

    def on_log(self, trainer, record: dict[str, Any]) -> None:
        if self._writer is not None:
            self._writer.write(record)

    def on_fit_end(self, trainer) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def open_tensorboard(log_dir: str | os.PathLike, trainer) -> TensorBoardWriter:
    """The writer for ``trainer``'s run: its clock, and a resumed run's later events dropped."""
    purge = trainer.n_iter_ + 1 if trainer.n_iter_ else None
    return TensorBoardWriter(log_dir, purge_step=purge, start_time=time.time() - trainer._elapsed_now())
