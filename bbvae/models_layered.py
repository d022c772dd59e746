"""Sigmoid belief nets with several stochastic layers, and their layered q(z|x).

* :class:`LayeredSigmoidBeliefNet`: ``x <- z_1 <- z_2 <- ... <- z_L``, every layer a factorised
  Bernoulli given the one above it; exact log p(x) by enumeration for a few latents.
* :class:`LayeredBernoulliInfNet`: q(z|x) = q(z_1|x) q(z_2|z_1) ... q(z_L|z_{L-1}), the layered
  protocol of :mod:`bbvae.losses.layered`.

Both are importable from :mod:`bbvae.models`.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.distributions import Bernoulli, Independent

from bbvae._validation import check_positive_int
from bbvae.base import GenModel, InfNet
from bbvae.models import _MAX_ENUMERATED_LATENTS, _check_last_dim, all_binary_configurations, mlp

__all__ = ["LayeredBernoulliInfNet", "LayeredSigmoidBeliefNet", "bernoulli_log_mass"]


def bernoulli_log_mass(logits: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """``z log sigmoid(a) + (1 - z) log sigmoid(-a)`` summed over the last dimension.

    Equal to the Bernoulli log-mass at binary ``z`` and linear in ``z``, so it also scores relaxed
    latents in ``[0, 1]`` (as REBAR's and RELAX's control variates need). Shapes broadcast;
    the result drops the last dimension.
    """
    return (z * F.logsigmoid(logits) + (1.0 - z) * F.logsigmoid(-logits)).sum(dim=-1)


def _check_layer_sizes(layer_sizes, where: str) -> tuple[int, ...]:
    if isinstance(layer_sizes, (str, bytes)) or not isinstance(layer_sizes, Sequence) or not layer_sizes:
        raise TypeError(
            f"{where}: expected layer_sizes to be a non-empty sequence of positive ints (latents per "
            f"stochastic layer, the one next to x first), got {layer_sizes!r}"
        )
    for i, size in enumerate(layer_sizes):
        check_positive_int(f"layer_sizes[{i}]", size, where)
    return tuple(int(size) for size in layer_sizes)


class LayeredBernoulliInfNet(InfNet):
    """q(z|x) = q(z_1|x) q(z_2|z_1) ... q(z_L|z_{L-1}): a chain of factorised Bernoulli layers.

    Each layer is a factorised Bernoulli whose logits are an MLP of the layer before it (of ``x``
    for the first). The latents of all layers are concatenated, ``z_1`` first:
    ``z`` is ``[batch, n_samples, sum(layer_sizes)]``. ``sample`` draws ancestrally and
    ``log_prob`` sums the layers' log-masses, so every score-function loss (ELBO with
    ``estimator="score"``, NVIL, RLOO, VIMCO, RWS) takes this q as it is; ARM, DisARM, ARMS,
    REBAR and RELAX use its layers (one estimator per layer, see :mod:`bbvae.losses.arm`).

    **The layered protocol** (what those losses read; subclass and override ``forward`` and
    ``layer_logits`` for another structure, e.g. layers that also read ``x``):

    * ``layer_sizes``: the tuple ``(L_1, ..., L_L)``;
    * ``layer_logits(0, [])``: the first layer's logits ``[batch, L_1]`` (from ``params_``);
    * ``layer_logits(l, previous)`` for ``l >= 1``: logits ``[batch, K, L_{l+1}]`` of layer ``l``
      (0-based) given ``previous``, the list of the ``l`` earlier layers' values, each
      ``[batch, K, L_j]``. It must accept relaxed values in ``[0, 1]`` (REBAR, RELAX).

    Args:
        x_dim: data dimension D.
        layer_sizes: latents per stochastic layer, ``(L_1, ..., L_L)``, the layer next to x first.
        hidden: hidden layer sizes of each layer's MLP; ``()`` gives logistic (linear) layers.

    ``params_``: ``logits`` ``[batch, L_1]``, the first layer's.
    """

    def __init__(self, x_dim: int, layer_sizes: Sequence[int], hidden: Sequence[int] = ()) -> None:
        super().__init__()
        where = "LayeredBernoulliInfNet"
        check_positive_int("x_dim", x_dim, where)
        self.layer_sizes = _check_layer_sizes(layer_sizes, where)
        self.x_dim = x_dim
        sizes = (x_dim, *self.layer_sizes)
        self.nets = nn.ModuleList(mlp([n_in, *hidden, n_out]) for n_in, n_out in itertools.pairwise(sizes))

    @property
    def z_dim(self) -> int:
        """Total number of latents, ``sum(layer_sizes)``."""
        return sum(self.layer_sizes)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        _check_last_dim(x, self.x_dim, type(self).__name__, self)
        return {"logits": self.nets[0](x)}

    def layer_logits(self, index: int, previous: Sequence[torch.Tensor]) -> torch.Tensor:
        """Logits of layer ``index``: ``[batch, L_1]`` for 0, else ``[batch, K, L_{index+1}]``."""
        if index == 0:
            self._require_forward("layer_logits")
            return self.params_["logits"]
        return self.nets[index](previous[index - 1])

    def split(self, z: torch.Tensor) -> list[torch.Tensor]:
        """The layers of ``z`` ``[..., sum(layer_sizes)]``: a list of ``[..., L_l]``."""
        return list(z.split(self.layer_sizes, dim=-1))

    def sample(self, n_samples: int = 1) -> torch.Tensor:
        """Ancestral draw, no gradient path: ``[batch, n_samples, sum(layer_sizes)]``."""
        self._require_forward("sample")
        check_positive_int("n_samples", n_samples, f"{type(self).__name__}.sample")
        with torch.no_grad():
            first = self.layer_logits(0, [])
            layers = [torch.bernoulli(torch.sigmoid(first).unsqueeze(1).expand(-1, n_samples, -1))]
            for index in range(1, len(self.layer_sizes)):
                layers.append(torch.bernoulli(torch.sigmoid(self.layer_logits(index, layers))))
        return torch.cat(layers, dim=-1)

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """log q(z|x) ``[batch, n_samples]`` of ``z`` ``[batch, n_samples, sum(layer_sizes)]``."""
        self._require_forward("log_prob")
        self.check_latents(z, (self.z_dim,), "log_prob")
        layers = self.split(z)
        total = bernoulli_log_mass(self.layer_logits(0, []).unsqueeze(1), layers[0])
        for index in range(1, len(layers)):
            total = total + bernoulli_log_mass(self.layer_logits(index, layers[:index]), layers[index])
        return total


class LayeredSigmoidBeliefNet(GenModel):
    """Sigmoid belief net with ``L`` stochastic layers: ``x <- z_1 <- z_2 <- ... <- z_L``.

    ``z_L ~ prod Bernoulli(sigmoid(a))``, ``z_l | z_{l+1} ~ prod Bernoulli(sigmoid(f_l(z_{l+1})))``,
    ``x | z_1 ~ prod_d Bernoulli(sigmoid(g(z_1)_d))``. The latents are the layers concatenated,
    ``z_1`` first (the layout of :class:`LayeredBernoulliInfNet`): ``[batch, n_samples,
    sum(layer_sizes)]``. The latents' log-masses are written linearly in ``z``, so ``log_prob``
    also scores relaxed latents in ``[0, 1]`` (REBAR, RELAX). With ``layer_sizes=(L,)`` it is
    :class:`SigmoidBeliefNet`.

    Args:
        layer_sizes: latents per stochastic layer, ``(L_1, ..., L_L)``, the layer next to x first.
        x_dim: number of binary observations D.
        hidden: hidden layer sizes of each conditional's MLP; ``()`` gives logistic layers (the
            "linear" SBN of Tucker et al. 2017 and Dong et al. 2020).

    ``params_``: ``logits`` ``[batch, n_samples, D]`` (of x) and ``layer_logits``, the tuple of
    ``[batch, n_samples, L_l]`` logits of ``z_l`` given ``z_{l+1}``, for ``l < L``.
    """

    def __init__(self, layer_sizes: Sequence[int], x_dim: int, hidden: Sequence[int] = ()) -> None:
        super().__init__()
        where = "LayeredSigmoidBeliefNet"
        self.layer_sizes = _check_layer_sizes(layer_sizes, where)
        check_positive_int("x_dim", x_dim, where)
        self.x_dim = x_dim
        self.prior_logits = nn.Parameter(torch.zeros(self.layer_sizes[-1]))
        self.net = mlp([self.layer_sizes[0], *hidden, x_dim])  # p(x | z_1)
        # nets[l]: p(z_{l+1} | z_{l+2}) in 0-based layers, l = 0 .. L-2
        self.nets = nn.ModuleList(
            mlp([n_in, *hidden, n_out]) for n_out, n_in in itertools.pairwise(self.layer_sizes)
        )

    @property
    def z_dim(self) -> int:
        """Total number of latents, ``sum(layer_sizes)``."""
        return sum(self.layer_sizes)

    def _split(self, z: torch.Tensor, where: str) -> list[torch.Tensor]:
        if z.shape[-1] != self.z_dim:
            raise ValueError(
                f"{type(self).__name__}.{where}: expected z of shape [batch, n_samples, {self.z_dim}] "
                f"(layers {list(self.layer_sizes)} concatenated), got {list(z.shape)}"
            )
        return list(z.split(self.layer_sizes, dim=-1))

    def forward(self, x, z: torch.Tensor) -> dict:
        layers = self._split(z, "forward")
        conditionals = tuple(net(layers[i + 1]) for i, net in enumerate(self.nets))
        return {"logits": self.net(layers[0]), "layer_logits": conditionals}

    def likelihood(self):
        return Independent(Bernoulli(logits=self.params_["logits"]), 1)

    def log_prior(self, z: torch.Tensor) -> torch.Tensor:
        """log p(z) ``[batch, n_samples]``: the top layer's prior and every conditional, linear in z."""
        self._check_z(z, "log_prior")
        layers = self._split(z, "log_prior")
        total = bernoulli_log_mass(self.prior_logits, layers[-1])
        for logits, layer in zip(self.params_["layer_logits"], layers[:-1]):
            total = total + bernoulli_log_mass(logits, layer)
        return total

    @torch.no_grad()
    def sample(self, n: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """Ancestral draw of ``n`` joint samples: ``(x [n, D], z [n, sum(layer_sizes)])``."""
        check_positive_int("n", n, f"{type(self).__name__}.sample")
        top = torch.sigmoid(self.prior_logits).expand(n, 1, -1)
        layers = [torch.bernoulli(top)]  # [n, 1, L_L], then down to z_1
        for net in reversed(self.nets):
            layers.insert(0, torch.bernoulli(torch.sigmoid(net(layers[0]))))
        z = torch.cat(layers, dim=-1)  # [n, 1, sum L]
        self(None, z)
        x = self.likelihood().sample()  # [n, 1, D]
        return x.squeeze(1), z.squeeze(1)

    def exact_log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """Exact log p(x) ``[batch]`` by summing over all ``2^sum(layer_sizes)`` configurations."""
        _check_last_dim(x, self.x_dim, "LayeredSigmoidBeliefNet.exact_log_prob")
        if self.z_dim > _MAX_ENUMERATED_LATENTS:
            raise ValueError(
                f"LayeredSigmoidBeliefNet.exact_log_prob: enumeration needs sum(layer_sizes) <= "
                f"{_MAX_ENUMERATED_LATENTS}, got {self.z_dim}"
            )
        z = all_binary_configurations(self.z_dim, like=self.prior_logits)  # [2^L, L]
        z = z.unsqueeze(0).expand(x.shape[0], *z.shape)  # [batch, 2^L, L]
        return torch.logsumexp(self(x, z).log_prob(x, z), dim=1)
