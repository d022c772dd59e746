"""Gradient diagnostics for estimators: mean, variance and signal-to-noise ratio over repeated draws."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch
from torch import nn

from bbvae._validation import check_positive_int, check_tensor


@dataclass
class GradientStats:
    """Statistics of one parameter group's gradient over repeated estimator calls.

    The gradient is that of the loss (the scalar minimised), flattened over the group's
    parameters in the order given, ``P`` coordinates in all.

    Attributes:
        mean: ``[P]`` mean gradient over the draws.
        variance: ``[P]`` per-coordinate variance over the draws (``n_draws - 1`` denominator).
        snr: mean over coordinates of ``|mean| / std``, over the coordinates whose variance
            is positive (NaN if there are none).
        snr_norm: ``||mean|| / sqrt(sum(variance))`` (``inf`` if the variance is all zero
            and the mean is not, NaN if both are zero).
        total_variance: ``sum(variance)``, the trace of the gradient's covariance.
        n_draws: number of draws.
    """

    mean: torch.Tensor
    variance: torch.Tensor
    snr: float
    snr_norm: float
    total_variance: float
    n_draws: int

    @property
    def std_error(self) -> torch.Tensor:
        """``[P]`` standard error of ``mean``: ``sqrt(variance / n_draws)``."""
        return (self.variance / self.n_draws).sqrt()


def gradient_stats(
    loss: nn.Module,
    x: torch.Tensor,
    n_draws: int,
    params: Mapping[str, Iterable[nn.Parameter]] | None = None,
    **context,
) -> dict[str, GradientStats]:
    """Mean, variance and signal-to-noise ratio of a loss's gradient over ``n_draws`` calls.

    Each draw runs ``loss(x, **context).backward()`` from zeroed gradients, so every draw
    is a full, independent call of the estimator (fresh samples).

    The loss is left as found: the parameters' ``.grad`` are restored, and so are the
    loss's buffers (for example NVIL's running statistics, which evolve across the draws
    as in training) and its ``loss_history_``. Submodules that the loss creates on its
    first call (NVIL's default baseline) remain.

    Args:
        loss: a :class:`~bbvae.losses.Loss` (or a module with ``inf_net`` and ``gen_model``
            when ``params`` is not given).
        x: ``[batch, *obs_shape]`` data, the same for every draw.
        n_draws: number of draws, at least 2.
        params: groups of parameters, ``{name: iterable of parameters}``. Default:
            ``{"inf_net": loss.inf_net.parameters(), "gen_model": loss.gen_model.parameters()}``.
        **context: passed to ``loss``.

    Returns:
        ``{name: GradientStats}`` per group. A parameter that receives no gradient in a draw
        counts as a zero gradient.
    """
    check_tensor("x", x, "gradient_stats")
    check_positive_int("n_draws", n_draws, "gradient_stats", minimum=2)
    groups = _groups(loss, params)
    tracked = _unique([*loss.parameters(), *(p for ps in groups.values() for p in ps)])
    saved_grads = {id(p): (p, p.grad) for p in tracked}
    saved_buffers = {name: buf.clone() for name, buf in loss.named_buffers()}
    saved_history = getattr(loss, "_history", None)
    if saved_history is not None:
        loss._history = type(saved_history)()
    try:
        return _collect(loss, x, n_draws, groups, context)
    finally:
        for p in loss.parameters():
            if id(p) not in saved_grads:  # created during the draws (NVIL's default baseline)
                p.grad = None
        for p, grad in saved_grads.values():
            p.grad = grad
        for name, buf in saved_buffers.items():
            owner, _, attr = name.rpartition(".")
            setattr(loss.get_submodule(owner), attr, buf)
        if saved_history is not None:
            loss._history = saved_history


def _groups(loss: nn.Module, params) -> dict[str, list[torch.Tensor]]:
    if params is None:
        for name in ("inf_net", "gen_model"):
            if not isinstance(getattr(loss, name, None), nn.Module):
                raise TypeError(
                    f"gradient_stats: loss has no {name} module; pass params={{name: parameters}}"
                )
        params = {"inf_net": loss.inf_net.parameters(), "gen_model": loss.gen_model.parameters()}
    if not isinstance(params, Mapping):
        raise TypeError(
            f"gradient_stats: expected params to be a dict of name -> parameters, got {type(params).__name__}"
        )
    groups = {}
    for name, group in params.items():
        group = [p for p in group if p.requires_grad]
        if not group:
            raise ValueError(f"gradient_stats: parameter group {name!r} has no parameter that requires grad")
        groups[name] = group
    return groups


def _collect(loss, x, n_draws, groups, context) -> dict[str, GradientStats]:
    # Welford's running mean and sum of squared deviations, per group, in the grads' dtype.
    mean: dict[str, torch.Tensor] = {}
    m2: dict[str, torch.Tensor] = {}
    tracked = _unique([*loss.parameters(), *(p for ps in groups.values() for p in ps)])
    for draw in range(1, n_draws + 1):
        for p in tracked:
            p.grad = None
        loss(x, **context).backward()
        tracked = _unique([*tracked, *loss.parameters()])  # with any created by the call (NVIL)
        for name, group in groups.items():
            g = torch.cat([_grad_or_zeros(p).reshape(-1) for p in group])  # [P]
            if draw == 1:
                mean[name], m2[name] = g.clone(), torch.zeros_like(g)
                continue
            delta = g - mean[name]
            mean[name] += delta / draw
            m2[name] += delta * (g - mean[name])
    for p in tracked:
        p.grad = None
    out = {}
    for name in groups:
        var = m2[name] / (n_draws - 1)
        std = var.sqrt()
        positive = var > 0
        snr = float((mean[name].abs()[positive] / std[positive]).mean()) if bool(positive.any()) else math.nan
        total, norm = float(var.sum()), float(mean[name].norm())
        if total > 0:
            snr_norm = norm / math.sqrt(total)
        else:
            snr_norm = math.inf if norm > 0 else math.nan
        out[name] = GradientStats(
            mean=mean[name], variance=var, snr=snr, snr_norm=snr_norm, total_variance=total, n_draws=n_draws
        )
    return out


def _grad_or_zeros(p: torch.Tensor) -> torch.Tensor:
    return p.grad if p.grad is not None else torch.zeros_like(p)


def _unique(params) -> list[torch.Tensor]:
    """Parameters in order of first appearance, each once (by identity)."""
    seen: dict[int, torch.Tensor] = {}
    for p in params:
        seen.setdefault(id(p), p)
    return list(seen.values())
