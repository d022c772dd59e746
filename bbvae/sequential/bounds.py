"""The bound of every sequence of a list, batched by length: :func:`sequence_bounds`.

What :class:`~bbvae.sequential.SequenceModel` reports (``score_samples``, validation); for one padded
batch and several bounds at once see :func:`bbvae.sequential.evaluate`.
"""

from __future__ import annotations

import math

import torch

from bbvae.data.batching import collate_sequences
from bbvae.sequential.base import SequentialModel, run_particles
from bbvae.sequential.smc import smc

__all__ = ["EVAL_BOUNDS", "sequence_bounds"]

#: Bounds :func:`sequence_bounds` computes.
EVAL_BOUNDS = ("elbo", "iwae", "fivo", "exact")


@torch.no_grad()
def sequence_bounds(
    model: SequentialModel,
    sequences: list[torch.Tensor],
    bound: str = "fivo",
    n_samples: int = 4,
    batch_size: int = 128,
    resampling: str = "multinomial",
    ess_threshold: float = 0.5,
) -> torch.Tensor:
    """The bound of every sequence, in nats per sequence (no gradient, model in eval mode).

    Sequences are batched by decreasing length (less padding) and the results put back in order.

    Args:
        model: a :class:`~bbvae.sequential.SequentialModel`.
        sequences: ``N`` tensors ``[T_i, *obs_shape]`` (moved to the model's device).
        bound: ``"elbo"`` (mean of the ``n_samples`` log-weights), ``"iwae"`` (their log-mean-exp),
            ``"fivo"`` (SMC log Z-hat with ``n_samples`` particles) or ``"exact"``
            (``model.exact_log_prob``).
        n_samples: samples / particles per sequence.
        batch_size: sequences per batch.
        resampling, ess_threshold: FIVO's resampling settings.

    Returns:
        ``[N]`` float64 tensor on the CPU.
    """
    param = next(iter(model.parameters()), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None else torch.get_default_dtype()
    lengths = [s.shape[0] for s in sequences]
    order = sorted(range(len(sequences)), key=lambda i: -lengths[i])
    out = torch.empty(len(sequences), dtype=torch.float64)
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            batch = collate_sequences([sequences[i] for i in idx])
            x = batch.x.to(device)
            if x.is_floating_point():
                x = x.to(dtype)
            lens = batch.lengths.to(device)
            if bound in ("elbo", "iwae"):
                run = run_particles(model, x, n_samples, lengths=lens, reparametrize=False)
                log_w = run.log_p - run.log_q  # [chunk, K]
                if bound == "elbo":
                    values = log_w.mean(dim=1)
                else:
                    values = torch.logsumexp(log_w, dim=1) - math.log(n_samples)
            elif bound == "fivo":
                values = smc(
                    model,
                    x,
                    n_samples,
                    resampling=resampling,
                    ess_threshold=ess_threshold,
                    lengths=lens,
                    reparametrize=False,
                ).log_z
            elif bound == "exact":
                values = model.exact_log_prob(x, lengths=lens)
            else:
                raise ValueError(f"sequence_bounds: expected bound in {EVAL_BOUNDS}, got {bound!r}")
            out[torch.as_tensor(idx)] = values.detach().double().cpu()
    finally:
        model.train(was_training)
    return out
