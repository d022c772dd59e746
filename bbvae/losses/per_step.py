"""``PerStep``: any sequence loss with its bound divided by each sequence's length."""

from __future__ import annotations

import torch

from bbvae.losses.base import Loss


class PerStep(Loss):
    """Wrap a loss so that its bound and gradient are per time step: ``bound / length``.

    The FIVO reference trains on the batch mean of ``bound / length``. ``FIVO`` has this built
    in (``normalize="length"``); ``PerStep(IWAE(model.inf_net, model.gen_model, n_samples=4))``
    gives it to every other loss. Called as the wrapped loss is:
    ``loss(x, lengths=lengths, inputs=inputs)`` with ``x`` ``[batch, T, ...]``.

    Args:
        loss: the wrapped loss (a submodule, so its own parameters, e.g. NVIL's baseline, are
            trained too).

    Attributes:
        inner: the wrapped loss; its ``log_p_``, ``log_q_``, ``ess_`` and ``max_weight_`` are
            copied here after each call.
        normalize: ``"length"`` (tells :class:`~bbvae.training.Trainer` the bound is per step).
    """

    normalize = "length"

    def __init__(self, loss: Loss) -> None:
        if not isinstance(loss, Loss):
            raise TypeError(f"PerStep: expected a bbvae Loss, got {type(loss).__name__}")
        super().__init__(loss.inf_net, loss.gen_model, loss.n_samples)
        self.inner = loss

    def prepare(self, x: torch.Tensor, **context) -> None:
        self.inner.prepare(x, **context)

    def estimate(self, x: torch.Tensor, lengths: torch.Tensor | None = None, **context):
        bound, objective = self.inner.estimate(x, lengths=lengths, **context)
        for name in ("log_p_", "log_q_", "ess_", "max_weight_"):
            if name in vars(self.inner):
                setattr(self, name, getattr(self.inner, name))
        if lengths is None:
            steps = torch.full_like(bound, float(x.shape[1]))
        else:
            steps = lengths.to(device=bound.device, dtype=bound.dtype)
        return bound / steps, objective / steps
