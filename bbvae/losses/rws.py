"""Reweighted wake-sleep (Bornschein & Bengio 2015; Le et al. 2019), with an optional DReG wake-phi."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from bbvae.base import GenModel, InfNet
from bbvae.losses.base import Loss, log_mean_exp, normalized_weights

PHASES = ("wake_theta", "wake_phi", "sleep_phi")
_ESTIMATORS = ("default", "dreg")


class RWS(Loss):
    """Reweighted wake-sleep: each of p and q follows its own importance-weighted gradient.

    With ``z_k ~ q(z|x)``, ``log w_k = log p(x, z_k) - log q(z_k|x)`` and normalised weights
    ``w~_k = softmax(log w)_k`` (treated as constants), the phases are

    * ``"wake_theta"``: p's gradient ``sum_k w~_k grad_theta log p(x, z_k)``, the gradient of
      the IWAE bound in p's parameters (z drawn without gradient);
    * ``"wake_phi"``: q's gradient ``sum_k w~_k grad_phi log q(z_k|x)``, a self-normalised
      estimate of ``E_{p(z|x)}[grad log q(z|x)]`` (it decreases ``KL(p(z|x) || q(z|x))``);
    * ``"sleep_phi"``: q's gradient ``grad_phi log q(z|x)`` on ``(x, z)`` drawn from
      ``gen_model.sample(batch)`` (called without context: q must work on x alone).

    One ``backward()`` of the loss gives p's parameters the wake-theta gradient only and
    q's the wake-phi (+ sleep-phi) gradient only; a phase left out of ``phases`` gives no
    gradient. No reparametrization is needed, except for ``estimator="dreg"``: the
    doubly reparametrized wake-phi gradient of Tucker et al. (2019),
    ``sum_k (w~_k - w~_k^2) d log w_k / dz_k dz_k/dphi`` with q's parameters detached inside
    ``log q``, which has the same expectation and lower variance. (With DReG and
    ``"wake_theta"`` left out, p's gradient is cancelled by a second evaluation of p; it
    is zero up to rounding rather than absent.)

    The reported value (``loss_history_``, ``bound_``) is the IWAE bound
    ``log (1/K) sum_k w_k``, so the wake draws are made whatever the phases. Samples with
    log-weight ``-inf`` get zero weight.

    Args:
        inf_net, gen_model: see :class:`~bbvae.losses.Loss`.
        n_samples: K, at least 2 (with one sample the normalised weight is always 1).
        phases: the phases that give gradients, a sequence of names from ``PHASES``.
        estimator: ``"default"`` (score form above) or ``"dreg"`` (needs ``q.rsample``).

    Attributes:
        loss_history_, log_p_, log_q_, bound_, ess_, max_weight_: see :class:`~bbvae.losses.Loss`.
        weights_ (Tensor): ``[batch, K]`` normalised weights of the last call, detached.
    """

    min_samples = 2
    importance_weighted = True

    def __init__(
        self,
        inf_net: InfNet,
        gen_model: GenModel,
        n_samples: int = 5,
        phases: Sequence[str] = ("wake_theta", "wake_phi"),
        estimator: str = "default",
    ) -> None:
        if isinstance(n_samples, int) and not isinstance(n_samples, bool) and n_samples < 2:
            raise ValueError(
                f"RWS: expected n_samples >= 2, got {n_samples}; with one sample the normalised "
                "importance weight is always 1 and wake-phi no longer moves q towards the posterior"
            )
        super().__init__(inf_net, gen_model, n_samples)
        _check_phases(phases)
        if estimator not in _ESTIMATORS:
            raise ValueError(f"RWS: expected estimator in {_ESTIMATORS}, got {estimator!r}")
        self.phases = phases
        self.estimator = estimator

    def estimate(self, x: torch.Tensor, **context) -> tuple[torch.Tensor, torch.Tensor]:
        phases = set(self.phases)
        dreg = self.estimator == "dreg" and "wake_phi" in phases
        q = self.inf_net(x, **context)
        if dreg:
            if not q.has_rsample:
                raise TypeError(
                    f"RWS(estimator='dreg') needs a reparametrizable q(z|x), but {type(q).__name__} "
                    "has no rsample; use estimator='default'"
                )
            z = q.rsample(self.n_samples)  # [batch, K, *latent], differentiable in phi
            with q.params_detached():
                log_q = q.log_prob(z)
        else:
            z = q.sample(self.n_samples).detach()  # [batch, K, *latent]: no gradient path
            log_q = q.log_prob(z)
        # With DReG the gradient reaching z is reweighted, so log p must be computed from this z:
        # a view makes a sequence model rescore it rather than reuse its sampling pass's log p.
        z_p = z.view_as(z) if dreg else z
        log_p = self.gen_model(x, z_p).log_prob(x, z_p)  # [batch, K]
        log_w = self.record(log_p, log_q)
        lw = log_w.detach()
        bound = log_mean_exp(lw)  # [batch]
        weights = normalized_weights(lw)  # [batch, K]
        weights = torch.where(torch.isnan(weights), torch.zeros_like(weights), weights)  # all -inf rows
        self.weights_ = weights
        # Zero-weight samples: keep their -inf out of the surrogate (0 * -inf is NaN).
        zero = torch.isneginf(lw)

        def weighted(term: torch.Tensor) -> torch.Tensor:
            return (weights * torch.where(zero, torch.zeros_like(term), term)).sum(dim=1)

        objective = torch.zeros_like(bound)
        if dreg:
            # sum_k w~_k log w_k: p's gradient is wake-theta; the hook turns the gradient
            # reaching z_k from w~_k d log w_k/dz_k into (w~_k - w~_k^2) d log w_k/dz_k.
            if z.requires_grad:
                factor = (1 - weights).reshape(*weights.shape, *([1] * (z.dim() - 2)))
                z.register_hook(lambda grad: grad * factor)
            objective = objective + weighted(log_w)
            if "wake_theta" not in phases:
                z_fixed = z.detach()
                objective = objective - weighted(self.gen_model(x, z_fixed).log_prob(x, z_fixed))
        else:
            if "wake_theta" in phases:
                objective = objective + weighted(log_p)
            if "wake_phi" in phases:
                objective = objective + weighted(log_q)
        if "sleep_phi" in phases:
            x_sleep, z_sleep = self.gen_model.sample(x.shape[0])  # [batch, *obs], [batch, *latent]
            q_sleep = self.inf_net(x_sleep)
            objective = objective + q_sleep.log_prob(z_sleep.unsqueeze(1)).squeeze(1)
        return bound, objective


def _check_phases(phases) -> None:
    if isinstance(phases, str) or not isinstance(phases, Sequence):
        raise TypeError(f"RWS: expected phases to be a tuple of phase names from {PHASES}, got {phases!r}")
    unknown = [name for name in phases if name not in PHASES]
    if unknown:
        raise ValueError(f"RWS: unknown phase(s) {unknown}; valid phases are {PHASES}")
    if len(phases) == 0:
        raise ValueError(f"RWS: expected at least one phase from {PHASES}, got {tuple(phases)}")
    if len(set(phases)) != len(phases):
        raise ValueError(f"RWS: expected each phase at most once, got {tuple(phases)}")
