"""RLOO: the REINFORCE leave-one-out estimator of the ELBO's gradient (Kool, van Hoof & Welling 2019)."""

from __future__ import annotations

import torch

from bbvae.base import GenModel, InfNet
from bbvae.losses.base import Loss
from bbvae.losses.discrete import learning_signal


class RLOO(Loss):
    """Score-function ELBO whose baseline for each sample is the mean signal of the other samples.

    With ``K`` independent draws ``z_k ~ q(z|x)`` (``q.sample``: any latent type with
    ``sample`` and ``log_prob``) and the signal ``f_k = log p(x, z_k) - log q(z_k|x)``, the
    gradient is

    * for p: ``(1/K) sum_k grad log p(x, z_k)``;
    * for q: ``(1/K) sum_k (f_k - mean_{j != k} f_j) grad log q(z_k|x)
      = 1/(K - 1) sum_k (f_k - mean_j f_j) grad log q(z_k|x)``.

    The baseline of sample ``k`` does not depend on ``z_k``, so the estimator is unbiased for the
    gradient of the ELBO ``E_q[log p(x, z) - log q(z|x)]``; the value is the ELBO averaged over the
    ``K`` samples. (The explicit ``-grad log q`` term of the signal has mean zero and is left out,
    as in NVIL.) Unlike :class:`~bbvae.losses.VIMCO` it estimates the ELBO's gradient, not that of
    the ``K``-sample bound, so the ``K`` samples only reduce the variance.

    Args:
        inf_net, gen_model: see :class:`~bbvae.losses.Loss`.
        n_samples: ``K >= 2`` model evaluations per data point.

    Attributes:
        loss_history_, log_p_, log_q_, bound_: see :class:`~bbvae.losses.Loss`.
        learning_signal_ (Tensor): ``[batch, K]`` the centred signals ``(f_k - mean f) / (K - 1)``
            of the last call, detached.
    """

    min_samples = 2

    def __init__(self, inf_net: InfNet, gen_model: GenModel, n_samples: int = 2) -> None:
        super().__init__(inf_net, gen_model, n_samples)

    def estimate(self, x: torch.Tensor, **context) -> tuple[torch.Tensor, torch.Tensor]:
        q = self.inf_net(x, **context)
        z = q.sample(self.n_samples).detach()  # [batch, K, *latent]
        log_q = q.log_prob(z)  # [batch, K]
        log_p = self.gen_model(x, z).log_prob(x, z)  # [batch, K]
        log_w = self.record(log_p, log_q)
        f, usable = learning_signal(log_w)
        signal = torch.where(usable, (f - f.mean(dim=1, keepdim=True)) / (self.n_samples - 1), 0.0)
        self.learning_signal_ = signal
        objective = log_p.mean(dim=1) + (signal * log_q).sum(dim=1)
        return log_w.detach().mean(dim=1), objective
