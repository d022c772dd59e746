"""An exponential moving average of the parameters (weight averaging) for the Trainer.

After every optimizer step ``avg <- avg + (1 - d_t) (param - avg)`` with
``d_t = min(decay, (1 + t) / (10 + t))`` at step ``t`` (the warm-up of TensorFlow's
``ExponentialMovingAverage(num_updates=t)``: early averages are not dominated by the
initialisation). The average is what validation scores, what ``best.pt`` and early stopping select
and, when enabled, the final model (the same role as ``torch.optim.swa_utils.AveragedModel`` with an
EMA ``multi_avg_fn``, kept as flat tensors so that one fused ``_foreach_lerp_`` updates it and
checkpoints hold it beside the raw parameters for exact resumption).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
from torch import nn

__all__ = ["ParameterAverage", "check_ema_decay"]


def check_ema_decay(decay, where: str) -> None:
    if decay is None:
        return
    if isinstance(decay, bool) or not isinstance(decay, (int, float)) or not 0.0 < decay < 1.0:
        raise ValueError(f"{where}: expected ema_decay in (0, 1) or None, got {decay!r}")


class ParameterAverage:
    """The moving average of ``params``.

    Args:
        params: the trained parameters (their current values start the average).
        decay: the EMA decay ``d`` (e.g. 0.999: an average over roughly the last 1,000 steps).

    Attributes:
        averages (list[Tensor]): one detached tensor per parameter.
        n_updates (int): updates so far.
    """

    def __init__(self, params: Sequence[nn.Parameter], decay: float) -> None:
        self.params = list(params)
        self.decay = float(decay)
        self.averages = [p.detach().clone() for p in self.params]
        self.n_updates = 0

    def current_decay(self) -> float:
        t = self.n_updates
        return min(self.decay, (1.0 + t) / (10.0 + t))

    @torch.no_grad()
    def update(self) -> None:
        """Fold the current parameters into the average (call after ``optimizer.step()``)."""
        weight = 1.0 - self.current_decay()
        torch._foreach_lerp_(self.averages, [p.detach() for p in self.params], weight)
        self.n_updates += 1

    @contextlib.contextmanager
    def swapped_in(self) -> Iterator[None]:
        """Within the block the parameters hold the average; afterwards their own values again."""
        with torch.no_grad():
            saved = [p.detach().clone() for p in self.params]
            for p, avg in zip(self.params, self.averages):
                p.copy_(avg)
        try:
            yield
        finally:
            with torch.no_grad():
                for p, value in zip(self.params, saved):
                    p.copy_(value)

    @torch.no_grad()
    def copy_to_params(self) -> None:
        """Make the average the parameters' values (the final model)."""
        for p, avg in zip(self.params, self.averages):
            p.copy_(avg)

    def state_dict(self) -> dict:
        return {
            "decay": self.decay,
            "n_updates": self.n_updates,
            "averages": [a.clone() for a in self.averages],
        }

    def load_state_dict(self, state: dict) -> None:
        averages = state["averages"]
        if len(averages) != len(self.averages) or any(
            a.shape != b.shape for a, b in zip(averages, self.averages)
        ):
            raise ValueError("ParameterAverage: the checkpoint's averages do not match the parameters")
        with torch.no_grad():
            for mine, saved in zip(self.averages, averages):
                mine.copy_(saved)
        self.n_updates = int(state["n_updates"])
