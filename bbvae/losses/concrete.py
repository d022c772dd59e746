"""The Concrete (Gumbel-softmax) relaxation of Bernoulli and categorical latents.

Maddison, Mnih and Teh (2017), "The Concrete distribution: a continuous relaxation of
discrete random variables"; Jang, Gu and Poole (2017), "Categorical reparameterization
with Gumbel-softmax".

A discrete latent is drawn by the Gumbel-max trick, ``z = onehot(argmax(logits + g))``
with Gumbel noise ``g`` (for a Bernoulli, ``z = [logits + l > 0]`` with logistic noise
``l``). Replacing the argmax by a softmax at temperature ``tau`` gives a reparametrizable
sample on the simplex (on ``(0, 1)`` for a Bernoulli) that tends to the discrete one as
``tau -> 0``. The maths stays in log space: a relaxed Bernoulli is drawn as its logit
``y = (logits + l) / tau`` and a relaxed categorical as ``log z = log_softmax((logits + g) / tau)``;
their densities (the "ExpConcrete" and logit-space forms of the paper) are computed from
those, never from ``z``, so they stay finite at any temperature.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.distributions import Bernoulli, Categorical, Distribution, Independent, OneHotCategorical

from bbvae._validation import check_no_nan, shape_str
from bbvae.base import GenModel, InfNet
from bbvae.losses.base import Loss

_BERNOULLI = "bernoulli"
_CATEGORICAL = "categorical"


# ------------------------------------------------------------------------------- maths helpers
def _discrete_logits(dist: Distribution, what: str, where: str) -> tuple[str, torch.Tensor, tuple[int, ...]]:
    """``(kind, logits, event_shape)`` of a (possibly ``Independent``) Bernoulli or OneHotCategorical.

    ``logits`` has shape ``batch_shape + event_shape`` of ``dist``.
    """
    base = dist
    while isinstance(base, Independent):
        base = base.base_dist
    event_shape = tuple(dist.event_shape)
    batch_shape = tuple(dist.batch_shape)
    if isinstance(base, Bernoulli):
        kind = _BERNOULLI
    elif isinstance(base, OneHotCategorical):
        kind = _CATEGORICAL
    else:
        hint = ""
        if isinstance(base, Categorical):
            hint = (
                " (for categorical latents return a OneHotCategorical: the relaxation lives on the simplex)"
            )
        raise TypeError(
            f"{where}: Concrete relaxes Bernoulli and OneHotCategorical latents (optionally wrapped in "
            f"Independent), but {what} is a {type(dist).__name__} of {type(base).__name__}{hint}; "
            "use ELBO, IWAE (reparametrizable q) or a score-function loss (NVIL, VIMCO, RWS) instead"
        )
    logits = base.logits.expand(*batch_shape, *event_shape)
    return kind, logits, event_shape


def relaxed_sample(
    kind: str, logits: torch.Tensor, temperature: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Draw a Concrete sample and the discrete sample it relaxes, from the same noise.

    Args:
        kind: ``"bernoulli"`` (elementwise binary latents) or ``"categorical"`` (one-hot
            latents, categories on the last dimension).
        logits: ``[*shape]`` logits; one sample is drawn per entry (per row of the last
            dimension for ``"categorical"``).
        temperature: the relaxation temperature ``tau > 0``.

    Returns:
        ``(y, z, hard)``, each ``[*shape]``: ``y`` is the sample in log space (the logit of
        the relaxed Bernoulli; ``log z`` for the categorical), ``z`` the relaxed sample
        (``sigmoid(y)`` clamped to ``[eps, 1 - eps]``; ``softmax``), and ``hard`` the exact
        discrete sample from the logits (``y > 0``; ``onehot(argmax y)``), which does not
        depend on the temperature and carries no gradient.
    """
    finfo = torch.finfo(logits.dtype)
    u = torch.rand(logits.shape, dtype=logits.dtype, device=logits.device).clamp(finfo.tiny, 1.0 - finfo.eps)
    if kind == _BERNOULLI:
        noise = torch.log(u) - torch.log1p(-u)  # logistic
        y = (logits + noise) / temperature
        z = torch.sigmoid(y).clamp(finfo.eps, 1.0 - finfo.eps)
        hard = (y.detach() > 0).to(logits.dtype)
        return y, z, hard
    if kind == _CATEGORICAL:
        noise = -torch.log(-torch.log(u))  # Gumbel
        scores = (logits + noise) / temperature
        y = torch.log_softmax(scores, dim=-1)  # log z
        hard = F.one_hot(scores.detach().argmax(dim=-1), logits.shape[-1]).to(logits.dtype)
        return y, y.exp(), hard
    raise ValueError(f"relaxed_sample: expected kind 'bernoulli' or 'categorical', got {kind!r}")


def relaxed_log_prob(kind: str, logits: torch.Tensor, y: torch.Tensor, temperature: float) -> torch.Tensor:
    """Log-density of a Concrete sample given in log space (see :func:`relaxed_sample`).

    Bernoulli, per entry, of the logit ``y``: ``log tau + (a - tau y) - 2 softplus(a - tau y)``.
    Categorical, per row of the last dimension, of ``y = log z`` (ExpConcrete):
    ``log (n-1)! + (n-1) log tau + sum_i (a_i - tau y_i) - n logsumexp(a - tau y)``.

    Returns:
        ``[*shape]`` (Bernoulli) or ``[*shape[:-1]]`` (categorical).
    """
    log_tau = math.log(temperature)
    if kind == _BERNOULLI:
        s = logits - temperature * y
        return log_tau + s - 2.0 * F.softplus(s)
    n = y.shape[-1]
    s = logits - temperature * y
    return math.lgamma(n) + (n - 1) * log_tau + s.sum(dim=-1) - n * torch.logsumexp(s, dim=-1)


def discrete_log_prob(kind: str, logits: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """Bernoulli / one-hot categorical log-mass, linear (so differentiable) in ``z``.

    Returns:
        ``[*shape]`` (Bernoulli) or ``[*shape[:-1]]`` (categorical).
    """
    if kind == _BERNOULLI:
        return z * F.logsigmoid(logits) + (1.0 - z) * F.logsigmoid(-logits)
    return (z * torch.log_softmax(logits, dim=-1)).sum(dim=-1)


def _sum_event(kind: str, per_entry: torch.Tensor, n_latent_dims: int) -> torch.Tensor:
    """Sum the per-entry log-densities ``[batch, K, ...]`` to ``[batch, K]``."""
    n = n_latent_dims if kind == _BERNOULLI else n_latent_dims - 1
    return per_entry.sum(dim=tuple(range(2, 2 + n))) if n > 0 else per_entry


# ------------------------------------------------------------------------------------ the loss
class Concrete(Loss):
    """Relaxed ELBO for Bernoulli or categorical latents (Concrete / Gumbel-softmax estimator).

    Each call draws ``n_samples`` Concrete samples per data point from the relaxation of
    q(z|x) at the current temperature and maximises the *relaxed* ELBO

    ``E[log p(x | z~) + log p~_tau(z~) - log q~_tau(z~ | x)]``,

    where ``q~_tau`` is the Concrete relaxation of q and ``p~_tau`` the Concrete relaxation
    of the generative model's prior at the same temperature, as Maddison et al. (2017,
    section 5) recommend: a relaxed sample scored under the discrete prior has no density,
    and the KL between relaxed distributions keeps the surrogate a proper bound of the
    relaxed model. Both densities are computed in log space (logit space for Bernoulli,
    log-simplex for categorical), where the change-of-variables factors cancel in the ratio.
    The gradient is pathwise through the relaxed sample.

    With ``straight_through=True`` (Jang et al. 2017), the latents fed forward are the hard
    (discrete) samples and the gradient is the relaxed one: ``z = hard + z~ - z~.detach()``;
    the surrogate is then the discrete ELBO at the hard ``z`` with the discrete densities of
    q and the prior (written linearly in ``z`` so the gradient reaches ``z~``).

    The *reported* value (``loss(x)``'s value, ``bound_``, ``loss_history_``) is the discrete
    ELBO estimated from the hard samples ``hard = [y > 0]`` (``onehot(argmax)``) of the same
    noise, which are exact samples of q(z|x): ``mean_k log p(x, hard_k) - log q(hard_k | x)``,
    an unbiased estimate of the ELBO of the discrete model. Without straight-through this
    costs one extra forward pass of ``gen_model`` on the hard latents, under
    ``torch.no_grad`` (no backward); with straight-through it is free.

    The generative model must therefore accept real-valued latents during training: ``z`` in
    ``[0, 1]^shape`` (clamped to ``[eps, 1 - eps]``) for Bernoulli latents, points of the
    probability simplex on the last dimension for categorical ones, not only ``{0, 1}``. Its
    ``prior()`` must be a Bernoulli or OneHotCategorical (optionally ``Independent``) of the
    same kind and event shape as q, with batch shape broadcasting to ``[batch, n_samples]``;
    its likelihood is what it computes from the relaxed ``z``.

    A generative model **without** ``prior()`` (one that writes only ``log_prob(x, z)``, the
    black-box case) is scored by its own ``log_prob`` at the relaxed ``z``, against q's log-mass
    written linearly in ``z`` (``z log q + (1 - z) log(1 - q)``; ``sum z log pi``), as Jang et al.
    (2017) do: ``E[log p(x, z~) - log q(z~|x)]`` with discrete-form densities. Unlike the relaxed
    ELBO of Maddison et al. used when ``prior()`` exists, this surrogate is not a bound of a relaxed
    model; both tend to the discrete ELBO as ``tau -> 0``, and the reported value is always the
    discrete ELBO. ``log_prob`` must then accept relaxed ``z`` (and be differentiable in it).

    Args:
        inf_net: q(z|x), whose ``distribution()`` is a ``Bernoulli`` or ``OneHotCategorical``,
            optionally wrapped in ``Independent`` (anything else raises TypeError); its first
            batch dimension is the data batch, and any further ones count as latent dimensions.
        gen_model: p(x, z) with a Bernoulli / OneHotCategorical ``prior()``.
        temperature: the relaxation temperature ``tau > 0`` (Maddison et al. suggest 2/3
            for Bernoulli and 1/2 to 1 for categorical latents), or a schedule: a callable
            ``step -> tau`` called with the number of previous calls of this loss (0, 1, ...).
        straight_through: feed hard samples forward, relaxed gradients backward.
        n_samples: relaxed samples per data point (the surrogate and the reported bound
            average over them).

    Attributes:
        temperature_ (float): the temperature of the last call.
        n_calls_ (int): training-mode calls so far, the schedule's step (kept in the buffer
            ``schedule_step``, so it is checkpointed; calls in ``eval()`` mode do not advance it).
        z_ (Tensor): ``[batch, n_samples, *latent_shape]`` latents fed to ``gen_model`` by the
            last call for training (relaxed; hard with ``straight_through``), detached.
        z_hard_ (Tensor): ``[batch, n_samples, *latent_shape]`` the hard samples of the last call.
        relaxed_bound_ (Tensor): ``[batch]`` value of the surrogate of the last call (the
            relaxed ELBO; with ``straight_through`` the discrete ELBO at the hard z), detached.
        Plus those of :class:`~bbvae.losses.Loss` (``log_p_``/``log_q_`` are the discrete
        log-densities at the hard samples).
    """

    def __init__(
        self,
        inf_net: InfNet,
        gen_model: GenModel,
        temperature: float | Callable[[int], float] = 2.0 / 3.0,
        straight_through: bool = False,
        n_samples: int = 1,
    ) -> None:
        super().__init__(inf_net, gen_model, n_samples)
        if not callable(temperature):
            _check_temperature(temperature, "temperature", "Concrete")
        if not isinstance(straight_through, bool):
            raise TypeError(
                f"Concrete: expected straight_through to be a bool, got {type(straight_through).__name__}"
            )
        self.temperature = temperature
        self.straight_through = straight_through
        # The schedule's step: a buffer, so checkpoints carry it and resume continues the schedule.
        self.register_buffer("schedule_step", torch.zeros((), dtype=torch.long))

    @property
    def n_calls_(self) -> int:
        """Training calls so far (the schedule's step); evaluation calls do not advance it."""
        return int(self.schedule_step)

    def _next_temperature(self) -> float:
        step = self.n_calls_
        if callable(self.temperature):
            tau = _check_temperature(
                self.temperature(step), f"temperature({step}) (the schedule)", "Concrete"
            )
        else:
            tau = float(self.temperature)
        if self.training:
            self.schedule_step += 1
        self.temperature_ = tau
        return tau

    def estimate(self, x: torch.Tensor, **context) -> tuple[torch.Tensor, torch.Tensor]:
        name = type(self).__name__
        tau = self._next_temperature()
        q = self.inf_net(x, **context)
        try:
            q_dist = q.distribution()
        except NotImplementedError:
            raise TypeError(
                f"{name}: {type(q).__name__} has no distribution(); the Concrete relaxation needs q(z|x) "
                "as a torch Bernoulli or OneHotCategorical (optionally Independent) from distribution()"
            ) from None
        kind, q_logits, _ = _discrete_logits(q_dist, "q(z|x)", f"{name}: inf_net.distribution()")
        if q_logits.dim() == 0 or q_logits.shape[0] != x.shape[0]:
            raise ValueError(
                f"{name}: expected inf_net.distribution() of batch shape [{x.shape[0]}] (one q per "
                f"data point), got {shape_str(list(q_dist.batch_shape))}"
            )
        # Batch dims past the first count as latent dims, as Independent would make them.
        latent_shape = tuple(q_logits.shape[1:])
        k = self.n_samples
        sample_shape = (x.shape[0], k, *latent_shape)
        logits = q_logits.unsqueeze(1).expand(sample_shape)  # [batch, K, *latent_shape]
        y, z_soft, z_hard = relaxed_sample(kind, logits, tau)
        n_dims = len(latent_shape)
        self.z_hard_ = z_hard

        if self.straight_through:
            z = z_hard + (z_soft - z_soft.detach())  # value: hard; gradient: relaxed
            p = self.gen_model(x, z)
            log_p = self._discrete_log_joint(p, x, z, kind, latent_shape, sample_shape)
            log_q = _sum_event(kind, discrete_log_prob(kind, logits, z), n_dims)
            log_w = self.record(log_p, log_q)  # [batch, K]
            objective = log_w.mean(dim=1)
            bound = objective.detach()
        else:
            # Reported value: the discrete ELBO at the hard samples (no gradient needed).
            with torch.no_grad():
                p = self.gen_model(x, z_hard)
                log_p_hard = self._discrete_log_joint(p, x, z_hard, kind, latent_shape, sample_shape)
                log_q_hard = _sum_event(kind, discrete_log_prob(kind, logits, z_hard), n_dims)
            bound = self.record(log_p_hard, log_q_hard).mean(dim=1)
            # Training surrogate: the relaxed ELBO at the relaxed samples.
            z = z_soft
            p = self.gen_model(x, z)
            p_logits = self._prior_logits(p, kind, latent_shape, sample_shape)
            if p_logits is None:
                # No prior(): the user's log p(x, z) at the relaxed sample against q's log-mass
                # written linearly in z (Jang et al. 2017), not a density ratio of relaxations.
                log_q = _sum_event(kind, discrete_log_prob(kind, logits, z), n_dims)
                log_w = p.log_prob(x, z) - log_q
            else:
                log_q = _sum_event(kind, relaxed_log_prob(kind, logits, y, tau), n_dims)
                log_prior = _sum_event(kind, relaxed_log_prob(kind, p_logits, y, tau), n_dims)
                log_w = p.log_likelihood(x, z) + log_prior - log_q
            check_no_nan("the relaxed log-weight log p(x, z~) - log q(z~|x)", log_w, name)
            objective = log_w.mean(dim=1)
        self.z_ = z.detach()
        self.relaxed_bound_ = objective.detach()
        return bound, objective

    def _discrete_log_joint(self, p: GenModel, x, z, kind: str, latent_shape, sample_shape) -> torch.Tensor:
        """log p(x, z) ``[batch, K]`` with the prior's log-mass linear in ``z`` (the model's own
        ``log_prob`` when it has no ``prior()``)."""
        p_logits = self._prior_logits(p, kind, latent_shape, sample_shape)
        if p_logits is None:
            return p.log_prob(x, z)
        n_dims = len(latent_shape)
        return p.log_likelihood(x, z) + _sum_event(kind, discrete_log_prob(kind, p_logits, z), n_dims)

    def _prior_logits(
        self, p: GenModel, kind: str, latent_shape: tuple[int, ...], sample_shape
    ) -> torch.Tensor | None:
        """The prior's logits broadcast to ``sample_shape``; ``None`` when ``p`` has no ``prior()``."""
        name = type(self).__name__
        try:
            prior = p.prior()
        except NotImplementedError:
            return None
        prior_kind, logits, event_shape = _discrete_logits(prior, "the prior", f"{name}: gen_model.prior()")
        if prior_kind != kind:
            raise TypeError(
                f"{name}: q(z|x) is a {kind} but the prior is a {prior_kind}; the relaxation needs "
                "latents of the same kind in both"
            )
        n_event = len(event_shape)
        if n_event > 0 and event_shape != latent_shape[len(latent_shape) - n_event :]:
            raise ValueError(
                f"{name}: q(z|x) has latent shape {shape_str(list(latent_shape))} but the prior has "
                f"event shape {shape_str(list(event_shape))}; they must match"
            )
        try:
            return torch.broadcast_to(logits, sample_shape)
        except RuntimeError:
            raise ValueError(
                f"{name}: the prior's logits of shape {shape_str(list(logits.shape))} do not broadcast "
                f"to the latents' shape {shape_str(list(sample_shape))} = [batch, n_samples, *latent_shape]"
            ) from None


def _check_temperature(value, what: str, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(
            f"{where}: expected {what} to be a positive float (or a callable step -> float), "
            f"got {type(value).__name__}"
        )
    value = float(value)
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"{where}: expected {what} to be a finite float > 0, got {value}")
    return value


#: Jang et al.'s name for the same estimator.
GumbelSoftmax = Concrete
