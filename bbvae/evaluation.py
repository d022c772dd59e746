"""Model evaluation: importance-sampled estimates of the marginal log-likelihood."""

from __future__ import annotations

import math

import torch
from torch import nn

from bbvae._validation import check_no_nan, check_positive_int, check_tensor, shape_str
from bbvae.base import GenModel, InfNet


@torch.no_grad()
def log_likelihood(
    inf_net: InfNet,
    gen_model: GenModel,
    x: torch.Tensor,
    n_samples: int = 5000,
    chunk_size: int = 500,
    **context,
) -> torch.Tensor:
    """Importance-sampled estimate of log p(x) with q(z|x) as proposal (IWAE with many samples).

    ``log p(x) ~= log (1/S) sum_s p(x, z_s) / q(z_s | x)``, ``z_s ~ q(z|x)`` (Burda et al. 2016).
    The estimate is a stochastic lower bound of log p(x) in expectation, and tends to it as
    ``n_samples`` grows; it is exact for every draw when q(z|x) is the true posterior.

    The ``n_samples`` draws are taken ``chunk_size`` at a time with ``inf_net.sample`` (no
    reparametrization needed, so any q works) and reduced by a streaming log-sum-exp, so memory
    is bounded by one chunk, ``[batch, chunk_size, *latent_shape]``, whatever ``n_samples``.
    Runs under ``torch.no_grad``; it leaves the modules' train/eval mode as it finds it.

    Args:
        inf_net: the proposal q(z|x).
        gen_model: the model p(x, z).
        x: data ``[batch, *obs_shape]``.
        n_samples: total importance samples per data point ``S``.
        chunk_size: samples drawn per pass (the last pass takes the remainder).
        **context: passed to ``inf_net`` (for example ``lengths`` of sequences).

    Returns:
        ``[batch]`` estimates of log p(x), in the dtype of the log-weights.
    """
    where = "log_likelihood"
    if not isinstance(inf_net, nn.Module) or not callable(getattr(inf_net, "sample", None)):
        raise TypeError(f"{where}: expected inf_net to be an InfNet, got {type(inf_net).__name__}")
    if not isinstance(gen_model, nn.Module) or not callable(getattr(gen_model, "log_prob", None)):
        raise TypeError(f"{where}: expected gen_model to be a GenModel, got {type(gen_model).__name__}")
    check_tensor("x", x, where)
    if x.dim() == 0:
        raise ValueError(f"{where}: expected x of shape [batch, *obs_shape], got a scalar")
    check_positive_int("n_samples", n_samples, where)
    check_positive_int("chunk_size", chunk_size, where)

    q = inf_net(x, **context)
    total = None  # running log sum_s w_s, [batch]
    remaining = n_samples
    while remaining > 0:
        k = min(chunk_size, remaining)
        z = q.sample(k)  # [batch, k, *latent_shape]
        log_w = gen_model(x, z).log_prob(x, z) - q.log_prob(z)  # [batch, k]
        if tuple(log_w.shape) != (x.shape[0], k):
            raise ValueError(
                f"{where}: expected log-weights of shape [{x.shape[0]}, {k}] = [batch, chunk], got "
                f"{shape_str(list(log_w.shape))}"
            )
        check_no_nan("the log-weight log p(x, z) - log q(z|x)", log_w, where)
        chunk_total = torch.logsumexp(log_w, dim=1)
        total = chunk_total if total is None else torch.logaddexp(total, chunk_total)
        remaining -= k
    return total - math.log(n_samples)
