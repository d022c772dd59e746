"""The evidence lower bound, with pathwise, score-function and sticking-the-landing gradients."""

from __future__ import annotations

import torch
from torch.distributions import Independent, MultivariateNormal, Normal, kl_divergence

from bbvae._validation import is_validation_enabled
from bbvae.base import GenModel, InfNet
from bbvae.losses.base import Loss
from bbvae.losses.sequence_options import check_sequence_options, sequence_options

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
        compile, remat_chunk, tbptt_chunk: for sequence models only (the views
            ``model.inf_net`` / ``model.gen_model``): compile the model's step, activation
            checkpointing and truncated backpropagation over chunks of time steps, as in
            :class:`~bbvae.losses.FIVO` (:mod:`bbvae.losses.sequence_options`).
    """

    def __init__(
        self,
        inf_net: InfNet,
        gen_model: GenModel,
        n_samples: int = 1,
        estimator: str = "auto",
        analytic_kl: bool = False,
        compile: bool | dict = False,
        remat_chunk: int | None = None,
        tbptt_chunk: int | None = None,
    ) -> None:
        super().__init__(inf_net, gen_model, n_samples)
        if estimator not in _ESTIMATORS:
            raise ValueError(f"ELBO: expected estimator in {_ESTIMATORS}, got {estimator!r}")
        if analytic_kl and estimator == "stl":
            raise ValueError(
                "ELBO: estimator='stl' removes the score term of log q, which the analytic KL "
                "does not have; use analytic_kl=False with 'stl'"
            )
        check_sequence_options("ELBO", inf_net, compile, remat_chunk, tbptt_chunk)
        self.estimator = estimator
        self.analytic_kl = analytic_kl
        self.compile = compile
        self.remat_chunk = remat_chunk
        self.tbptt_chunk = tbptt_chunk

    def estimate(self, x: torch.Tensor, **context) -> tuple[torch.Tensor, torch.Tensor]:
        with sequence_options(self):
            return self._estimate(x, **context)

    def _estimate(self, x: torch.Tensor, **context) -> tuple[torch.Tensor, torch.Tensor]:
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
            # A data point with a zero-weight sample (validation off) gets no learning signal.
            signal = term.detach()
            signal = torch.where(torch.isfinite(signal).all(dim=1, keepdim=True), signal, 0.0)
            objective = (term + signal * log_q).mean(dim=1) + offset
        else:
            objective = term.mean(dim=1) + offset
        return bound, objective

    @staticmethod
    def _kl(q: InfNet, p: GenModel) -> torch.Tensor:
        """``KL(q(z|x) || p(z))`` ``[batch]`` in closed form.

        q has batch shape ``[batch]``; the prior may have batch shape ``[]`` (one prior for all),
        ``[batch]``, or ``[batch, n_samples]`` (as :meth:`GenModel.prior` documents), as long as it
        does not depend on the samples. Both are expanded to a common batch shape first: torch's
        KL functions do not broadcast (the Bernoulli one fails on a ``[L]`` prior against a
        ``[batch, L]`` q).
        """
        q_dist, prior = q.distribution(), p.prior()
        batch = q_dist.batch_shape
        prior_batch = prior.batch_shape
        if len(prior_batch) <= len(batch):
            shape = torch.broadcast_shapes(batch, prior_batch)
            kl = _closed_form_kl(q_dist.expand(shape), prior.expand(shape))
        elif len(prior_batch) == 2 and len(batch) == 1:
            # A [batch, K] prior: score q at [batch, 1] (its parameters with a sample dim) instead.
            saved = q.params_
            try:
                q.params_ = {key: value.unsqueeze(1) for key, value in saved.items()}
                q_wide = q.distribution()
            finally:
                q.params_ = saved
            shape = torch.broadcast_shapes(q_wide.batch_shape, prior_batch)
            per_sample = _closed_form_kl(q_wide.expand(shape), prior.expand(shape))  # [batch, K]
            if is_validation_enabled() and not torch.allclose(
                per_sample, per_sample[:, :1].expand_as(per_sample)
            ):
                raise ValueError(
                    "ELBO(analytic_kl=True): the prior differs across the samples of z (it depends "
                    "on them), so KL(q || p(z)) is not one closed form; use analytic_kl=False"
                )
            kl = per_sample[:, 0]
        else:
            raise ValueError(
                f"ELBO(analytic_kl=True): expected a prior of batch shape [], [batch] or "
                f"[batch, n_samples], got {list(prior_batch)} against q's {list(batch)}"
            )
        if tuple(kl.shape) != tuple(batch):
            raise ValueError(
                f"ELBO(analytic_kl=True): expected KL(q || p) of shape {list(batch)} = [batch], got "
                f"{list(kl.shape)}; the prior must not depend on the samples"
            )
        return kl


def _closed_form_kl(q_dist, prior) -> torch.Tensor:
    """``kl_divergence(q_dist, prior)`` (equal batch shapes), with a clear error when torch has none."""
    try:
        return kl_divergence(q_dist, prior)
    except NotImplementedError:
        pass
    if isinstance(q_dist, MultivariateNormal):
        prior_mvn = _diagonal_normal_as_mvn(prior)
        if prior_mvn is not None:
            return kl_divergence(q_dist, prior_mvn)
    raise NotImplementedError(
        f"ELBO(analytic_kl=True): torch has no closed-form KL between "
        f"{type(q_dist).__name__} and {type(prior).__name__}; use analytic_kl=False"
    )


def _diagonal_normal_as_mvn(dist):
    """``Independent(Normal, 1)`` as the equal ``MultivariateNormal``; ``None`` for anything else."""
    if not (isinstance(dist, Independent) and isinstance(dist.base_dist, Normal)):
        return None
    if dist.reinterpreted_batch_ndims != 1:
        return None
    base = dist.base_dist
    return MultivariateNormal(base.loc, scale_tril=torch.diag_embed(base.scale))
