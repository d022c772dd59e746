"""Log-weight arithmetic shared by the losses and the particle filter (the base floor).

Log-weights are ``[batch, n_samples]`` (or any shape, reduced along ``dim``); everything stays in
log space so that weights of very different magnitude never overflow.
"""

from __future__ import annotations

import math

import torch


def log_mean_exp(log_w: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """``log(mean(exp(log_w)))`` along ``dim``, computed stably in log space.

    Entries of ``-inf`` count as zero weight; a row of only ``-inf`` gives ``-inf``.
    """
    return torch.logsumexp(log_w, dim=dim) - math.log(log_w.shape[dim])


def normalized_weights(log_w: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """Self-normalised importance weights ``softmax(log_w)`` along ``dim``."""
    return torch.softmax(log_w, dim=dim)


def effective_sample_size(log_w: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """Kish's effective sample size ``1 / sum(w_k^2)`` of normalised weights, in log space.

    Args:
        log_w: unnormalised log-weights, e.g. ``[batch, n_samples]``.

    Returns:
        ESS with ``dim`` reduced, between 1 and ``log_w.shape[dim]``.
    """
    log_norm = torch.log_softmax(log_w, dim=dim)
    return torch.exp(-torch.logsumexp(2.0 * log_norm, dim=dim))
