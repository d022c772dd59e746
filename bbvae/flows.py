"""Normalising flows from ``zuko`` (an optional extra: ``pip install 'bbvae[flows]'``).

* :class:`FlowInfNet`: q(z|x) is a conditional flow ``z = T_c(u)`` on top of a Gaussian base
  ``u ~ N(mu(x), diag sigma(x)^2)``, with the base parameters and the flow's context ``c(x)``
  from one MLP of ``x``. Its :meth:`~FlowInfNet.distribution` is a zuko ``NormalizingFlow`` (a
  torch ``Distribution`` with ``rsample`` and ``log_prob``), so every loss of :mod:`bbvae.losses`
  takes it like any other ``InfNet``; :meth:`~FlowInfNet.params_detached` also detaches the
  flow's weights, so sticking-the-landing and DReG gradients drop their whole score term.
* :class:`RealNVPDensity`: a Real NVP density ``p(v)`` (affine coupling layers on a standard
  Gaussian) with an exact ``log_prob``: a density model of its own, or the prior of a VAE.
* :class:`FlowPriorGenModel`: a ``GenModel`` whose prior ``p(z)`` is a :class:`RealNVPDensity` and
  whose likelihood is a diagonal Gaussian (learned scale) or Bernoulli MLP decoder: where flows and
  VAEs meet.

zuko is imported when a flow is built; without it a clear ImportError names the extra.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
from torch import nn
from torch.distributions import Bernoulli, Distribution, Independent, Normal
from torch.nn import functional as F

from bbvae._validation import check_positive_int
from bbvae.base import GenModel, InfNet
from bbvae.models import mlp

__all__ = [
    "FLOWS",
    "FlowInfNet",
    "FlowPriorGenModel",
    "RealNVPDensity",
    "identity_init",
    "import_zuko",
    "make_flow",
]

#: Conditional flows of :class:`FlowInfNet` (zuko classes): Real NVP coupling, masked
#: autoregressive (affine), neural spline.
FLOWS = ("realnvp", "maf", "nsf")


def import_zuko():
    """The ``zuko`` module, or an ImportError naming the extra to install."""
    try:
        import zuko
    except ImportError as exc:
        raise ImportError(
            "bbvae's flows need zuko, an optional dependency: pip install 'bbvae[flows]'"
        ) from exc
    return zuko


def make_flow(kind: str, features: int, context: int, transforms: int, hidden: Sequence[int], where: str):
    """A zuko flow (``kind`` in :data:`FLOWS`) on ``features`` conditioned on ``context`` features."""
    if kind not in FLOWS:
        raise ValueError(f"{where}: expected flow in {FLOWS}, got {kind!r}")
    check_positive_int("transforms", transforms, where)
    zuko = import_zuko()
    cls = {"realnvp": zuko.flows.RealNVP, "maf": zuko.flows.MAF, "nsf": zuko.flows.NSF}[kind]
    return cls(features=features, context=context, transforms=transforms, hidden_features=tuple(hidden))


@torch.no_grad()
def identity_init(flow: nn.Module) -> None:
    """Zero the output layer of every flow layer's network: each layer, so the flow, becomes the identity
    (zuko's affine, autoregressive and spline layers all reduce to it)."""
    for layer in flow.transform.transforms:
        last = [m for m in layer.hyper.modules() if isinstance(getattr(m, "weight", None), torch.Tensor)][-1]
        last.weight.zero_()
        if getattr(last, "bias", None) is not None:
            last.bias.zero_()


@contextlib.contextmanager
def _frozen(module: nn.Module) -> Iterator[None]:
    """Within the block, ``module``'s parameters take no gradient (graphs built before keep theirs)."""
    params = [p for p in module.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


class FlowInfNet(InfNet):
    """q(z|x): a conditional normalising flow on a Gaussian base whose parameters come from x.

    Args:
        x_dim: data dimension D (``x`` is ``[batch, D]``).
        latent_size: L (``z`` is ``[batch, n_samples, L]``).
        hidden: hidden layers of the MLP ``x -> (mu, sigma, c)``.
        flow: ``"realnvp"`` (affine coupling), ``"maf"`` (masked autoregressive) or ``"nsf"``
            (neural spline); zuko's ``RealNVP``, ``MAF`` and ``NSF``.
        transforms: number of flow layers.
        context_size: size of the context ``c(x)`` the flow is conditioned on.
        flow_hidden: hidden layers of every flow layer's network.
        identity: start the flow at the identity (:func:`identity_init`), so that q starts as its
            Gaussian base.

    ``params_``: ``loc``, ``scale`` ``[batch, L]`` (the base) and ``context`` ``[batch, C]``.
    """

    def __init__(
        self,
        x_dim: int,
        latent_size: int,
        hidden: Sequence[int] = (64,),
        flow: str = "realnvp",
        transforms: int = 3,
        context_size: int = 16,
        flow_hidden: Sequence[int] = (64, 64),
        identity: bool = True,
    ) -> None:
        super().__init__()
        where = "FlowInfNet"
        check_positive_int("x_dim", x_dim, where)
        check_positive_int("latent_size", latent_size, where)
        check_positive_int("context_size", context_size, where)
        self.x_dim, self.latent_size, self.context_size = x_dim, latent_size, context_size
        self.net = mlp([x_dim, *hidden, 2 * latent_size + context_size], nn.ReLU)
        self.flow = make_flow(flow, latent_size, context_size, transforms, flow_hidden, where)
        if identity:
            identity_init(self.flow)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        if x.dim() != 2 or x.shape[-1] != self.x_dim:
            raise ValueError(f"FlowInfNet: expected x of shape [batch, {self.x_dim}], got {list(x.shape)}")
        loc, raw, context = self.net(x).split([self.latent_size, self.latent_size, self.context_size], -1)
        return {"loc": loc, "scale": F.softplus(raw) + 1e-4, "context": context}

    def distribution(self) -> Distribution:
        from zuko.distributions import NormalizingFlow

        p = self.params_
        base = Independent(Normal(p["loc"], p["scale"], validate_args=False), 1)
        return NormalizingFlow(self.flow.transform(p["context"]), base)

    @contextlib.contextmanager
    def params_detached(self) -> Iterator[FlowInfNet]:
        """Within the block, neither ``params_`` nor the flow's weights carry a gradient."""
        with super().params_detached(), _frozen(self.flow):
            yield self


class RealNVPDensity(nn.Module):
    """A Real NVP density ``p(v)`` on ``[..., features]``: affine couplings on ``N(0, I)``, exact log_prob.

    Args:
        features: the size of ``v``.
        transforms: coupling layers (masks alternate).
        hidden: hidden layers of every coupling network.
    """

    def __init__(self, features: int, transforms: int = 4, hidden: Sequence[int] = (64, 64)) -> None:
        super().__init__()
        check_positive_int("features", features, "RealNVPDensity")
        self.features = features
        self.flow = make_flow("realnvp", features, 0, transforms, hidden, "RealNVPDensity")

    def distribution(self) -> Distribution:
        """The density as a torch Distribution (batch shape ``[]``, event shape ``[features]``)."""
        return self.flow()

    def log_prob(self, v: torch.Tensor) -> torch.Tensor:
        """Exact ``log p(v)``: ``[..., features] -> [...]``."""
        if v.shape[-1] != self.features:
            raise ValueError(
                f"RealNVPDensity.log_prob: expected v of shape [..., {self.features}], got {list(v.shape)}"
            )
        return self.distribution().log_prob(v)

    def sample(self, n: int = 1) -> torch.Tensor:
        """``[n, features]`` draws (no gradient)."""
        with torch.no_grad():
            return self.distribution().sample((n,))


class FlowPriorGenModel(GenModel):
    """p(z) a :class:`RealNVPDensity`, p(x|z) an MLP decoder: a VAE's generative model with a flow prior.

    Args:
        latent_size: L.
        x_dim: D.
        hidden: hidden layers of the decoder.
        likelihood: ``"normal"`` (diagonal Gaussian, mean and learned scale from the decoder) or
            ``"bernoulli"`` (logits).
        transforms, flow_hidden: the prior's coupling layers and their networks.

    ``params_``: ``out`` ``[batch, n_samples, D or 2 D]`` (the decoder's output).
    """

    def __init__(
        self,
        latent_size: int,
        x_dim: int,
        hidden: Sequence[int] = (64,),
        likelihood: str = "normal",
        transforms: int = 4,
        flow_hidden: Sequence[int] = (64, 64),
    ) -> None:
        super().__init__()
        check_positive_int("x_dim", x_dim, "FlowPriorGenModel")
        if likelihood not in ("normal", "bernoulli"):
            raise ValueError(
                f"FlowPriorGenModel: expected likelihood 'normal' or 'bernoulli', got {likelihood!r}"
            )
        self.x_dim, self.likelihood_kind = x_dim, likelihood
        self.flow_prior = RealNVPDensity(latent_size, transforms, flow_hidden)
        out = 2 * x_dim if likelihood == "normal" else x_dim
        self.decoder = mlp([latent_size, *hidden, out], nn.ReLU)

    def forward(self, x, z: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"out": self.decoder(z)}

    def prior(self) -> Distribution:
        return self.flow_prior.distribution()

    def likelihood(self) -> Distribution:
        out = self.params_["out"]
        if self.likelihood_kind == "bernoulli":
            return Independent(Bernoulli(logits=out, validate_args=False), 1)
        loc, raw = out.split(self.x_dim, dim=-1)
        return Independent(Normal(loc, F.softplus(raw) + 1e-3, validate_args=False), 1)
