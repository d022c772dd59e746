"""Sequential Monte Carlo over a :class:`~bbvae.sequential.SequentialModel`, and resampling schemes.

The filter follows the FIVO reference (Maddison et al. 2017, fivo/smc.py): log-weights accumulate
``log p(x_t, z_t | past) - log q(z_t | past, x)``; at each step the effective sample size is computed
in log space and, where it falls below ``ess_threshold * K``, the particles are resampled, the
log-marginal increment ``logmeanexp`` of the accumulated weights is added to ``log Z`` and the
weights are reset to uniform. At the end ``logmeanexp`` of the remaining weights is added. Steps
past a sequence's length change nothing, and a sequence is never resampled at its last step (it
would change no value). Resampling is a ``gather`` on dim 1; ancestors carry no gradient.

Long sequences: ``remat_chunk`` (activation checkpointing, the same values and gradients) and
``tbptt_chunk`` (truncated backpropagation, another gradient) run the loop in chunks of time steps
(:mod:`bbvae.sequential.chunks`).

Resampling schemes are small functions ``(log_weights [B, K], generator=None) -> ancestors [B, K]``
(long): :func:`multinomial_resampling`, :func:`systematic_resampling`,
:func:`stratified_resampling`. Any callable of that form can be passed as ``resampling``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any, NamedTuple

import torch

from bbvae._math import log_mean_exp
from bbvae._validation import check_positive_int, is_validation_enabled
from bbvae.sequential.base import (
    _check_model,
    _check_step_output,
    check_sequence_args,
    encode_checked,
    gather_particles,
    tree_where,
)
from bbvae.sequential.chunks import Carry, resolve_chunks, run_steps
from bbvae.sequential.compiled import model_step

Resampler = Callable[..., torch.Tensor]
GRADIENTS = ("none", "score", "stop_gradient")


# --------------------------------------------------------------------------------- resampling
def _inverse_cdf(log_weights: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Indices ``j`` with ``cdf[j-1] <= u < cdf[j]`` for uniforms ``u`` ``[B, K]`` in [0, 1)."""
    weights = torch.softmax(log_weights.detach(), dim=1)  # [B, K]
    cdf = torch.cumsum(weights, dim=1)
    index = torch.searchsorted(cdf, (u * cdf[:, -1:]).contiguous(), right=True)
    # Rounding can put u * total at or past the last cdf value: fall back to the last particle
    # of positive weight (never to a zero-weight one).
    k = weights.shape[1]
    last_positive = (k - 1) - torch.argmax(torch.flip(weights > 0, dims=(1,)).to(torch.uint8), dim=1)
    return torch.minimum(index, last_positive.unsqueeze(1))


def _uniforms(log_weights: torch.Tensor, shape, generator) -> torch.Tensor:
    return torch.rand(shape, dtype=log_weights.dtype, device=log_weights.device, generator=generator)


def multinomial_resampling(
    log_weights: torch.Tensor, generator: torch.Generator | None = None
) -> torch.Tensor:
    """K independent draws of ancestors from the normalised weights: ``[B, K]`` long."""
    return _inverse_cdf(log_weights, _uniforms(log_weights, log_weights.shape, generator))


def stratified_resampling(
    log_weights: torch.Tensor, generator: torch.Generator | None = None
) -> torch.Tensor:
    """One uniform in each stratum ``[k/K, (k+1)/K)``, independently: ``[B, K]`` long (Kitagawa 1996)."""
    batch, k = log_weights.shape
    offsets = torch.arange(k, dtype=log_weights.dtype, device=log_weights.device)
    u = (offsets + _uniforms(log_weights, (batch, k), generator)) / k
    return _inverse_cdf(log_weights, u)


def systematic_resampling(
    log_weights: torch.Tensor, generator: torch.Generator | None = None
) -> torch.Tensor:
    """One uniform shared by all strata, ``u_k = (k + U) / K``: ``[B, K]`` long (Carpenter et al. 1999)."""
    batch, k = log_weights.shape
    offsets = torch.arange(k, dtype=log_weights.dtype, device=log_weights.device)
    u = (offsets + _uniforms(log_weights, (batch, 1), generator)) / k
    return _inverse_cdf(log_weights, u)


RESAMPLING: dict[str, Resampler] = {
    "multinomial": multinomial_resampling,
    "systematic": systematic_resampling,
    "stratified": stratified_resampling,
}


def get_resampling(resampling: str | Resampler, where: str) -> Resampler:
    """The resampling function named ``resampling`` (or ``resampling`` itself when callable)."""
    if callable(resampling):
        return resampling
    if resampling not in RESAMPLING:
        raise ValueError(
            f"{where}: expected resampling in {tuple(RESAMPLING)} or a callable, got {resampling!r}"
        )
    return RESAMPLING[resampling]


# ---------------------------------------------------------------------------------------- SMC
class SMCResult(NamedTuple):
    """What :func:`smc` returns (entries past a sequence's length are invalid, as in fivo/bounds.py).

    Attributes:
        log_z: ``[batch]`` log Z-hat, the log of the unbiased SMC estimate of p(x). Its gradient
            path depends on ``gradient`` (see :func:`smc`).
        log_weights: ``[batch, K]`` the particles' accumulated log-weights after the last step.
        ess: ``[batch, T]`` effective sample size at each step, before resampling (detached).
        resampled: ``[batch, T]`` bool, whether the particles were resampled after step ``t``.
        ancestors: ``[batch, T, K]`` long: after step ``t``, particle ``k`` continues particle
            ``ancestors[b, t, k]`` (the identity where not resampled).
        log_z_increments: ``[batch, T]`` the log-marginal increment added at each resampling step
            (0 elsewhere); ``log_z`` is their sum plus ``logmeanexp(log_weights)``.
        ancestor_log_prob: ``[batch, T]`` log-probability of the drawn ancestors at each resampling
            step (0 elsewhere), differentiable in the weights when ``gradient="score"`` (multinomial
            resampling), else detached.
        log_p: ``[batch, K]`` log p(x, z) summed along each final particle's ancestral line.
        log_q: ``[batch, K]`` log q(z | x) summed along each final particle's ancestral line.
        z: ``[batch, K, T, *latent_shape]`` each final particle's ancestral line of latents, or
            ``None`` unless ``return_latents=True``.
        state: the final particles' model state (leaves ``[batch, K, ...]``), each sequence's
            taken after its own last valid step, or ``None`` unless ``return_state=True``.
        proposal_log_prob: ``[batch, T, K]`` ``log q(z_t^k | past, x)`` of every particle's
            proposal at each step (0 past a sequence's length), with its gradient: the score of the
            proposals, for a REINFORCE term when the latents cannot be reparametrized.
        step_log_weights: ``[batch, T, K]`` the accumulated log-weights after step ``t``, before
            any resampling there (detached).
    """

    log_z: torch.Tensor
    log_weights: torch.Tensor
    ess: torch.Tensor
    resampled: torch.Tensor
    ancestors: torch.Tensor
    log_z_increments: torch.Tensor
    ancestor_log_prob: torch.Tensor
    log_p: torch.Tensor
    log_q: torch.Tensor
    z: torch.Tensor | None
    state: Any = None
    proposal_log_prob: torch.Tensor | None = None
    step_log_weights: torch.Tensor | None = None


class _Step(NamedTuple):
    """What the filter keeps of one step (each ``[batch, K]`` or ``[batch]``)."""

    log_p: torch.Tensor
    log_q: torch.Tensor
    log_weights: torch.Tensor  # accumulated, before any resampling here (detached)
    z: torch.Tensor | None  # only with return_latents
    ess: torch.Tensor
    resampled: torch.Tensor
    ancestors: torch.Tensor
    pre_resampling: torch.Tensor | None  # the log-weights with their gradient, where it may resample
    log_softmax: torch.Tensor | None  # their log-softmax (differentiable for gradient="score")


def _log_mean_exp(log_w: torch.Tensor) -> torch.Tensor:
    return log_mean_exp(log_w, dim=1)  # a row of only -inf gives -inf with a zero gradient


def _first_dead_step(ess: torch.Tensor, masks: list[torch.Tensor] | None) -> torch.Tensor:
    """Per sequence, the first valid step at which every particle has log-weight ``-inf``: ``[batch]``.

    ``ess`` is ``[batch, T]``; it is 0 exactly where all weights are 0 (a dead sequence stays dead:
    it is never resampled). ``-1`` for sequences that stay alive. No host synchronisation.
    """
    dead = ess == 0
    if masks is not None:
        dead = dead & torch.stack(masks, dim=1)
    first = torch.argmax(dead.to(torch.uint8), dim=1)
    return torch.where(dead.any(dim=1), first, -1)


def _warn_dead_sequences(first_dead: torch.Tensor, where: str) -> None:
    dead = (first_dead >= 0).nonzero().flatten()
    if dead.numel() == 0:
        return
    pairs = ", ".join(f"sequence {b} at step {int(first_dead[b])}" for b in dead[:10].tolist())
    more = f" (and {dead.numel() - 10} more)" if dead.numel() > 10 else ""
    warnings.warn(
        f"{where}: every particle has log-weight -inf (zero weight) in {pairs}{more}: log Z-hat of these "
        "sequences is -inf, so the loss value is inf, and they contribute nothing to the gradient. "
        "If this is not bad luck with a model of bounded support, the proposal puts no mass where "
        "p(x, z) > 0: check the model's support and the observations.",
        RuntimeWarning,
        stacklevel=3,
    )


def smc(
    model,
    x: torch.Tensor,
    n_particles: int,
    resampling: str | Resampler = "multinomial",
    ess_threshold: float = 0.5,
    lengths: torch.Tensor | None = None,
    inputs: torch.Tensor | None = None,
    reparametrize: bool = True,
    gradient: str = "none",
    generator: torch.Generator | None = None,
    return_latents: bool = False,
    return_state: bool = False,
    remat_chunk: int | None = None,
    tbptt_chunk: int | None = None,
) -> SMCResult:
    """Run a particle filter and return log Z-hat and its diagnostics.

    Args:
        model: a :class:`~bbvae.sequential.SequentialModel`.
        x: ``[batch, T, *obs_shape]`` observations.
        n_particles: ``K``.
        resampling: ``"multinomial"``, ``"systematic"``, ``"stratified"`` or a function
            ``(log_weights [B, K], generator=None) -> ancestors [B, K]``.
        ess_threshold: resample where ESS < ``ess_threshold * K``; 0 never resamples (the IWAE
            bound), 1 resamples at every step.
        lengths: ``[batch]`` long, or ``None`` for all ``T``.
        inputs: optional side inputs ``[batch, T, ...]``.
        reparametrize: propose with ``rsample`` where the model can.
        gradient: the gradient path through resampling. ``"none"`` (FIVO's default, biased):
            ancestors are constants. ``"score"``: as ``"none"``, and ``ancestor_log_prob`` carries
            the log-probability of the resampling decisions with its gradient, for a REINFORCE term
            (multinomial resampling only). ``"stop_gradient"`` (Scibior & Wood 2021): after
            resampling each particle's log-weight is ``log w_a - stop_grad(log w_a)`` of its
            ancestor (value 0) and the increment added to log Z is detached, so ``exp(log_z)``
            has the same value and an unbiased gradient of E[Z-hat].
        generator: optional ``torch.Generator`` for the resampling uniforms.
        return_latents: also return the particles' ancestral lines of latents.
        return_state: also return the final particles' state (to continue the sequences); each
            sequence's state is then frozen once its length is reached.
        remat_chunk: activation checkpointing: every this many time steps of the filter are one
            autograd node that keeps only its outputs and is recomputed in the backward, replaying
            the same proposals and resampling uniforms (also those of ``generator``): the same values and
            gradients, with one chunk's activations alive instead of all ``T`` steps'
            (:mod:`bbvae.sequential.chunks`). ``None``: ``model.remat_chunk`` (default off).
        tbptt_chunk: truncated backpropagation through time: the model state of the particles is
            carried on but detached every this many steps (the accumulated log-weights keep their
            gradient: each step's weight is a term of the bound). The same values (bound, draws,
            diagnostics); a different, biased gradient, without the paths through the state at
            the chunk boundaries. ``None``: ``model.tbptt_chunk`` (default off).

    Returns:
        :class:`SMCResult`.
    """
    where = "smc"
    _check_model(model, where)
    check_positive_int("n_particles", n_particles, where)
    resample_fn = get_resampling(resampling, where)
    if isinstance(ess_threshold, bool) or not isinstance(ess_threshold, (int, float)):
        raise TypeError(
            f"{where}: expected ess_threshold to be a float in [0, 1], got {type(ess_threshold).__name__}"
        )
    if not 0.0 <= ess_threshold <= 1.0:
        raise ValueError(f"{where}: expected ess_threshold in [0, 1], got {ess_threshold}")
    if gradient not in GRADIENTS:
        raise ValueError(f"{where}: expected gradient in {GRADIENTS}, got {gradient!r}")
    if gradient == "score" and resample_fn is not multinomial_resampling:
        raise ValueError(
            f"{where}: gradient='score' needs the probability of the drawn ancestors, which is a product "
            f"of per-particle probabilities only for multinomial resampling; got resampling={resampling!r}"
        )
    batch, n_steps, masks = check_sequence_args(x, lengths, inputs, where)
    remat_chunk, tbptt_chunk = resolve_chunks(model, remat_chunk, tbptt_chunk, where)
    k = n_particles
    encoded = encode_checked(model, x, lengths, inputs, n_steps, where)
    state = model.init_state(encoded, k)
    may_resample = ess_threshold > 0.0 and k > 1
    step_fn = model_step(model)
    # Per step only what the next step needs runs in the loop; what is only reported (the log-Z
    # increments, the ancestors' log-probabilities, dead sequences) is computed once afterwards
    # from the stacked per-step values, with the same arithmetic row by row.
    # The ancestral lines' log p and log q are also summed afterwards (from the per-step values and
    # the ancestors), and a dead sequence's ESS (NaN in the loop: never resampled) is set to 0 there.
    valid_k = list(torch.stack(masks, dim=1).unsqueeze(2).unbind(1)) if masks is not None else None
    const: dict[str, torch.Tensor] = {}  # made at the first step, without gradient

    def body(t: int, carry: Carry, encoded_t):
        state, log_w = carry
        out = step_fn(state, encoded_t, reparametrize=reparametrize)
        if t == 0:
            out = _check_step_output(model, out, batch, k, where)
        if not const:
            const["identity"] = torch.arange(k, device=out.log_p.device).expand(batch, k)
            const["zero"] = out.log_p.new_zeros(())
            const["never"] = torch.zeros(batch, dtype=torch.bool, device=out.log_p.device)
        identity, zero = const["identity"], const["zero"]
        valid = masks[t] if masks is not None else None
        # The state past a sequence's end is never scored; it is kept only when asked for.
        state = out.state if not (return_state and valid is not None) else tree_where(valid, out.state, state)
        step_w = out.log_p - out.log_q
        if valid is not None:
            step_w = torch.where(valid_k[t], step_w, zero)
        log_w = step_w if log_w is None else log_w + step_w
        detached = log_w.detach()
        z_t = out.z if return_latents else None
        # [batch, K], [batch]; NaN where every weight is 0 (fixed after the loop)
        log_norm = torch.log_softmax(detached, dim=1)
        step_ess = torch.exp(-torch.logsumexp(2.0 * log_norm, dim=1))
        # Resample where the ESS is low, but never past a sequence's end or at its last step.
        if not may_resample or t == n_steps - 1:
            kept = _Step(out.log_p, out.log_q, detached, z_t, step_ess, const["never"], identity, None, None)
            return Carry(state, log_w), kept
        # (threshold 1 resamples even equal weights, whose ESS is exactly K)
        do = step_ess < ess_threshold * k if ess_threshold < 1.0 else step_ess >= 0.0
        if masks is not None:
            do = do & masks[t + 1]
        # A sequence whose particles all have zero weight cannot be resampled: its log Z is -inf
        # whatever follows, so it keeps its particles (and contributes no gradient). Its ESS is NaN
        # here, which compares False above.
        drawn = resample_fn(detached, generator=generator)
        anc = torch.where(do.unsqueeze(1), drawn, identity)  # [batch, K]
        lsm = torch.log_softmax(log_w, dim=1) if gradient == "score" else log_norm
        kept = _Step(out.log_p, out.log_q, detached, z_t, step_ess, do, anc, log_w, lsm)
        if gradient == "stop_gradient":
            gathered = torch.gather(log_w, 1, anc)
            log_w = torch.where(do.unsqueeze(1), gathered - gathered.detach(), log_w)
        else:
            log_w = torch.where(do.unsqueeze(1), zero, log_w)
        return Carry(model.reorder(state, anc), log_w), kept

    params = list(model.parameters()) if remat_chunk is not None else ()
    (state, log_w), steps = run_steps(
        body, Carry(state, None), list(encoded), x, params, remat_chunk, tbptt_chunk, generator, masks
    )
    zero = const["zero"]
    resampled = [step.resampled for step in steps]
    ancestors = [step.ancestors for step in steps]
    ess = [step.ess for step in steps]
    step_w_list = [step.log_weights for step in steps]
    lp_list, lq_list = [step.log_p for step in steps], [step.log_q for step in steps]
    zs = [step.z for step in steps] if return_latents else []
    pre_resampling_w = [step.pre_resampling for step in steps if step.pre_resampling is not None]
    lsm = [step.log_softmax for step in steps if step.pre_resampling is not None]

    resampled_t = torch.stack(resampled, dim=1)  # [batch, T]
    ancestors_t = torch.stack(ancestors, dim=1)  # [batch, T, K]
    step_w_t = torch.stack(step_w_list, dim=1)  # [batch, T, K]
    ess_t = torch.stack(ess, dim=1)
    ess_t = torch.where(torch.isneginf(step_w_t).all(dim=2), 0.0, ess_t)  # dead: ESS 0
    if is_validation_enabled():
        _warn_dead_sequences(_first_dead_step(ess_t, masks), where)
    increments_t = torch.zeros_like(ess_t, dtype=log_w.dtype)  # [batch, T]
    ancestor_lp_t = torch.zeros_like(increments_t)
    if pre_resampling_w:
        span = len(pre_resampling_w)  # the steps 0 .. T-2 that could resample
        done = resampled_t[:, :span]
        increment = log_mean_exp(torch.stack(pre_resampling_w, dim=1), dim=2)  # [batch, span]
        if gradient == "stop_gradient":
            increment = increment.detach()
        chosen = torch.gather(torch.stack(lsm, dim=1), 2, ancestors_t[:, :span]).sum(dim=2)
        increments_t = torch.cat([torch.where(done, increment, zero), increments_t[:, span:]], dim=1)
        ancestor_lp_t = torch.cat([torch.where(done, chosen, zero), ancestor_lp_t[:, span:]], dim=1)
    log_z = increments_t.sum(dim=1) + _log_mean_exp(log_w)
    lines = _line_index(ancestors_t) if may_resample else None  # [batch, T, K] or None (identity)
    lp_t, lq_t = torch.stack(lp_list, dim=1), torch.stack(lq_list, dim=1)  # [batch, T, K]
    if masks is not None:
        valid_t = torch.stack(masks, dim=1).unsqueeze(2)
        lp_t, lq_t = torch.where(valid_t, lp_t, zero), torch.where(valid_t, lq_t, zero)
    log_p = (lp_t if lines is None else torch.gather(lp_t, 2, lines)).sum(dim=1)
    log_q = (lq_t if lines is None else torch.gather(lq_t, 2, lines)).sum(dim=1)
    z = _trace_lines(zs, lines) if return_latents else None
    return SMCResult(
        log_z=log_z,
        log_weights=log_w,
        ess=ess_t,
        resampled=resampled_t,
        ancestors=ancestors_t,
        log_z_increments=increments_t,
        ancestor_log_prob=ancestor_lp_t,
        log_p=log_p,
        log_q=log_q,
        z=z,
        state=state if return_state else None,
        proposal_log_prob=lq_t,
        step_log_weights=step_w_t,
    )


def _line_index(ancestors: torch.Tensor) -> torch.Tensor:
    """``[batch, T, K]``: the particle at step ``t`` on the ancestral line of each final particle.

    ``ancestors`` ``[batch, T, K]``: after step ``t``, particle ``k`` continues ``ancestors[b, t, k]``.
    """
    steps = ancestors.unbind(1)  # T tensors [batch, K]
    index = steps[-1]  # the last step is never resampled: the identity
    lines = [index]
    for t in range(len(steps) - 2, -1, -1):
        index = torch.gather(steps[t], 1, index)  # after step t, particle k continues steps[t][:, k]
        lines.append(index)
    return torch.stack(lines[::-1], dim=1)


def _trace_lines(zs: list[torch.Tensor], lines: torch.Tensor | None) -> torch.Tensor:
    """Each final particle's line of latents ``[batch, K, T, ...]`` from per-step ``z_t`` ``[batch, K, ...]``
    and :func:`_line_index` (``None``: no resampling, the identity)."""
    if lines is None:
        return torch.stack(zs, dim=2)
    return torch.stack([gather_particles(z_t, index) for z_t, index in zip(zs, lines.unbind(1))], dim=2)
