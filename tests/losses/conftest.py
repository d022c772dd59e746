"""Shared fixtures for the loss tests: small float64 models with exact answers.

* ``linear_gaussian``: probabilistic PCA (x_dim=3, z_dim=2), a diagonal Gaussian q away
  from the posterior, 4 data points. ``exact_gaussian_elbo`` gives its ELBO in closed form.
* ``sbn``: a sigmoid belief net with 3 Bernoulli latents and 6 observations, a Bernoulli
  q, 4 data points. ``exact_sbn_elbo`` and ``exact_sbn_iwae`` enumerate the latents.
* ``truncated``: a copy of a linear-Gaussian model whose log p(x, z) is replaced (by
  ``-inf``: outside the support; or by NaN) where ``z[..., 0] > threshold``.
* ``averaged_gradient``: the mean gradient of a loss and its standard error from
  independent repeated evaluations (data rows replicated within a call).
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from torch.distributions import Independent, MultivariateNormal, Normal

from bbvae.models import (
    BernoulliInfNet,
    GaussianInfNet,
    LinearGaussianGenModel,
    SigmoidBeliefNet,
    all_binary_configurations,
)

X_DIM, Z_DIM = 3, 2
SBN_Z, SBN_X = 3, 6


def _randomize(module: torch.nn.Module, std: float) -> None:
    with torch.no_grad():
        for param in module.parameters():
            param.add_(std * torch.randn_like(param))


@pytest.fixture
def linear_gaussian():
    """``SimpleNamespace(p, q, x)``: float64 PCA model, diagonal q off the posterior, x [4, 3]."""
    torch.manual_seed(0)
    p = LinearGaussianGenModel(Z_DIM, X_DIM, noise_std=0.8).double()
    x, _ = p.sample(4)
    q = GaussianInfNet(X_DIM, Z_DIM, covariance="diag").double()
    _randomize(q, 0.3)
    return SimpleNamespace(p=p, q=q, x=x)


@pytest.fixture
def sbn():
    """``SimpleNamespace(p, q, x)``: float64 SBN (3 latents, 6 observations), Bernoulli q, x [4, 6]."""
    torch.manual_seed(0)
    p = SigmoidBeliefNet(SBN_Z, SBN_X).double()
    _randomize(p, 0.8)
    x, _ = p.sample(4)
    q = BernoulliInfNet(SBN_X, SBN_Z).double()
    _randomize(q, 0.5)
    return SimpleNamespace(p=p, q=q, x=x)


class TruncatedLinearGaussian(LinearGaussianGenModel):
    """Linear-Gaussian model whose joint log-density is ``fill`` where ``z[..., 0] > threshold``."""

    def __init__(self, z_dim: int, x_dim: int, threshold: float, fill: float) -> None:
        super().__init__(z_dim, x_dim)
        self.threshold, self.fill = threshold, fill

    def log_prob(self, x, z):
        return super().log_prob(x, z).masked_fill(z[..., 0] > self.threshold, self.fill)


@pytest.fixture
def truncated():
    """``f(p, threshold, fill=-inf)``: a ``TruncatedLinearGaussian`` with ``p``'s parameters."""

    def make(p: LinearGaussianGenModel, threshold: float, fill: float = -math.inf):
        model = TruncatedLinearGaussian(p.z_dim, p.x_dim, threshold, fill).to(p.weight.dtype)
        model.load_state_dict(p.state_dict())
        return model

    return make


def _gaussian_moments(dist) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean ``[batch, L]`` and covariance ``[batch, L, L]`` of a diagonal or full Gaussian."""
    if isinstance(dist, MultivariateNormal):
        return dist.loc, dist.covariance_matrix.expand(*dist.loc.shape, dist.loc.shape[-1])
    assert isinstance(dist, Independent) and isinstance(dist.base_dist, Normal)
    return dist.base_dist.loc, torch.diag_embed(dist.base_dist.scale**2)


@pytest.fixture
def exact_gaussian_elbo():
    """``f(p, q, x) -> [batch]``: the ELBO of a Gaussian q under the linear-Gaussian model.

    ``E_q[log p(x|z)] + E_q[log p(z)] + H[q]`` with the Gaussian expectations written out,
    differentiable in both models' parameters.
    """

    def elbo(p: LinearGaussianGenModel, q, x: torch.Tensor) -> torch.Tensor:
        dist = q(x).distribution()
        mu, cov = _gaussian_moments(dist)  # [B, L], [B, L, L]
        noise_var = (2 * p.log_noise_std).exp()
        resid = x - mu @ p.weight.T - p.bias  # [B, D]
        trace = torch.einsum("dl,blm,dm->b", p.weight, cov, p.weight)  # tr(W S W^T)
        d, l_dim = p.x_dim, p.z_dim
        log_lik = -0.5 * d * torch.log(2 * math.pi * noise_var) - (resid.pow(2).sum(-1) + trace) / (
            2 * noise_var
        )
        log_prior = -0.5 * l_dim * math.log(2 * math.pi) - 0.5 * (
            mu.pow(2).sum(-1) + cov.diagonal(dim1=-2, dim2=-1).sum(-1)
        )
        return log_lik + log_prior + dist.entropy()

    return elbo


def _sbn_tables(p, q, x):
    """log q(z|x) and log p(x, z) for every latent configuration: ``[batch, 2^L]`` each."""
    z = all_binary_configurations(p.z_dim, like=x)  # [2^L, L]
    z = z.unsqueeze(0).expand(x.shape[0], *z.shape)  # [B, 2^L, L]
    return q(x).log_prob(z), p(x, z).log_prob(x, z)


@pytest.fixture
def exact_sbn_elbo():
    """``f(p, q, x) -> [batch]``: ``sum_z q(z|x) (log p(x, z) - log q(z|x))`` by enumeration."""

    def elbo(p, q, x):
        log_q, log_p = _sbn_tables(p, q, x)
        return (log_q.exp() * (log_p - log_q)).sum(dim=1)

    return elbo


@pytest.fixture
def exact_sbn_iwae2():
    """``f(p, q, x) -> [batch]``: ``E[log (w_1 + w_2) / 2]`` over all 2^L x 2^L pairs of latents."""

    def iwae2(p, q, x):
        log_q, log_p = _sbn_tables(p, q, x)  # [B, C]
        log_w = log_p - log_q
        pair_w = torch.logaddexp(log_w.unsqueeze(2), log_w.unsqueeze(1)) - math.log(2)  # [B, C, C]
        pair_q = log_q.unsqueeze(2) + log_q.unsqueeze(1)
        return (pair_q.exp() * pair_w).sum(dim=(1, 2))

    return iwae2


def _flat_grad(loss: torch.Tensor, params) -> torch.Tensor:
    params = list(params)
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    return torch.cat(
        [(g if g is not None else torch.zeros_like(p)).reshape(-1) for g, p in zip(grads, params)]
    )


@pytest.fixture
def flat_grad():
    """``f(scalar, params) -> [P]``: the gradient as one flat vector (zeros for unused parameters)."""
    return _flat_grad


@pytest.fixture
def averaged_gradient():
    """``f(loss, x, params, n_rep, n_calls) -> (mean [P], std_error [P])``.

    Each call replicates every row of ``x`` ``n_rep`` times, so its gradient is already the
    average of ``n_rep`` independent single-draw gradients (the estimators treat rows
    independently); the standard error comes from the spread of the ``n_calls`` calls.
    """

    def run(loss, x, params, n_rep, n_calls):
        params = list(params)
        xr = x.repeat(n_rep, *([1] * (x.dim() - 1)))  # [n_rep * B, ...], same mean over rows as x
        grads = torch.stack([_flat_grad(loss(xr), params) for _ in range(n_calls)])  # [n_calls, P]
        return grads.mean(0), grads.std(0) / math.sqrt(n_calls)

    return run
