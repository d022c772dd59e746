"""Log-weight arithmetic shared by the losses and the particle filter (the base floor).

Log-weights are ``[batch, n_samples]`` (or any shape, reduced along ``dim``); everything stays in
log space so that weights of very different magnitude never overflow.
"""

from __future__ import annotations

import math

import torch


def log_mean_exp(log_w: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """``log(mean(exp(log_w)))`` along ``dim``, computed stably in log space.

    Entries of ``-inf`` count as zero weight. A row of only ``-inf`` gives ``-inf`` with a zero
    (not NaN) gradient: such a data point has zero weight under every sample and carries no
    gradient signal.
    """
    dead = torch.isneginf(log_w).all(dim=dim, keepdim=True)
    # logsumexp's backward over a row of -inf is 0 * NaN; score a harmless row instead.
    value = torch.logsumexp(torch.where(dead, 0.0, log_w), dim=dim) - math.log(log_w.shape[dim])
    return torch.where(dead.squeeze(dim), -math.inf, value)


def normalized_weights(log_w: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """Self-normalised importance weights ``softmax(log_w)`` along ``dim``.

    A row of only ``-inf`` (no sample has positive weight) gets all-zero weights, not NaN.
    """
    dead = torch.isneginf(log_w).all(dim=dim, keepdim=True)
    return torch.where(dead, 0.0, torch.softmax(torch.where(dead, 0.0, log_w), dim=dim))


def effective_sample_size(log_w: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """Kish's effective sample size ``1 / sum(w_k^2)`` of normalised weights, in log space.

    Args:
        log_w: unnormalised log-weights, e.g. ``[batch, n_samples]``.

    Returns:
        ESS with ``dim`` reduced, between 1 and ``log_w.shape[dim]`` (0 where every weight is 0).
    """
    dead = torch.isneginf(log_w).all(dim=dim)
    log_norm = torch.log_softmax(torch.where(dead.unsqueeze(dim), 0.0, log_w), dim=dim)
    return torch.where(dead, 0.0, torch.exp(-torch.logsumexp(2.0 * log_norm, dim=dim)))


def log_normalized_and_ess(log_w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(log softmax(log_w), ESS)`` along dim 1, sharing one log-softmax (the particle filter's step).

    Args:
        log_w: ``[batch, K]`` unnormalised log-weights.

    Returns:
        ``[batch, K]`` normalised log-weights (a row of only ``-inf`` gets ``-log K``, not NaN) and
        ``[batch]`` the ESS, exactly :func:`effective_sample_size` of ``log_w``.
    """
    dead = torch.isneginf(log_w).all(dim=1)
    log_norm = torch.log_softmax(torch.where(dead.unsqueeze(1), 0.0, log_w), dim=1)
    return log_norm, torch.where(dead, 0.0, torch.exp(-torch.logsumexp(2.0 * log_norm, dim=1)))


def zero_weight_points(log_w: torch.Tensor) -> torch.Tensor:
    """Indices ``[n]`` of the rows of ``log_w`` ``[batch, K]`` whose every entry is ``-inf``."""
    return torch.isneginf(log_w).all(dim=1).nonzero().flatten()
