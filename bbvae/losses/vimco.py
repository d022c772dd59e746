"""VIMCO: the multi-sample bound with per-sample leave-one-out baselines (Mnih & Rezende 2016)."""

from __future__ import annotations

import math

import torch

from bbvae.base import GenModel, InfNet
from bbvae.losses.base import Loss, log_mean_exp


def leave_one_out_bounds(log_w: torch.Tensor) -> torch.Tensor:
    """The bound with sample k replaced by the geometric mean of the others, for every k.

    ``L_{-k} = log (1/K) (sum_{j != k} w_j + exp(mean_{j != k} log w_j))``, computed from
    ``[batch, K]`` tensors only (never ``[batch, K, K]``) and stably: each sum of weights is
    taken relative to the largest weight in it, and no dominant term is ever subtracted.

    Entries of ``-inf`` are samples of zero weight: the geometric mean of a set that holds
    one is zero, and when every other sample has zero weight ``L_{-k}`` is ``-inf``.

    Args:
        log_w: ``[batch, K]`` log-weights, ``K >= 2``, without NaN or ``+inf``. Treated as
            constants (the result is meant as a baseline).

    Returns:
        ``[batch, K]`` leave-one-out bounds.
    """
    log_w = log_w.detach()
    k = log_w.shape[1]
    neg_inf = torch.full_like(log_w, -math.inf)
    zeros = torch.zeros_like(log_w)
    # Geometric mean of the others in log space: (sum of the finite ones - own) / (K - 1),
    # or -inf as soon as one of the others has zero weight.
    is_zero = torch.isneginf(log_w)
    finite = torch.where(is_zero, zeros, log_w)
    n_zero_others = is_zero.sum(dim=1, keepdim=True) - is_zero.long()  # [batch, K]
    mean_others = (finite.sum(dim=1, keepdim=True) - finite) / (k - 1)
    mean_others = torch.where(n_zero_others > 0, neg_inf, mean_others)
    # Sum of the others' weights, relative to the largest of them. For k other than the
    # row's argmax that largest is the row maximum m1: sum_j exp(log_w_j - m1) lies in
    # [1, K] and removing one term that is at most the max term leaves at least 1, so
    # nothing cancels. The argmax's others are summed directly, relative to the second
    # largest m2.
    top2, top_idx = log_w.topk(2, dim=1)  # [batch, 2]
    m1, m2 = (torch.where(torch.isfinite(m), m, torch.zeros_like(m)) for m in top2.split(1, dim=1))
    is_argmax = torch.zeros_like(is_zero).scatter_(1, top_idx[:, :1], True)  # [batch, K]
    scaled = torch.exp(log_w - m1)  # [batch, K], each <= 1
    others_of_rest = (scaled.sum(dim=1, keepdim=True) - scaled).clamp_min(0.0)
    others_of_argmax = torch.exp(torch.where(is_argmax, neg_inf, log_w - m2)).sum(dim=1, keepdim=True)
    log_sum_others = torch.where(
        is_argmax, torch.log(others_of_argmax) + m2, torch.log(others_of_rest) + m1
    )  # [batch, K]
    return torch.logaddexp(log_sum_others, mean_others) - math.log(k)


class VIMCO(Loss):
    """Multi-sample bound with leave-one-out baselines (Mnih & Rezende 2016).

    The value is the IWAE bound ``L = log (1/K) sum_k w_k`` with ``w_k = p(x, z_k) / q(z_k|x)``
    and ``z_k ~ q(z|x)`` drawn with ``q.sample`` (no reparametrization needed). The gradient is

    * for p (and the part of q through the weights): ``sum_k w~_k grad log w_k``, the
      gradient of the bound at fixed samples (``w~`` the normalised weights);
    * for q's sampling distribution: ``sum_k (L - L_{-k}) grad log q(z_k|x)``, a
      score-function term whose baseline ``L_{-k}`` is, per data point and per sample, the
      bound with ``w_k`` replaced by the geometric mean of the other ``K - 1`` weights.
      ``L_{-k}`` does not depend on ``z_k``, so the estimator stays unbiased for the
      gradient of ``E[L]``.

    Memory is ``O(batch * K)``: the leave-one-out bounds are computed from ``[batch, K]``
    tensors (see :func:`leave_one_out_bounds`). Samples with log-weight ``-inf`` (outside the
    model's support) get zero weight; if every other sample of a data point has zero
    weight, that sample's baseline falls back to zero (still independent of ``z_k``). A data
    point whose samples all have zero weight has bound ``-inf`` (so the loss is ``inf``)
    and contributes no gradient.

    Args:
        inf_net, gen_model: see :class:`~bbvae.losses.Loss`.
        n_samples: K, at least 2 (the baseline of a sample is built from the others).

    Attributes:
        loss_history_, log_p_, log_q_, bound_, ess_, max_weight_: see :class:`~bbvae.losses.Loss`.
        learning_signal_ (Tensor): ``[batch, K]`` centred learning signals ``L - L_{-k}`` of
            the last call, detached.
    """

    min_samples = 2
    importance_weighted = True

    def __init__(self, inf_net: InfNet, gen_model: GenModel, n_samples: int = 5) -> None:
        if isinstance(n_samples, int) and not isinstance(n_samples, bool) and n_samples < 2:
            raise ValueError(
                f"VIMCO: expected n_samples >= 2, got {n_samples}; the baseline of each sample is "
                "built from the other samples (use ELBO(estimator='score') or NVIL for one sample)"
            )
        super().__init__(inf_net, gen_model, n_samples)

    def estimate(self, x: torch.Tensor, **context) -> tuple[torch.Tensor, torch.Tensor]:
        q = self.inf_net(x, **context)
        z = q.sample(self.n_samples).detach()  # [batch, K, *latent]: no gradient path
        log_q = q.log_prob(z)  # [batch, K]
        log_w = self.record(self.gen_model(x, z).log_prob(x, z), log_q)  # [batch, K]
        lw = log_w.detach()
        bound = log_mean_exp(lw)  # [batch]
        loo = leave_one_out_bounds(lw)  # [batch, K]
        # Baseline of zero where every other sample has zero weight (L_{-k} = -inf).
        baseline = torch.where(torch.isneginf(loo), torch.zeros_like(loo), loo)
        signal = bound.unsqueeze(1) - baseline
        # A row whose weights are all zero has bound -inf: no usable signal.
        signal = torch.where(torch.isfinite(signal), signal, torch.zeros_like(signal))
        self.learning_signal_ = signal
        # ... and no gradient from the weights either (their softmax would be NaN).
        log_w = torch.where(torch.isneginf(bound).unsqueeze(1), torch.zeros_like(log_w), log_w)
        objective = log_mean_exp(log_w) + (signal * log_q).sum(dim=1)
        return bound, objective
