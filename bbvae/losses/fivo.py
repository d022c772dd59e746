"""Filtering variational objectives (Maddison et al. 2017): the SMC log Z-hat as a bound."""

from __future__ import annotations

import torch

from bbvae._validation import check_no_nan
from bbvae.base import GenModel, InfNet
from bbvae.losses.base import Loss
from bbvae.sequential.base import length_mask
from bbvae.sequential.smc import GRADIENTS, get_resampling, multinomial_resampling, smc
from bbvae.sequential.views import get_sequential_model

_NORMALIZE = ("sequence", "length")


class FIVO(Loss):
    """FIVO bound ``log Z-hat`` of a particle filter over a :class:`~bbvae.sequential.SequentialModel`.

    ``FIVO(model.inf_net, model.gen_model, n_particles=K)(x, lengths=lengths, inputs=inputs)``.
    With ``ess_threshold=0`` it is the IWAE bound, and with ``K = 1`` also the ELBO.

    Args:
        inf_net: the model's inference view, ``model.inf_net`` (the model is taken from it).
        gen_model: the same model's generative view, ``model.gen_model``.
        n_particles: ``K``.
        resampling: ``"multinomial"``, ``"systematic"``, ``"stratified"`` or a resampling function
            (see :mod:`bbvae.sequential.smc`).
        ess_threshold: resample where ESS < ``ess_threshold * K`` (0: never, 1: at every step).
        gradient: gradient through the resampling decisions. ``"none"`` (the paper's default,
            biased: the decisions' score terms are dropped); ``"score"`` (adds the REINFORCE term
            ``sum_t signal_t * log P(a_t)`` of every resampling step, whose signal is the detached
            log Z-hat minus the part of it already accumulated before the decision, an unbiased
            baseline; multinomial resampling only); ``"stop_gradient"`` (Scibior & Wood 2021: after
            resampling each particle's weight is multiplied by ``w_a / stop_grad(w_a)`` of its
            ancestor, which leaves every value unchanged and makes the gradient of Z-hat unbiased;
            the loss differentiates its log).
        normalize: ``"sequence"`` (default: the bound in nats per sequence) or ``"length"`` (each
            sequence's bound divided by its length, as the FIVO reference's training loss).

    Attributes:
        loss_history_ (list[float]): negative bound of every call (batch mean).
        bound_ (Tensor): ``[batch]`` the last call's bound (after ``normalize``).
        log_z_ (Tensor): ``[batch]`` the last call's log Z-hat in nats per sequence.
        log_p_ (Tensor): ``[batch, K]`` log p(x, z) summed along each final particle's line.
        log_q_ (Tensor): ``[batch, K]`` log q(z | x) summed along each final particle's line.
        log_weights_ (Tensor): ``[batch, K]`` the final particles' log-weights since their last
            resampling.
        ess_ (Tensor): ``[batch]`` mean ESS before resampling over each sequence's valid steps.
        resampling_rate_ (Tensor): scalar, the fraction of valid steps (before each sequence's last)
            at which the particles were resampled.
    """

    def __init__(
        self,
        inf_net: InfNet,
        gen_model: GenModel,
        n_particles: int = 4,
        resampling="multinomial",
        ess_threshold: float = 0.5,
        gradient: str = "none",
        normalize: str = "sequence",
    ) -> None:
        super().__init__(inf_net, gen_model, n_particles)
        get_sequential_model(inf_net, gen_model, "FIVO")
        resample_fn = get_resampling(resampling, "FIVO")
        if gradient not in GRADIENTS:
            raise ValueError(f"FIVO: expected gradient in {GRADIENTS}, got {gradient!r}")
        if gradient == "score" and resample_fn is not multinomial_resampling:
            raise ValueError(
                f"FIVO: gradient='score' needs multinomial resampling (got {resampling!r}); "
                "use gradient='stop_gradient' for systematic or stratified resampling"
            )
        if normalize not in _NORMALIZE:
            raise ValueError(f"FIVO: expected normalize in {_NORMALIZE}, got {normalize!r}")
        if isinstance(ess_threshold, bool) or not isinstance(ess_threshold, (int, float)):
            raise TypeError(
                f"FIVO: expected ess_threshold to be a float in [0, 1], got {type(ess_threshold).__name__}"
            )
        if not 0.0 <= ess_threshold <= 1.0:
            raise ValueError(f"FIVO: expected ess_threshold in [0, 1], got {ess_threshold}")
        self.n_particles = n_particles
        self.resampling = resampling
        self.ess_threshold = ess_threshold
        self.gradient = gradient
        self.normalize = normalize

    def estimate(
        self, x: torch.Tensor, lengths: torch.Tensor | None = None, inputs: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        model = get_sequential_model(self.inf_net, self.gen_model, "FIVO")
        if not model.has_rsample:
            raise TypeError(
                f"FIVO: {type(model).__name__} has latents that cannot be reparametrized, and FIVO's "
                "gradient is pathwise; use VIMCO or RWS to train it (smc() still evaluates the bound)"
            )
        # smc checks x, lengths and inputs (once: FIVO does not check them again).
        result = smc(
            model,
            x,
            self.n_particles,
            resampling=self.resampling,
            ess_threshold=self.ess_threshold,
            lengths=lengths,
            inputs=inputs,
            reparametrize=True,
            gradient=self.gradient,
        )
        log_z = result.log_z
        check_no_nan("log Z-hat", log_z, "FIVO")
        objective = log_z
        if self.gradient == "score":
            # REINFORCE for the resampling decisions at step t, with the log Z accumulated before
            # the decision (independent of it) subtracted from the signal.
            past = torch.cumsum(result.log_z_increments.detach(), dim=1)  # [batch, T]
            signal = log_z.detach().unsqueeze(1) - past
            objective = objective + (signal * result.ancestor_log_prob).sum(dim=1)
        n_steps = x.shape[1]
        valid = None if lengths is None else length_mask(lengths, n_steps, result.ess.device)  # [batch, T]
        self._store_diagnostics(result, valid, n_steps)
        self.log_z_ = log_z.detach()
        bound = log_z.detach()
        if self.normalize == "length":
            length = (
                lengths.to(device=log_z.device, dtype=log_z.dtype)
                if lengths is not None
                else torch.full_like(log_z.detach(), float(n_steps))
            )
            bound, objective = bound / length, objective / length
        return bound, objective

    def _store_diagnostics(self, result, valid: torch.Tensor | None, n_steps: int) -> None:
        self.log_p_ = result.log_p.detach()
        self.log_q_ = result.log_q.detach()
        self.log_weights_ = result.log_weights.detach()
        self.max_weight_ = torch.softmax(self.log_weights_, dim=1).amax(dim=1)
        ess, resampled = result.ess, result.resampled  # [batch, T]
        if valid is None:
            self.ess_ = ess.mean(dim=1)
            eligible = max(n_steps - 1, 1) * ess.shape[0]
            self.resampling_rate_ = resampled.sum().to(ess.dtype) / eligible
            return
        counts = valid.sum(dim=1).to(ess.dtype)
        self.ess_ = torch.where(valid, ess, 0.0).sum(dim=1) / counts
        eligible = (counts - 1).sum().clamp(min=1.0)
        self.resampling_rate_ = resampled.sum().to(ess.dtype) / eligible
