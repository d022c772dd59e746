"""Log-likelihood bounds of a sequence model on a data set, reported as the FIVO evaluation does."""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence

import torch

from bbvae._validation import check_positive_int
from bbvae.sequential.base import _check_model, check_sequence_args, run_particles
from bbvae.sequential.smc import smc

BOUNDS = ("elbo", "iwae", "fivo", "exact")


@torch.no_grad()
def evaluate(
    model,
    x: torch.Tensor,
    lengths: torch.Tensor | None = None,
    inputs: torch.Tensor | None = None,
    bounds: Sequence[str] = ("elbo", "iwae", "fivo"),
    n_samples: int = 4,
    batch_size: int | None = None,
    resampling: str = "multinomial",
    ess_threshold: float = 0.5,
) -> dict[str, dict[str, float]]:
    """Estimate log p(x) bounds in nats per time step and per sequence.

    ``per_step`` is the total bound over all sequences divided by the total number of valid steps;
    ``per_sequence`` is the mean bound per sequence. The ELBO is the mean of the ``n_samples``
    log-weights and IWAE their log-mean-exp (the same draws); FIVO runs :func:`~bbvae.sequential.smc`
    with ``n_samples`` particles. ``"exact"`` is added when the model has ``exact_log_prob`` (or
    when asked for). Runs under ``no_grad`` in eval mode (the model's mode is restored).

    Args:
        model: a :class:`~bbvae.sequential.SequentialModel`.
        x: ``[batch, T, *obs_shape]``.
        lengths: ``[batch]`` long, or ``None`` for all ``T``.
        inputs: optional side inputs ``[batch, T, ...]``.
        bounds: any of ``"elbo"``, ``"iwae"``, ``"fivo"``, ``"exact"``.
        n_samples: samples / particles per sequence (``K``).
        batch_size: sequences per chunk (``None``: all at once).
        resampling, ess_threshold: FIVO's resampling settings.

    Returns:
        ``{bound: {"per_step": float, "per_sequence": float}}``.
    """
    where = "evaluate"
    _check_model(model, where)
    check_positive_int("n_samples", n_samples, where)
    if isinstance(bounds, str):
        bounds = (bounds,)
    unknown = [b for b in bounds if b not in BOUNDS]
    if unknown or not bounds:
        raise ValueError(f"{where}: expected bounds among {BOUNDS}, got {tuple(bounds)!r}")
    has_exact = callable(getattr(model, "exact_log_prob", None))
    if "exact" in bounds and not has_exact:
        raise ValueError(
            f"{where}: bound 'exact' asked for, but {type(model).__name__} has no exact_log_prob"
        )
    wanted = list(dict.fromkeys(bounds))
    if has_exact and "exact" not in wanted:
        wanted.append("exact")
    batch, n_steps, _ = check_sequence_args(x, lengths, inputs, where)
    if batch_size is None:
        batch_size = batch
    check_positive_int("batch_size", batch_size, where)

    totals: dict[str, list[torch.Tensor]] = {name: [] for name in wanted}
    was_training = model.training
    model.eval()
    try:
        for start in range(0, batch, batch_size):
            if batch_size >= batch:  # one chunk: no copies
                x_c, len_c, in_c = x, lengths, inputs
            else:
                rows = slice(start, start + batch_size)
                x_c = x[rows]
                len_c = lengths[rows] if lengths is not None else None
                in_c = inputs[rows] if inputs is not None else None
            if "elbo" in wanted or "iwae" in wanted:
                run = run_particles(model, x_c, n_samples, lengths=len_c, inputs=in_c, reparametrize=False)
                log_w = run.log_p - run.log_q  # [chunk, K]
                if "elbo" in wanted:
                    totals["elbo"].append(log_w.mean(dim=1))
                if "iwae" in wanted:
                    totals["iwae"].append(torch.logsumexp(log_w, dim=1) - math.log(n_samples))
            if "fivo" in wanted:
                result = smc(
                    model,
                    x_c,
                    n_samples,
                    resampling=resampling,
                    ess_threshold=ess_threshold,
                    lengths=len_c,
                    inputs=in_c,
                    reparametrize=False,
                )
                totals["fivo"].append(result.log_z)
            if "exact" in wanted:
                totals["exact"].append(_exact(model, x_c, len_c, in_c))
    finally:
        model.train(was_training)

    n_valid = float(n_steps * batch) if lengths is None else float(lengths.sum())  # one sync, at the end
    report = {}
    for name in wanted:
        per_sequence = torch.cat(totals[name])  # [batch]
        total = float(per_sequence.double().sum())
        report[name] = {"per_step": total / n_valid, "per_sequence": total / batch}
    return report


def _exact(model, x, lengths, inputs) -> torch.Tensor:
    params = inspect.signature(model.exact_log_prob).parameters
    if "inputs" in params:
        return model.exact_log_prob(x, lengths=lengths, inputs=inputs)
    if inputs is not None:
        raise ValueError(
            f"evaluate: {type(model).__name__}.exact_log_prob takes no side inputs, but inputs were given"
        )
    return model.exact_log_prob(x, lengths=lengths)
