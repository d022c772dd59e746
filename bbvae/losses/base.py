"""``Loss``: the base of every bbvae objective.

The log-weight arithmetic the losses share (``log_mean_exp``, ``normalized_weights``,
``effective_sample_size``) lives in :mod:`bbvae._math` and is re-exported here.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from bbvae._math import effective_sample_size, log_mean_exp, normalized_weights, zero_weight_points
from bbvae._validation import (
    check_no_nan,
    check_positive_int,
    check_tensor,
    is_validation_enabled,
    shape_str,
)
from bbvae.base import GenModel, InfNet

__all__ = ["Loss", "LossHistory", "effective_sample_size", "log_mean_exp", "normalized_weights"]


def zero_weight_warning(points: list[int], n_samples: int, where: str) -> str:
    """The message of the warning about data points whose every sample has zero weight."""
    shown = points[:10]
    more = f" (and {len(points) - 10} more)" if len(points) > 10 else ""
    return (
        f"{where}: data point(s) {shown}{more} of the batch have log p(x, z) - log q(z|x) = -inf for all "
        f"{n_samples} sample(s) (zero likelihood under every draw): their bound is -inf, so the loss "
        "value is inf, and they contribute nothing to the gradient. If this is not bad luck with a "
        "model of bounded support, check these observations against the model's support and q's."
    )


class LossHistory:
    """Per-call objective values kept as detached tensors, converted to floats when read.

    Appending never synchronises with the device; reading stacks the pending values in
    one transfer and caches the floats.
    """

    def __init__(self) -> None:
        self._values: list[float] = []
        self._pending: list[torch.Tensor] = []

    #: Pending values are stacked into one tensor (on their device, no sync) past this count.
    chunk = 1024

    def append(self, value: torch.Tensor) -> None:
        self._pending.append(value.detach().reshape(1))
        if len(self._pending) >= self.chunk:
            self._pending = [torch.cat(self._pending)]

    def to_list(self) -> list[float]:
        if self._pending:
            self._values.extend(torch.cat(self._pending).cpu().double().tolist())
            self._pending.clear()
        return list(self._values)

    def __len__(self) -> int:
        return len(self._values) + sum(len(v) for v in self._pending)

    def clear(self) -> None:
        self._values.clear()
        self._pending.clear()


class Loss(nn.Module):
    """Base of every objective: ``loss = SomeLoss(inf_net, gen_model, n_samples=K)``.

    ``loss(x, **context)`` runs the forward passes its estimator needs and returns a
    scalar to minimise whose *value* is the negative bound averaged over the batch and
    whose *gradient* is the estimator's. ``context`` is passed to ``inf_net`` (and to
    ``gen_model`` when it accepts it). Subclasses implement :meth:`estimate`.

    Args:
        inf_net: the inference network q(z|x).
        gen_model: the generative model p(x, z).
        n_samples: Monte Carlo draws of z per data point (``K``).

    Attributes:
        loss_history_ (list[float]): the negative bound of every call, in order.
        log_p_ (Tensor): ``[batch, n_samples]`` log p(x, z) of the last call, detached.
        log_q_ (Tensor): ``[batch, n_samples]`` log q(z|x) of the last call, detached.
        bound_ (Tensor): ``[batch]`` per-data-point bound of the last call, detached.
        ess_ (Tensor): ``[batch]`` effective sample size of the last call's weights.
        max_weight_ (Tensor): ``[batch]`` largest normalised weight of the last call.
    """

    #: Minimum number of samples the estimator is defined for.
    min_samples = 1
    #: Whether the bound weights its samples (IWAE-type); only then is an ESS collapse warned about.
    importance_weighted = False

    def __init__(self, inf_net: InfNet, gen_model: GenModel, n_samples: int = 1) -> None:
        super().__init__()
        name = type(self).__name__
        if not isinstance(inf_net, nn.Module) or not callable(getattr(inf_net, "log_prob", None)):
            raise TypeError(f"{name}: expected inf_net to be an InfNet, got {type(inf_net).__name__}")
        if not isinstance(gen_model, nn.Module) or not callable(getattr(gen_model, "log_prob", None)):
            raise TypeError(f"{name}: expected gen_model to be a GenModel, got {type(gen_model).__name__}")
        check_positive_int("n_samples", n_samples, name, minimum=self.min_samples)
        self.inf_net = inf_net
        self.gen_model = gen_model
        self.n_samples = n_samples
        self._history = LossHistory()
        self._warned_ess = False
        self._warned_zero_weight = False
        self._ess_checks = 0

    # ------------------------------------------------------------------ public interface
    def forward(self, x: torch.Tensor, **context) -> torch.Tensor:
        check_tensor("x", x, type(self).__name__)
        bound, objective = self.estimate(x, **context)
        if tuple(bound.shape) != (x.shape[0],):
            raise ValueError(
                f"{type(self).__name__}.estimate: expected a bound of shape [{x.shape[0]}], "
                f"got {shape_str(list(bound.shape))}"
            )
        self.bound_ = bound.detach()
        value = -bound.detach().mean()
        self._history.append(value)
        # The value is the negative bound; the gradient is the estimator's surrogate. An infinite
        # surrogate (a data point of zero weight) carries no gradient, and must not turn into NaN.
        surrogate = objective - objective.detach()
        surrogate = torch.where(torch.isfinite(objective.detach()), surrogate, 0.0)
        return value + (-surrogate).mean()

    def estimate(self, x: torch.Tensor, **context) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(bound, objective)``, both ``[batch]``.

        ``bound`` is the value of the variational bound per data point; ``objective`` is
        the differentiable surrogate whose gradient is the estimator (to be maximised).
        """
        raise NotImplementedError

    def prepare(self, x: torch.Tensor, **context) -> None:
        """Create parameters whose shape depends on the data (NVIL's default baseline network).

        :class:`~bbvae.training.Trainer` calls this with the first batch before it builds the
        optimiser; call it yourself before building an optimiser by hand. Default: nothing.
        """

    @property
    def loss_history_(self) -> list[float]:
        return self._history.to_list()

    def reset_history(self) -> None:
        """Forget ``loss_history_`` (for example between independent runs)."""
        self._history.clear()

    # ------------------------------------------------------------- helpers for subclasses
    def draw(self, x: torch.Tensor, reparametrize: bool, n_samples: int | None = None, **context):
        """Run q on ``x``, draw ``K`` latents and score them under q and p.

        Returns:
            (z, log_q, log_p): ``[batch, K, *latent_shape]``, ``[batch, K]``, ``[batch, K]``.
        """
        k = self.n_samples if n_samples is None else n_samples
        q = self.inf_net(x, **context)
        if reparametrize and not q.has_rsample:
            raise TypeError(
                f"{type(self).__name__}: this estimator needs a reparametrizable q(z|x), but "
                f"{type(q).__name__} has no rsample; use ELBO(estimator='score'), NVIL, VIMCO, "
                "RWS or Concrete for latents that cannot be reparametrized"
            )
        z = q.rsample(k) if reparametrize else q.sample(k)
        log_q = q.log_prob(z)
        log_p = self.gen_model(x, z).log_prob(x, z)
        self.record(log_p, log_q)
        return z, log_q, log_p

    def record(self, log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
        """Check and store ``log_p_``, ``log_q_``, ``ess_``, ``max_weight_``; return log-weights."""
        name = type(self).__name__
        if log_p.shape != log_q.shape or log_p.dim() != 2:
            raise ValueError(
                f"{name}: expected log p and log q of shape [batch, n_samples], got "
                f"{shape_str(list(log_p.shape))} and {shape_str(list(log_q.shape))}"
            )
        check_no_nan("log p(x, z)", log_p, name)
        check_no_nan("log q(z|x)", log_q, name)
        log_w = (log_p - log_q).detach()
        self._warn_if_zero_weight(log_w)
        self.log_p_ = log_p.detach()
        self.log_q_ = log_q.detach()
        if log_w.shape[1] > 1:
            self.ess_ = effective_sample_size(log_w)
            self.max_weight_ = normalized_weights(log_w).amax(dim=1)
            self._warn_if_collapsed()
        return log_p - log_q

    def _warn_if_zero_weight(self, log_w: torch.Tensor) -> None:
        # Reads tensor values (a sync on accelerators): only while validating, and once per loss.
        if self._warned_zero_weight or not is_validation_enabled():
            return
        points = zero_weight_points(log_w)
        if points.numel():
            self._warned_zero_weight = True
            warnings.warn(
                zero_weight_warning(points.tolist(), log_w.shape[1], type(self).__name__),
                RuntimeWarning,
                stacklevel=4,
            )

    def _warn_if_collapsed(self) -> None:
        if self._warned_ess or not self.importance_weighted:
            return
        # Reading the ESS synchronises with an accelerator: there, look only at calls 1, 2, 4, 8, ...
        # (a logarithmic number of syncs); on the CPU reading costs nothing, so look every call.
        self._ess_checks += 1
        if self.ess_.device.type != "cpu" and self._ess_checks & (self._ess_checks - 1):
            return
        k = self.log_p_.shape[1]
        if k >= 4 and bool(self.ess_.mean() < 1.05):
            self._warned_ess = True
            warnings.warn(
                f"{type(self).__name__}: the effective sample size collapsed to about 1 of {k} "
                "samples: one sample carries nearly all the weight; q(z|x) is far from the "
                "posterior (try more samples, a better proposal, or a lower learning rate)",
                RuntimeWarning,
                stacklevel=4,
            )
