"""The importance-weighted bound (Burda et al. 2016) and its low-variance gradients."""

from __future__ import annotations

import torch

from bbvae.base import GenModel, InfNet
from bbvae.losses.base import Loss, log_mean_exp, normalized_weights
from bbvae.losses.sequence_options import check_sequence_options, sequence_options

_ESTIMATORS = ("reparam", "stl", "dreg")


class IWAE(Loss):
    """IWAE bound ``log (1/K) sum_k p(x, z_k) / q(z_k|x)``, ``z_k ~ q(z|x)`` reparametrized.

    Args:
        inf_net, gen_model, n_samples: see :class:`~bbvae.losses.Loss` (``n_samples`` = K).
        estimator: ``"reparam"`` (plain pathwise gradient of the bound), ``"stl"``
            (sticking the landing: q's parameters detached inside ``log q``; biased for
            K > 1, Roeder et al. 2017) or ``"dreg"`` (doubly reparametrized gradient,
            Tucker et al. 2019: unbiased for the bound's gradient, and its signal-to-noise
            ratio for q does not vanish as K grows).
        compile, remat_chunk, tbptt_chunk: for sequence models only (the views
            ``model.inf_net`` / ``model.gen_model``): compile the model's step, activation
            checkpointing and truncated backpropagation over chunks of time steps, as in
            :class:`~bbvae.losses.FIVO` (:mod:`bbvae.losses.sequence_options`).
    """

    importance_weighted = True

    def __init__(
        self,
        inf_net: InfNet,
        gen_model: GenModel,
        n_samples: int = 1,
        estimator: str = "reparam",
        compile: bool | dict = False,
        remat_chunk: int | None = None,
        tbptt_chunk: int | None = None,
    ) -> None:
        super().__init__(inf_net, gen_model, n_samples)
        if estimator not in _ESTIMATORS:
            raise ValueError(f"IWAE: expected estimator in {_ESTIMATORS}, got {estimator!r}")
        check_sequence_options("IWAE", inf_net, compile, remat_chunk, tbptt_chunk)
        self.estimator = estimator
        self.compile = compile
        self.remat_chunk = remat_chunk
        self.tbptt_chunk = tbptt_chunk

    def estimate(self, x: torch.Tensor, **context) -> tuple[torch.Tensor, torch.Tensor]:
        with sequence_options(self):
            return self._estimate(x, **context)

    def _estimate(self, x: torch.Tensor, **context) -> tuple[torch.Tensor, torch.Tensor]:
        q = self.inf_net(x, **context)
        if not q.has_rsample:
            raise TypeError(
                f"IWAE needs a reparametrizable q(z|x), but {type(q).__name__} has no rsample; "
                "use VIMCO (score-function multi-sample bound) or RWS"
            )
        z = q.rsample(self.n_samples)
        if self.estimator == "reparam":
            log_q = q.log_prob(z)
        else:
            with q.params_detached():
                log_q = q.log_prob(z)
        # DReG reweights the gradient reaching z, so log p must be computed from this z; a view
        # makes a sequence model rescore it rather than reuse the log p of its sampling pass.
        z_p = z.view_as(z) if self.estimator == "dreg" else z
        log_w = self.record(self.gen_model(x, z_p).log_prob(x, z_p), log_q)  # [batch, K]
        bound = log_mean_exp(log_w.detach())
        if self.estimator != "dreg":
            return bound, log_mean_exp(log_w)
        # DReG: p's gradient is sum_k w_k grad log w_k; q's is sum_k w_k^2 dlog w_k/dz dz/dphi.
        # One surrogate gives both: sum_k w_k log w_k, with a hook that multiplies the
        # gradient reaching z_k by w_k once more.
        weights = normalized_weights(log_w.detach())  # [batch, K]
        if z.requires_grad:
            w = weights.reshape(*weights.shape, *([1] * (z.dim() - 2)))
            z.register_hook(lambda grad: grad * w)
        finite = torch.isfinite(log_w.detach())  # zero-weight samples: 0 * -inf would be NaN
        return bound, (weights * torch.where(finite, log_w, 0.0)).sum(dim=1)
