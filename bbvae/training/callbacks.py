"""Hooks into the training loop: :class:`Callback`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bbvae.training.trainer import Trainer

__all__ = ["Callback"]


class Callback:
    """Hooks into :meth:`Trainer.fit`; override the ones you need (all default to no-ops).

    Set ``trainer.stop_training = True`` in any hook to end training after the current step.
    ``on_step_end`` runs every step: reading tensor values there synchronises with the device.
    """

    def on_fit_start(self, trainer: Trainer) -> None:
        """Before the first step (after a resumed state was loaded)."""

    def on_step_end(self, trainer: Trainer, step: int) -> None:
        """After optimizer step number ``step`` (1-based)."""

    def on_log(self, trainer: Trainer, record: dict[str, Any]) -> None:
        """After a log row ``{"step", "epoch", "loss", "valid_bound", "time", "lr"}`` was made."""

    def on_evaluate(self, trainer: Trainer, step: int, value: float) -> None:
        """After a validation bound ``value`` was computed at ``step``."""

    def on_epoch_end(self, trainer: Trainer, epoch: int) -> None:
        """After ``epoch`` epochs were completed."""

    def on_fit_end(self, trainer: Trainer) -> None:
        """After training ended normally (not after an exception)."""
