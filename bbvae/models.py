"""Reference models shipped with bbvae, each with an exact answer to test estimators against.

* Linear-Gaussian (probabilistic PCA): ``z ~ N(0, I)``, ``x | z ~ N(W z + b, s^2 I)``.
  log p(x) and p(z | x) are Gaussian in closed form.
* Sigmoid belief net: ``z ~ Bernoulli(sigmoid(a))``, ``x | z ~ Bernoulli(sigmoid(f(z)))``.
  Its latents cannot be reparametrized; for a few latents log p(x) is exact by enumeration.
* Sigmoid belief net with several stochastic layers, ``x <- z_1 <- z_2 <- ... <- z_L``, and its
  layered q(z|x) = q(z_1|x) q(z_2|z_1) ... q(z_L|z_{L-1}) (``LayeredSigmoidBeliefNet``,
  ``LayeredBernoulliInfNet``, ``bernoulli_log_mass``); they live in :mod:`bbvae.models_layered`
  and are importable from here (loaded on first use).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import torch
from torch import nn
from torch.distributions import Bernoulli, Independent, MultivariateNormal, Normal

from bbvae._validation import check_dtype, check_positive_int
from bbvae.base import GenModel, InfNet

_MAX_ENUMERATED_LATENTS = 20


def mlp(sizes: Sequence[int], activation: type[nn.Module] = nn.Tanh, dropout: float = 0.0) -> nn.Sequential:
    """Fully connected network ``sizes[0] -> ... -> sizes[-1]``, no activation after the last layer.

    With ``dropout > 0`` every hidden activation is followed by ``nn.Dropout(dropout)``, inside the
    activation's slot, so the state-dict names are those of the network without dropout (weights
    trained with dropout load into a model built without it, and back).
    """
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(itertools.pairwise(sizes)):
        layers.append(nn.Linear(n_in, n_out))
        if i < len(sizes) - 2:
            layers.append(activation() if dropout <= 0 else nn.Sequential(activation(), nn.Dropout(dropout)))
    return nn.Sequential(*layers)


def _check_last_dim(x: torch.Tensor, size: int, where: str, module: nn.Module | None = None) -> None:
    if x.dim() != 2 or x.shape[-1] != size:
        raise ValueError(f"{where}: expected x of shape [batch, {size}], got {list(x.shape)}")
    if module is not None:
        check_dtype("x", x, module, where)


# --------------------------------------------------------------------------- linear-Gaussian
class GaussianInfNet(InfNet):
    """Gaussian q(z|x) whose mean is affine in x (or an MLP of x).

    Args:
        x_dim: data dimension D.
        z_dim: latent dimension L.
        hidden: hidden layer sizes of the mean network; ``()`` gives an affine mean.
        covariance: ``"diag"`` (a diagonal scale predicted from x) or ``"full"`` (a
            learned lower-triangular scale shared across data points, which with an affine
            mean contains the exact posterior of :class:`LinearGaussianGenModel`).

    ``params_``: ``loc`` ``[batch, L]`` and ``scale`` ``[batch, L]`` (diag) or
    ``scale_tril`` ``[L, L]`` (full).
    """

    def __init__(self, x_dim: int, z_dim: int, hidden: Sequence[int] = (), covariance: str = "diag") -> None:
        super().__init__()
        check_positive_int("x_dim", x_dim, "GaussianInfNet")
        check_positive_int("z_dim", z_dim, "GaussianInfNet")
        if covariance not in ("diag", "full"):
            raise ValueError(f"GaussianInfNet: expected covariance 'diag' or 'full', got {covariance!r}")
        self.x_dim, self.z_dim, self.covariance = x_dim, z_dim, covariance
        n_out = 2 * z_dim if covariance == "diag" else z_dim
        self.net = mlp([x_dim, *hidden, n_out])
        if covariance == "full":
            self.scale_tril_raw = nn.Parameter(torch.zeros(z_dim, z_dim))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        _check_last_dim(x, self.x_dim, type(self).__name__, self)
        out = self.net(x)
        if self.covariance == "diag":
            loc, raw_scale = out.chunk(2, dim=-1)
            return {"loc": loc, "scale": nn.functional.softplus(raw_scale) + 1e-6}
        return {"loc": out, "scale_tril": self.scale_tril()}

    def scale_tril(self) -> torch.Tensor:
        """The shared Cholesky factor ``[L, L]`` (full covariance): exp on the diagonal."""
        raw = self.scale_tril_raw
        return torch.tril(raw, diagonal=-1) + torch.diag_embed(raw.diagonal().exp())

    def distribution(self):
        p = self.params_
        if self.covariance == "diag":
            return Independent(Normal(p["loc"], p["scale"]), 1)
        return MultivariateNormal(p["loc"], scale_tril=p["scale_tril"])

    @torch.no_grad()
    def set_affine(self, weight: torch.Tensor, bias: torch.Tensor, scale_tril: torch.Tensor) -> None:
        """Set an affine full-covariance q: ``N(weight @ x + bias, scale_tril scale_tril^T)``."""
        if self.covariance != "full" or len(self.net) != 1:
            raise ValueError("GaussianInfNet.set_affine: needs hidden=() and covariance='full'")
        self.net[0].weight.copy_(weight)
        self.net[0].bias.copy_(bias)
        raw = torch.tril(scale_tril, diagonal=-1) + torch.diag_embed(scale_tril.diagonal().log())
        self.scale_tril_raw.copy_(raw)


class LinearGaussianGenModel(GenModel):
    """Probabilistic PCA: ``z ~ N(0, I_L)``, ``x | z ~ N(W z + b, s^2 I_D)``.

    Args:
        z_dim: latent dimension L.
        x_dim: data dimension D.
        noise_std: initial observation noise s.
        learn_noise: whether s is a trained parameter.

    ``params_``: ``loc`` ``[batch, n_samples, D]`` and ``scale`` (scalar tensor).
    """

    def __init__(self, z_dim: int, x_dim: int, noise_std: float = 1.0, learn_noise: bool = True) -> None:
        super().__init__()
        check_positive_int("z_dim", z_dim, "LinearGaussianGenModel")
        check_positive_int("x_dim", x_dim, "LinearGaussianGenModel")
        if not noise_std > 0:
            raise ValueError(f"LinearGaussianGenModel: expected noise_std > 0, got {noise_std}")
        self.z_dim, self.x_dim = z_dim, x_dim
        self.weight = nn.Parameter(torch.randn(x_dim, z_dim) / math.sqrt(z_dim))
        self.bias = nn.Parameter(torch.zeros(x_dim))
        log_std = torch.tensor(math.log(noise_std))
        if learn_noise:
            self.log_noise_std = nn.Parameter(log_std)
        else:
            self.register_buffer("log_noise_std", log_std)

    def forward(self, x, z: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"loc": z @ self.weight.T + self.bias, "scale": self.log_noise_std.exp()}

    def prior(self):
        zeros = self.bias.new_zeros(self.z_dim)
        return Independent(Normal(zeros, torch.ones_like(zeros)), 1)

    def likelihood(self):
        loc = self.params_["loc"]
        return Independent(Normal(loc, self.params_["scale"].expand_as(loc)), 1)

    def marginal(self) -> MultivariateNormal:
        """p(x) = N(b, W W^T + s^2 I) as a distribution of event shape ``[D]``."""
        eye = torch.eye(self.x_dim, dtype=self.weight.dtype, device=self.weight.device)
        cov = self.weight @ self.weight.T + (2 * self.log_noise_std).exp() * eye
        return MultivariateNormal(self.bias, covariance_matrix=cov)

    def exact_log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """Exact log p(x) ``[batch]`` of data ``[batch, D]``."""
        _check_last_dim(x, self.x_dim, "LinearGaussianGenModel.exact_log_prob")
        return self.marginal().log_prob(x)

    def expected_elbo(self, x: torch.Tensor, loc: torch.Tensor, cov: torch.Tensor) -> torch.Tensor:
        """Exact ELBO ``[batch]`` of a Gaussian q(z|x) = N(loc, cov), in closed form.

        ``E_q[log p(x|z)] - KL(q || p(z))`` with ``loc`` ``[batch, L]`` and ``cov``
        ``[L, L]`` or ``[batch, L, L]``; differentiable in every argument, so its
        autograd gradient is the reference for gradient estimators.
        """
        _check_last_dim(x, self.x_dim, "LinearGaussianGenModel.expected_elbo")
        noise_var = (2 * self.log_noise_std).exp()
        resid = x - loc @ self.weight.T - self.bias  # [batch, D]
        trace_wsw = torch.einsum("dl,...lm,dm->...", self.weight, cov, self.weight)
        expected_log_lik = -0.5 * (
            self.x_dim * torch.log(2 * math.pi * noise_var) + (resid.square().sum(-1) + trace_wsw) / noise_var
        )
        trace_cov = cov.diagonal(dim1=-2, dim2=-1).sum(-1)
        kl = 0.5 * (trace_cov + loc.square().sum(-1) - self.z_dim - torch.logdet(cov))
        return expected_log_lik - kl

    def posterior_params(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Exact posterior ``p(z|x) = N(A x + c, S)`` as ``(A [L, D], c [L], S [L, L])``.

        ``S = (I + W^T W / s^2)^{-1}``, ``A = S W^T / s^2``, ``c = -A b``.
        """
        eye = torch.eye(self.z_dim, dtype=self.weight.dtype, device=self.weight.device)
        noise_var = (2 * self.log_noise_std).exp()
        cov = torch.linalg.inv(eye + self.weight.T @ self.weight / noise_var)
        a = cov @ self.weight.T / noise_var
        return a, -a @ self.bias, cov

    def exact_posterior(self, x: torch.Tensor) -> MultivariateNormal:
        """p(z | x) with batch shape ``[batch]`` and event shape ``[L]``."""
        _check_last_dim(x, self.x_dim, "LinearGaussianGenModel.exact_posterior")
        a, c, cov = self.posterior_params()
        return MultivariateNormal(x @ a.T + c, covariance_matrix=cov)

    def exact_inf_net(self) -> GaussianInfNet:
        """A :class:`GaussianInfNet` set to the exact posterior (same dtype and device)."""
        a, c, cov = (t.detach() for t in self.posterior_params())
        q = GaussianInfNet(self.x_dim, self.z_dim, covariance="full")
        q = q.to(dtype=self.weight.dtype, device=self.weight.device)
        q.set_affine(a, c, torch.linalg.cholesky(cov))
        return q


# --------------------------------------------------------------------------- sigmoid belief net
class BernoulliInfNet(InfNet):
    """Factorised Bernoulli q(z|x) with logits from an MLP of x (no reparametrization).

    ``params_``: ``logits`` ``[batch, L]``.
    """

    def __init__(self, x_dim: int, z_dim: int, hidden: Sequence[int] = ()) -> None:
        super().__init__()
        check_positive_int("x_dim", x_dim, "BernoulliInfNet")
        check_positive_int("z_dim", z_dim, "BernoulliInfNet")
        self.x_dim, self.z_dim = x_dim, z_dim
        self.net = mlp([x_dim, *hidden, z_dim])

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        _check_last_dim(x, self.x_dim, type(self).__name__, self)
        return {"logits": self.net(x)}

    def distribution(self):
        return Independent(Bernoulli(logits=self.params_["logits"]), 1)


class SigmoidBeliefNet(GenModel):
    """``z ~ prod_l Bernoulli(sigmoid(a_l))``, ``x | z ~ prod_d Bernoulli(sigmoid(f(z)_d))``.

    Args:
        z_dim: number of binary latents L.
        x_dim: number of binary observations D.
        hidden: hidden layer sizes of f; ``()`` gives the classic one-layer SBN.

    ``params_``: ``logits`` ``[batch, n_samples, D]``.
    """

    def __init__(self, z_dim: int, x_dim: int, hidden: Sequence[int] = ()) -> None:
        super().__init__()
        check_positive_int("z_dim", z_dim, "SigmoidBeliefNet")
        check_positive_int("x_dim", x_dim, "SigmoidBeliefNet")
        self.z_dim, self.x_dim = z_dim, x_dim
        self.prior_logits = nn.Parameter(torch.zeros(z_dim))
        self.net = mlp([z_dim, *hidden, x_dim])

    def forward(self, x, z: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"logits": self.net(z)}

    def prior(self):
        return Independent(Bernoulli(logits=self.prior_logits), 1)

    def likelihood(self):
        return Independent(Bernoulli(logits=self.params_["logits"]), 1)

    def exact_log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """Exact log p(x) ``[batch]`` by summing over all ``2^L`` latent configurations."""
        _check_last_dim(x, self.x_dim, "SigmoidBeliefNet.exact_log_prob")
        if self.z_dim > _MAX_ENUMERATED_LATENTS:
            raise ValueError(
                f"SigmoidBeliefNet.exact_log_prob: enumeration needs z_dim <= "
                f"{_MAX_ENUMERATED_LATENTS}, got {self.z_dim}"
            )
        z = all_binary_configurations(self.z_dim, like=self.prior_logits)  # [2^L, L]
        z = z.unsqueeze(0).expand(x.shape[0], *z.shape)  # [batch, 2^L, L]
        return torch.logsumexp(self(x, z).log_prob(x, z), dim=1)


def all_binary_configurations(n_bits: int, like: torch.Tensor) -> torch.Tensor:
    """Every vector in ``{0, 1}^n_bits``: ``[2^n_bits, n_bits]`` with ``like``'s dtype and device."""
    codes = torch.arange(2**n_bits, device=like.device)
    bits = (codes.unsqueeze(1) >> torch.arange(n_bits, device=like.device)) & 1
    return bits.to(like.dtype)


_LAYERED = ("LayeredBernoulliInfNet", "LayeredSigmoidBeliefNet", "bernoulli_log_mass")


def __getattr__(name: str):
    # The layered SBN lives in its own module, which imports this one: loaded on first use.
    if name in _LAYERED:
        from bbvae import models_layered

        return getattr(models_layered, name)
    raise AttributeError(f"module 'bbvae.models' has no attribute {name!r}")
