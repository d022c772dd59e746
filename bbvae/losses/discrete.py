"""Helpers shared by the estimators for discrete latents (ARM, DisARM, ARMS, REBAR, RELAX).

* :func:`discrete_logits`: q(z|x) as ``(kind, logits [batch, *latent_shape])`` when it is a
  (possibly ``Independent``) Bernoulli or OneHotCategorical, with clear errors otherwise.
* :func:`relaxed_log_joint`: ``log p(x, z)`` at a *relaxed* ``z`` (in ``[0, 1]`` or on the simplex):
  the likelihood at ``z`` plus the prior's log-mass written linearly in ``z`` when the generative
  model has a Bernoulli / OneHotCategorical ``prior()``; the user's own ``log_prob(x, z)``
  otherwise (the black-box case).
* :func:`learning_signal`: the detached per-sample ELBO signal ``log p - log q`` with rows that hold
  a zero-weight sample (``-inf``) zeroed, and the mask of the usable rows.
"""

from __future__ import annotations

import torch

from bbvae._validation import shape_str
from bbvae.base import GenModel, InfNet
from bbvae.losses.concrete import _BERNOULLI, _discrete_logits, discrete_log_prob

__all__ = ["discrete_logits", "learning_signal", "relaxed_log_joint", "sum_latent_dims"]


def discrete_logits(q: InfNet, x: torch.Tensor, where: str, bernoulli_only: bool = False):
    """``(kind, logits)`` of q(z|x) after its forward pass; logits ``[batch, *latent_shape]``.

    ``kind`` is ``"bernoulli"`` or ``"categorical"`` (then the categories are the last latent
    dimension). Batch dimensions of ``q.distribution()`` past the first count as latent dimensions.
    """
    try:
        dist = q.distribution()
    except NotImplementedError:
        raise TypeError(
            f"{where}: {type(q).__name__} has no distribution(); this estimator needs q(z|x) as a torch "
            "Bernoulli or OneHotCategorical (optionally Independent) from distribution()"
        ) from None
    kind, logits, _ = _discrete_logits(dist, "q(z|x)", f"{where}: inf_net.distribution()")
    if bernoulli_only and kind != _BERNOULLI:
        raise TypeError(
            f"{where}: this estimator is for Bernoulli latents, but q(z|x) is a one-hot categorical; "
            "use RLOO, REBAR or RELAX for categorical latents"
        )
    if logits.dim() == 0 or logits.shape[0] != x.shape[0]:
        raise ValueError(
            f"{where}: expected inf_net.distribution() of batch shape [{x.shape[0]}] (one q per data "
            f"point), got {shape_str(list(dist.batch_shape))}"
        )
    return kind, logits


def sum_latent_dims(per_entry: torch.Tensor, n_dims: int) -> torch.Tensor:
    """Sum ``[batch, K, *rest]`` over its last ``n_dims`` dimensions: ``[batch, K]``."""
    return per_entry.sum(dim=tuple(range(2, 2 + n_dims))) if n_dims > 0 else per_entry


def relaxed_log_joint(gen_model: GenModel, x: torch.Tensor, z: torch.Tensor, kind: str, where: str):
    """``log p(x, z)`` ``[batch, K]`` at relaxed latents ``z`` ``[batch, K, *latent_shape]``.

    With a Bernoulli / OneHotCategorical ``prior()`` (as :class:`~bbvae.losses.Concrete` needs), the
    prior's log-mass is written linearly in ``z`` (``z log p + (1 - z) log(1 - p)``; ``sum z log pi``),
    which equals it at the discrete points, and the likelihood is the model's at ``z``. A model
    without ``prior()`` is scored by its own ``log_prob(x, z)``, which must accept relaxed ``z``.
    """
    p = gen_model(x, z)
    try:
        prior = p.prior()
    except NotImplementedError:
        return p.log_prob(x, z)
    prior_kind, logits, event_shape = _discrete_logits(prior, "the prior", f"{where}: gen_model.prior()")
    if prior_kind != kind:
        raise TypeError(f"{where}: q(z|x) is a {kind} but the prior is a {prior_kind}; they must match")
    latent_shape = tuple(z.shape[2:])
    try:
        logits = torch.broadcast_to(logits, z.shape)
    except RuntimeError:
        raise ValueError(
            f"{where}: the prior's logits of shape {shape_str(list(logits.shape))} (event shape "
            f"{shape_str(list(event_shape))}) do not broadcast to the latents' shape "
            f"{shape_str(list(z.shape))} = [batch, n_samples, *latent_shape]"
        ) from None
    n_dims = len(latent_shape) if kind == _BERNOULLI else len(latent_shape) - 1
    log_prior = sum_latent_dims(discrete_log_prob(kind, logits, z), n_dims)
    return p.log_likelihood(x, z) + log_prior


def learning_signal(log_w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(signal [batch, K], usable [batch, 1])``: detached ``log w``, zero in unusable rows.

    A row that holds a sample of zero weight (``-inf``, possible only with validation off) has
    ELBO ``-inf`` and gets no learning signal.
    """
    log_w = log_w.detach()
    usable = torch.isfinite(log_w).all(dim=1, keepdim=True)
    return torch.where(usable, log_w, 0.0), usable
