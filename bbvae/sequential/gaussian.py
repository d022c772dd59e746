"""Diagonal Gaussians as the neural sequence models use them: log-densities, draws, scales.

Tensors are ``[..., L]`` (any leading dims, the event in the last one); everything is computed on
the inputs' device and dtype.
"""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F

__all__ = [
    "MIN_SCALE",
    "RAW_SCALE_BIAS",
    "draw_normal",
    "normal_log_prob",
    "positive_scale",
    "standard_normal_log_prob",
]

_LOG_2PI = math.log(2.0 * math.pi)
#: Offset added to raw scales before the softplus (the FIVO reference's ``raw_sigma_bias``).
RAW_SCALE_BIAS = 0.25
#: Floor added to every predicted standard deviation, so log-densities stay finite.
MIN_SCALE = 1e-4


def normal_log_prob(z: torch.Tensor, loc: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Diagonal Gaussian log-density summed over the last dim: ``[..., L] -> [...]``."""
    return (-0.5 * ((z - loc) / scale).square() - scale.log()).sum(-1) - 0.5 * _LOG_2PI * z.shape[-1]


def standard_normal_log_prob(z: torch.Tensor) -> torch.Tensor:
    """``log N(z; 0, I)`` summed over the last dim: ``[..., L] -> [...]``."""
    return -0.5 * z.square().sum(-1) - 0.5 * _LOG_2PI * z.shape[-1]


def draw_normal(loc: torch.Tensor, scale: torch.Tensor, reparametrize: bool = True) -> torch.Tensor:
    """``loc + scale * eps`` with ``eps ~ N(0, I)`` drawn on ``loc``'s device and dtype.

    With ``reparametrize=False`` the draw carries no gradient path.
    """
    if reparametrize:
        return loc + scale * torch.randn_like(loc)
    with torch.no_grad():
        return loc + scale * torch.randn_like(loc)


def positive_scale(raw: torch.Tensor) -> torch.Tensor:
    """``softplus(raw + 0.25) + 1e-4``: the standard deviation of a predicted Gaussian."""
    return F.softplus(raw + RAW_SCALE_BIAS) + MIN_SCALE
