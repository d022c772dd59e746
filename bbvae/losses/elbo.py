"""The evidence lower bound, with pathwise, score-function and sticking-the-landing gradients."""

from __future__ import annotations

import torch
from torch.distributions import Independent, MultivariateNormal, Normal, kl_divergence

from bbvae.base import GenModel, InfNet
from bbvae.losses.base import Loss

_ESTIMATORS = ("auto", "reparam", "score", "stl")


class ELBO(Loss):
    """ELBO ``E_q[log p(x, z) - log q(z|x)]`` estimated with ``n_samples`` draws per data point.

    Args:
        inf_net, gen_model, n_samples: see :class:`~bbvae.losses.Loss`.
        estimator: ``"auto"`` (pathwise when q has ``rsample``, score function otherwise),
            ``"reparam"`` (pathwise), ``"score"`` (REINFORCE: ``(log w).detach() * grad log q``),
            or ``"stl"`` (sticking the landing, Roeder et al. 2017: pathwise with q's
            parameters detached in ``log q``, which drops the zero-mean score term).
        analytic_kl: use ``E_q[log p(x|z)] - KL(q(z|x) || p(z))`` with the KL in closed
            form (needs ``gen_model.prior()`` and a KL registered in torch).
    """

    def __init__(
        self,
        inf_net: InfNet,
        gen_model: GenModel,
        n_samples: int = 1,
        estimator: str = "auto",
        analytic_kl: bool = False,
    ) -> None:
        super().__init__(inf_net, gen_model, n_samples)
        if estimator not in _ESTIMATORS:
            raise ValueError(f"ELBO: expected estimator in {_ESTIMATORS}, got {estimator!r}")
        if analytic_kl and estimator == "stl":
            raise ValueError(
                "ELBO: estimator='stl' removes the score term of log q, which the analytic KL "
                "does not have; use analytic_kl=False with 'stl'"
            )
        self.estimator = estimator
        self.analytic_kl = analytic_kl

    def estimate(self, x: torch.Tensor, **context) -> tuple[torch.Tensor, torch.Tensor]:
        q = self.inf_net(x, **context)
        estimator = self.estimator
        if estimator == "auto":
            estimator = "reparam" if q.has_rsample else "score"
        reparametrize = estimator in ("reparam", "stl")
        if reparametrize and not q.has_rsample:
            raise TypeError(
                f"ELBO(estimator={estimator!r}) needs a reparametrizable q(z|x), but "
                f"{type(q).__name__} has no rsample; use estimator='score' (or NVIL, VIMCO, RWS)"
            )
        z = q.rsample(self.n_samples) if reparametrize else q.sample(self.n_samples)
        if estimator == "stl":
            with q.params_detached():
                log_q = q.log_prob(z)
        else:
            log_q = q.log_prob(z)
        p = self.gen_model(x, z)
        if self.analytic_kl:
            log_lik = p.log_likelihood(x, z)
            kl = self._kl(q, p)  # [batch]
            self.record(log_lik + p.log_prior(z), log_q)
            term, offset = log_lik, -kl
        else:
            log_p = p.log_prob(x, z)
            term, offset = self.record(log_p, log_q), 0.0
        bound = term.detach().mean(dim=1) + offset
        if estimator == "score":
            objective = (term + term.detach() * log_q).mean(dim=1) + offset
        else:
            objective = term.mean(dim=1) + offset
        return bound, objective

    @staticmethod
    def _kl(q: InfNet, p: GenModel) -> torch.Tensor:
        q_dist, prior = q.distribution(), p.prior()
        try:
            kl = kl_divergence(q_dist, prior)
        except NotImplementedError:
            kl = None
        if kl is None and isinstance(q_dist, MultivariateNormal):
            prior_mvn = _diagonal_normal_as_mvn(prior)
            kl = None if prior_mvn is None else kl_divergence(q_dist, prior_mvn)
        if kl is None:
            raise NotImplementedError(
                f"ELBO(analytic_kl=True): torch has no closed-form KL between "
                f"{type(q_dist).__name__} and {type(prior).__name__}; use analytic_kl=False"
            ) from None
        if kl.dim() != 1:
            raise ValueError(
                f"ELBO(analytic_kl=True): expected KL(q || p) of shape [batch], got "
                f"{list(kl.shape)}; the prior must not depend on the samples"
            )
        return kl


def _diagonal_normal_as_mvn(dist):
    """``Independent(Normal, 1)`` as the equal ``MultivariateNormal``; ``None`` for anything else."""
    if not (isinstance(dist, Independent) and isinstance(dist.base_dist, Normal)):
        return None
    if dist.reinterpreted_batch_ndims != 1:
        return None
    base = dist.base_dist
    return MultivariateNormal(base.loc, scale_tril=torch.diag_embed(base.scale))
