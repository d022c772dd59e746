"""The trainer's validation bound: :meth:`~bbvae.training.Trainer.evaluate`.

The sum of the per-data-point bounds (``estimate``'s first output) divided by the number of data
points (Tensor batches) or by the total number of valid time steps (sequence batches), computed in
``eval()`` mode under ``torch.no_grad()`` on a forked random generator.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from bbvae import distributed
from bbvae._validation import shape_str
from bbvae.training.data import evaluation_loader
from bbvae.training.rng import forked_rng

__all__ = ["TrainerEvaluation"]

# Offset of the evaluation seed from the training seed, so the two streams differ.
_EVAL_SEED_OFFSET = 1_000_003


class TrainerEvaluation:
    """The :class:`~bbvae.training.Trainer`'s validation."""

    def evaluate(self, data: Any) -> float:
        """The validation bound of ``data`` (higher is better), as computed during :meth:`fit`.

        ``evaluate_fn(loss, data)`` if given, else the bound per data point (Tensor data) or
        per time step (sequences). Runs in ``eval()`` mode under ``torch.no_grad()``, on a forked
        random generator seeded from ``seed``, so it leaves training's random stream alone.
        Under torchrun every rank must call it.
        """
        if not hasattr(self, "_rank"):
            self._rank, self._world = distributed.get_rank(), distributed.get_world_size()
        seed = getattr(self, "seed_", self.seed if self.seed is not None else 0)
        loss = self.loss
        params = list(loss.parameters())
        device = params[0].device if params else torch.device("cpu")
        was_training = loss.training
        loss.eval()
        try:
            with torch.no_grad(), forked_rng(seed + _EVAL_SEED_OFFSET + self._rank, device):
                if self.evaluate_fn is not None:
                    return float(self.evaluate_fn(loss, data))
                batches = evaluation_loader(data, self.eval_batch_size or self.batch_size, "data")
                return self._evaluate_batches(batches, device, params[0].dtype if params else None)
        finally:
            loss.train(was_training)

    def _evaluate_batches(self, batches, device: torch.device, dtype: torch.dtype | None) -> float:
        totals = torch.zeros(2, dtype=torch.float64, device=device)  # [sum of bounds, count]
        for batch in batches:
            if self._world > 1:
                batch = distributed.shard_batch(batch, self._rank, self._world)
            if distributed.batch_size_of(batch) == 0:
                continue
            x, context = self._loss_args(batch, device, dtype)
            bound = _bound(self.loss, x, context)  # [batch]
            totals[0] += bound.double().sum()
            totals[1] += context["lengths"].sum() if "lengths" in context else x.shape[0]
        distributed.all_reduce_sum(totals)
        total, count = totals.tolist()  # device sync
        if count == 0:
            raise ValueError("Trainer: the validation data yielded no data point")
        return total / count


def _bound(loss: nn.Module, x: torch.Tensor, context: dict[str, Any]) -> torch.Tensor:
    """The per-data-point bound ``[batch]`` of one batch, without touching the loss's history."""
    estimate = getattr(loss, "estimate", None)
    if callable(estimate):
        bound = estimate(x, **context)[0]
    else:
        loss(x, **context)
        bound = loss.bound_
    if tuple(bound.shape) != (x.shape[0],):
        raise ValueError(
            f"Trainer: expected {type(loss).__name__} to give a bound of shape [{x.shape[0]}], "
            f"got {shape_str(list(bound.shape))}"
        )
    if getattr(loss, "normalize", None) == "length" and context.get("lengths") is not None:
        # the loss reports nats per step; validation sums nats per sequence over the split
        bound = bound * context["lengths"].to(bound.dtype)
    return bound
