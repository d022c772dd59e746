"""Filtering variational objectives (Maddison et al. 2017): the SMC log Z-hat as a bound."""

from __future__ import annotations

import torch

from bbvae._validation import check_no_nan
from bbvae.base import GenModel, InfNet
from bbvae.losses.base import Loss, log_mean_exp
from bbvae.losses.sequence_options import check_sequence_options, ensure_compiled
from bbvae.losses.vimco import leave_one_out_bounds
from bbvae.sequential.base import length_mask
from bbvae.sequential.smc import GRADIENTS, get_resampling, multinomial_resampling, smc
from bbvae.sequential.views import get_sequential_model

_NORMALIZE = ("sequence", "length")
_PROPOSAL_GRADIENTS = ("unbiased", "segment")
#: Decay of the running mean of log Z-hat per step (the proposals' baseline without rsample).
_SCORE_DECAY = 0.9


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
        proposal_gradient: for latents without rsample (below): ``"unbiased"`` (default) or
            ``"segment"`` (VIMCO's leave-one-out signal within each segment between resamplings,
            see ``_segment_score``: biased, much lower variance on long sequences; K >= 2).
        compile: ``True`` (or a dict of ``torch.compile`` keywords) compiles the model's step
            (``model.compile_step()``) at the first call, unless it is compiled already; a compiler
            that fails warns and the eager step runs (:mod:`bbvae.losses.sequence_options`).
        remat_chunk: activation checkpointing over chunks of this many time steps: the same bound
            and gradients (the recomputation replays the same draws) with one chunk's activations
            alive instead of all ``T`` steps', for one more forward pass. ``None``: the model's
            ``remat_chunk`` (default off). See :mod:`bbvae.sequential.chunks`.
        tbptt_chunk: truncated backpropagation through time: the particle system is detached every
            this many steps. The same bound, a different (biased) gradient estimator. ``None``: the
            model's ``tbptt_chunk`` (default off).

    **Latents that cannot be reparametrized** (``model.has_rsample`` false, e.g. ``DiscreteHMM``):
    the proposals are drawn with ``sample`` and the gradient adds their score-function term,
    ``sum_t signal_t * sum_k grad log q(z_t^k | past, x)``, whose signal is the detached log Z-hat
    minus a baseline that does not depend on step ``t``'s draws (the log Z increments of earlier
    resampling steps plus a running mean of log Z-hat per step times the steps left; see
    ``_proposal_score``). The generative model keeps its pathwise gradient at the drawn particles.
    With ``gradient="score"`` (multinomial resampling) or ``ess_threshold=0`` (no resampling) the
    estimator is unbiased for the gradient of ``E[log Z-hat]``; with ``"none"`` or
    ``"stop_gradient"`` it is biased for such latents (``"none"`` drops the decisions' score terms;
    ``"stop_gradient"`` makes the gradient of Z-hat, not of its log, unbiased).

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
        proposal_signal_ (Tensor): the proposals' learning signal of the last call (latents without
            rsample only), detached: ``[batch, T]`` (``"unbiased"``) or ``[batch, T, K]`` (``"segment"``).
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
        proposal_gradient: str = "unbiased",
        compile: bool | dict = False,
        remat_chunk: int | None = None,
        tbptt_chunk: int | None = None,
    ) -> None:
        super().__init__(inf_net, gen_model, n_particles)
        get_sequential_model(inf_net, gen_model, "FIVO")
        check_sequence_options("FIVO", inf_net, compile, remat_chunk, tbptt_chunk)
        resample_fn = get_resampling(resampling, "FIVO")
        if gradient not in GRADIENTS:
            raise ValueError(f"FIVO: expected gradient in {GRADIENTS}, got {gradient!r}")
        if gradient == "score" and resample_fn is not multinomial_resampling:
            raise ValueError(
                f"FIVO: gradient='score' needs multinomial resampling (got {resampling!r}); "
                "use gradient='stop_gradient' for systematic or stratified resampling"
            )
        if proposal_gradient not in _PROPOSAL_GRADIENTS:
            raise ValueError(
                f"FIVO: expected proposal_gradient in {_PROPOSAL_GRADIENTS}, got {proposal_gradient!r}"
            )
        if proposal_gradient == "segment" and isinstance(n_particles, int) and n_particles < 2:
            raise ValueError(
                "FIVO: proposal_gradient='segment' compares each particle with the others; "
                f"expected n_particles >= 2, got {n_particles}"
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
        self.proposal_gradient = proposal_gradient
        self.compile = compile
        self.remat_chunk = remat_chunk
        self.tbptt_chunk = tbptt_chunk
        # Running mean of log Z-hat per valid step (bias-corrected), the proposals' baseline rate
        # for latents that cannot be reparametrized.
        self.register_buffer("score_rate", torch.zeros(()))
        self.register_buffer("score_rate_weight", torch.zeros(()))

    def estimate(
        self, x: torch.Tensor, lengths: torch.Tensor | None = None, inputs: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        model = get_sequential_model(self.inf_net, self.gen_model, "FIVO")
        if self.proposal_gradient == "segment" and model.has_rsample:
            raise ValueError(
                "FIVO: proposal_gradient='segment' is for latents without rsample, but "
                f"{type(model).__name__}'s proposal is reparametrized (its gradient is pathwise); "
                "leave proposal_gradient at its default"
            )
        ensure_compiled(model, self.compile)
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
            remat_chunk=self.remat_chunk,
            tbptt_chunk=self.tbptt_chunk,
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
        if not model.has_rsample:
            if self.proposal_gradient == "segment":
                objective = objective + self._segment_score(result, valid)
            else:
                objective = objective + self._proposal_score(result, valid, n_steps)
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

    #: Buffers that checkpoints written before them lack; they load (and resume) at their start.
    STATE_ADDED_LATER = ("score_rate", "score_rate_weight")

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        for name in self.STATE_ADDED_LATER:
            state_dict.setdefault(prefix + name, torch.zeros_like(getattr(self, name)))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _proposal_score(self, result, valid: torch.Tensor | None, n_steps: int) -> torch.Tensor:
        """REINFORCE term of the proposals ``[batch]``, for latents that cannot be reparametrized.

        The proposals of step ``t`` get the learning signal ``log Z-hat - past_t - m * r_t``: from
        the detached log Z-hat are subtracted the log Z increments of the resampling steps before
        ``t`` (fixed before the proposals are drawn) and the expected rest, ``r_t`` valid steps from
        ``t`` on times ``m``, a running mean over earlier calls of log Z-hat per valid step (zero at
        the first call). Neither depends on step ``t``'s draws, so the term is unbiased.
        """
        log_z = result.log_z.detach()
        increments = result.log_z_increments.detach()  # [batch, T]
        past = torch.cumsum(increments, dim=1) - increments  # before step t's proposals
        steps = torch.ones_like(increments) if valid is None else valid.to(increments.dtype)
        remaining = torch.flip(torch.cumsum(torch.flip(steps, (1,)), dim=1), (1,))  # valid steps from t on
        weight = self.score_rate_weight.to(log_z)
        rate = torch.where(weight > 0, self.score_rate.to(log_z) / weight.clamp_min(1e-12), 0.0)
        signal = log_z.unsqueeze(1) - past - rate * remaining
        finite = torch.isfinite(log_z)
        signal = torch.where(finite.unsqueeze(1), signal, 0.0) * steps
        if self.training:
            per_step = torch.where(finite, log_z / steps.sum(dim=1), 0.0)
            n_finite = finite.sum()
            batch_rate = per_step.sum() / n_finite.clamp_min(1).to(log_z.dtype)
            d = torch.where(n_finite > 0, log_z.new_tensor(_SCORE_DECAY), 1.0)
            self.score_rate = d * self.score_rate.to(log_z) + (1 - d) * batch_rate
            self.score_rate_weight = d * weight + (1 - d)
        self.proposal_signal_ = signal
        return (signal * result.proposal_log_prob.sum(dim=2)).sum(dim=1)

    def _segment_score(self, result, valid: torch.Tensor | None) -> torch.Tensor:
        """VIMCO's leave-one-out signal per particle and segment: the REINFORCE term ``[batch]``.

        A segment is the run of steps up to the next resampling (or the sequence's last step). The
        proposal of particle ``k`` at step ``t`` gets ``L - L_{-k}``, the segment's log-mean weight
        minus the same with particle ``k``'s weight replaced by the geometric mean of the others'
        (:func:`~bbvae.losses.vimco.leave_one_out_bounds`). Its effect on later segments, through
        resampling, is left out: biased, like ``gradient="none"``, and far less noisy on long sequences.
        """
        log_w = result.step_log_weights  # [batch, T, K]
        batch, n_steps, k = log_w.shape
        steps = torch.arange(n_steps, device=log_w.device).expand(batch, n_steps)
        last = steps[:, -1] if valid is None else valid.sum(dim=1) - 1  # [batch]
        ends = result.resampled | (steps == last.unsqueeze(1))
        end_index = torch.where(ends, steps, n_steps)
        segment_end = torch.flip(torch.cummin(torch.flip(end_index, (1,)), dim=1).values, (1,))
        segment_end = segment_end.clamp(max=n_steps - 1)  # [batch, T]: the step that closes t's segment
        w_end = torch.gather(log_w, 1, segment_end.unsqueeze(-1).expand(batch, n_steps, k)).reshape(-1, k)
        loo = leave_one_out_bounds(w_end)
        signal = log_mean_exp(w_end).unsqueeze(1) - torch.where(torch.isneginf(loo), 0.0, loo)
        signal = torch.where(torch.isfinite(signal), signal, 0.0).reshape(batch, n_steps, k)
        if valid is not None:
            signal = signal * valid.unsqueeze(-1).to(signal.dtype)
        self.proposal_signal_ = signal
        return (signal * result.proposal_log_prob).sum(dim=(1, 2))

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
