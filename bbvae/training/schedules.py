"""Learning-rate schedules for the :class:`~bbvae.training.Trainer`, built from ``torch.optim.lr_scheduler``.

``lr_schedule`` names one of

* ``None`` / ``"constant"``: the learning rate stays ``learning_rate``;
* ``"plateau"``: :class:`~torch.optim.lr_scheduler.ReduceLROnPlateau` in ``mode="max"`` on the
  validation bound, stepped once per validation (needs validation data);
* ``"cosine"``: :class:`~torch.optim.lr_scheduler.CosineAnnealingLR` over the steps after warm-up
  (``T_max`` defaults to ``max_steps - warmup_steps``, so it needs ``max_steps``);
* ``"step"``: :class:`~torch.optim.lr_scheduler.StepLR` (``step_size`` in optimizer steps, required);

or is a callable ``optimizer -> scheduler`` stepped once per optimizer step. ``lr_schedule_kwargs``
go to the scheduler's constructor. ``warmup_steps > 0`` prepends a linear warm-up
(:class:`~torch.optim.lr_scheduler.LinearLR` from ``warmup_start_factor * learning_rate``),
chained with :class:`~torch.optim.lr_scheduler.SequentialLR` for per-step schedules; with
``"plateau"`` the warm-up runs per step and the plateau rule at validations.

Every scheduler's ``state_dict`` is part of the trainer's checkpoints, so a resumed run follows the
same learning rates as an uninterrupted one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.optim import lr_scheduler

__all__ = ["LR_SCHEDULES", "LearningRateSchedule", "check_schedule"]

LR_SCHEDULES = ("constant", "plateau", "cosine", "step")


def check_schedule(schedule: Any, kwargs: Any, warmup_steps: Any, start_factor: Any, max_steps, where: str):
    """Raise a clear error for a schedule setting that cannot work (before training starts)."""
    if schedule is not None and not callable(schedule):
        if schedule not in LR_SCHEDULES:
            raise ValueError(
                f"{where}: expected lr_schedule in {LR_SCHEDULES}, a callable optimizer -> scheduler, or "
                f"None, got {schedule!r}"
            )
    if kwargs is not None and not isinstance(kwargs, dict):
        raise TypeError(f"{where}: expected lr_schedule_kwargs to be a dict, got {type(kwargs).__name__}")
    if isinstance(warmup_steps, bool) or not isinstance(warmup_steps, int) or warmup_steps < 0:
        raise ValueError(f"{where}: expected warmup_steps to be an int >= 0, got {warmup_steps!r}")
    if not (isinstance(start_factor, (int, float)) and 0 < start_factor <= 1):
        raise ValueError(f"{where}: expected warmup_start_factor in (0, 1], got {start_factor!r}")
    if schedule == "cosine" and "T_max" not in (kwargs or {}):
        if max_steps is None:
            raise ValueError(
                f"{where}: lr_schedule='cosine' anneals over max_steps - warmup_steps steps; set max_steps "
                "or pass lr_schedule_kwargs={'T_max': ...}"
            )
        if max_steps <= warmup_steps:
            raise ValueError(
                f"{where}: lr_schedule='cosine' needs max_steps > warmup_steps, "
                f"got {max_steps} <= {warmup_steps}"
            )
    if schedule == "step" and "step_size" not in (kwargs or {}):
        raise ValueError(f"{where}: lr_schedule='step' needs lr_schedule_kwargs={{'step_size': N, ...}}")


class LearningRateSchedule:
    """The schedulers of one training run: a per-step one (warm-up and/or a schedule) and/or a
    per-validation plateau rule.

    Args:
        optimizer: the optimizer whose learning rates are scheduled.
        schedule, kwargs, warmup_steps, start_factor: the trainer's settings (see the module).
        max_steps: the trainer's ``max_steps`` (for cosine's default ``T_max``).
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        schedule: str | Callable | None,
        kwargs: dict[str, Any] | None,
        warmup_steps: int,
        start_factor: float,
        max_steps: int | None,
    ) -> None:
        kwargs = dict(kwargs or {})
        self.per_step: Any = None
        self.plateau: lr_scheduler.ReduceLROnPlateau | None = None
        main = None
        if callable(schedule):
            main = schedule(optimizer)
            if not hasattr(main, "step") or not hasattr(main, "state_dict"):
                raise TypeError(
                    "Trainer: lr_schedule(optimizer) must return a torch LR scheduler, "
                    f"got {type(main).__name__}"
                )
        elif schedule == "plateau":
            self.plateau = lr_scheduler.ReduceLROnPlateau(optimizer, mode="max", **kwargs)
        elif schedule == "cosine":
            kwargs.setdefault("T_max", max_steps - warmup_steps)
            main = lr_scheduler.CosineAnnealingLR(optimizer, **kwargs)
        elif schedule == "step":
            main = lr_scheduler.StepLR(optimizer, **kwargs)
        if warmup_steps > 0:
            warmup = lr_scheduler.LinearLR(
                optimizer, start_factor=start_factor, end_factor=1.0, total_iters=warmup_steps
            )
            if main is None:
                self.per_step = warmup
            else:
                self.per_step = lr_scheduler.SequentialLR(
                    optimizer, [warmup, main], milestones=[warmup_steps]
                )
        else:
            self.per_step = main
        self._warmup_steps = warmup_steps
        self._steps = 0

    def after_step(self) -> None:
        """Advance the per-step schedule after an optimizer step."""
        self._steps += 1
        if self.per_step is not None:
            self.per_step.step()

    def after_validation(self, bound: float) -> None:
        """Let the plateau rule see a validation bound (only once the warm-up is over)."""
        if self.plateau is not None and self._steps >= self._warmup_steps:
            self.plateau.step(bound)

    def state_dict(self) -> dict[str, Any]:
        return {
            "steps": self._steps,
            "per_step": None if self.per_step is None else self.per_step.state_dict(),
            "plateau": None if self.plateau is None else self.plateau.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._steps = state["steps"]
        if self.per_step is not None and state.get("per_step") is not None:
            self.per_step.load_state_dict(state["per_step"])
        if self.plateau is not None and state.get("plateau") is not None:
            self.plateau.load_state_dict(state["plateau"])
