"""A mixture of diagonal Gaussians as an observation family (the VRNN paper's GMM outputs).

``p(x_t | params) = sum_k pi_k N(x_t; mu_k, diag(sigma_k^2))`` over the whole frame ``x_t``
``[obs_dim]``: each of the ``K`` components is a diagonal Gaussian on the frame and the weights
``pi = softmax(logits)``. The decoder outputs ``params`` ``[..., K + 2 K D]``: ``[logits (K),
loc (K * D), raw scale (K * D)]`` with ``sigma = softplus(raw + 0.25) + min_scale``.
"""

from __future__ import annotations

import torch
from torch.distributions import Categorical, Distribution, Independent, MixtureSameFamily, Normal
from torch.nn import functional as F

from bbvae._validation import check_positive_int
from bbvae.sequential.gaussian import RAW_SCALE_BIAS, normal_log_prob
from bbvae.sequential.observations import Observation

__all__ = ["GaussianMixtureObservation"]


class GaussianMixtureObservation(Observation):
    """A mixture of ``n_components`` diagonal Gaussians on ``x_t`` ``[obs_dim]`` (real frames).

    Args:
        obs_dim: size D of ``x_t``.
        n_components: number of mixture components K (the VRNN paper uses 20).
        min_scale: floor added to every component's standard deviation.
    """

    def __init__(self, obs_dim: int, n_components: int = 20, min_scale: float = 1e-3) -> None:
        super().__init__()
        check_positive_int("obs_dim", obs_dim, "GaussianMixtureObservation")
        check_positive_int("n_components", n_components, "GaussianMixtureObservation")
        if not min_scale > 0:
            raise ValueError(f"GaussianMixtureObservation: expected min_scale > 0, got {min_scale}")
        self.obs_dim = obs_dim
        self.n_components = n_components
        self.min_scale = min_scale
        self.obs_shape = (obs_dim,)
        self.param_size = n_components * (1 + 2 * obs_dim)
        self.feature_size = obs_dim

    def parts(self, params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(log weights [..., K], loc [..., K, D], scale [..., K, D])`` of ``params [..., param_size]``."""
        k, d = self.n_components, self.obs_dim
        if params.shape[-1] != self.param_size:
            raise ValueError(
                f"GaussianMixtureObservation: expected params [..., {self.param_size}] (K={k}, D={d}), "
                f"got [..., {params.shape[-1]}]"
            )
        logits, loc, raw = params.split([k, k * d, k * d], dim=-1)
        loc = loc.unflatten(-1, (k, d))
        scale = F.softplus(raw.unflatten(-1, (k, d)) + RAW_SCALE_BIAS) + self.min_scale
        return torch.log_softmax(logits, dim=-1), loc, scale

    def distribution(self, params: torch.Tensor) -> Distribution:
        log_w, loc, scale = self.parts(params)
        components = Independent(Normal(loc, scale, validate_args=False), 1)
        weights = Categorical(logits=log_w, validate_args=False)
        return MixtureSameFamily(weights, components, validate_args=False)

    def log_prob(self, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        log_w, loc, scale = self.parts(params)
        return torch.logsumexp(log_w + normal_log_prob(x.unsqueeze(-2), loc, scale), dim=-1)

    def sample(self, params: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            log_w, loc, scale = self.parts(params)
            k = torch.multinomial(log_w.exp().reshape(-1, self.n_components), 1)  # [N, 1]
            k = k.reshape(*log_w.shape[:-1], 1, 1).expand(*log_w.shape[:-1], 1, self.obs_dim)
            mu, sigma = loc.gather(-2, k).squeeze(-2), scale.gather(-2, k).squeeze(-2)
            return mu + sigma * torch.randn_like(mu)

    def mean_variance(self, params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The mixture's mean and per-dimension variance, each ``[..., D]`` (closed form)."""
        log_w, loc, scale = self.parts(params)
        w = log_w.exp().unsqueeze(-1)  # [..., K, 1]
        mean = (w * loc).sum(-2)
        second = (w * (scale.square() + loc.square())).sum(-2)
        return mean, second - mean.square()

    def init_bias(self, bias: torch.Tensor, mean: torch.Tensor) -> None:
        k, d = self.n_components, self.obs_dim
        bias[:k].zero_()
        bias[k : k + k * d].copy_(mean.reshape(1, d).expand(k, d).reshape(-1))
