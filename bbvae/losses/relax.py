"""RELAX (Grathwohl, Choi, Wu, Roeder & Duvenaud 2018) for Bernoulli and one-hot categorical latents.

REBAR's estimator (see :mod:`bbvae.losses.rebar`) with a control variate that has a learned part:
``c(z~) = eta * f(sigma_lambda(z~)) + r_psi(x, sigma_lambda(z~))``, where ``r_psi`` is a neural
network (the surrogate). ``r_psi``, ``eta`` and ``lambda`` are trained online, by the same
optimiser as the model, to minimise the variance of the gradient estimate (the variance-gradient
trick). The estimator stays unbiased whatever the surrogate.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from bbvae._validation import shape_str
from bbvae.base import GenModel, InfNet
from bbvae.losses.rebar import REBAR

#: Hidden units of the default surrogate network (one tanh layer).
DEFAULT_SURROGATE_HIDDEN = 50


class RELAX(REBAR):
    """RELAX estimator of the ELBO's gradient for Bernoulli and one-hot categorical latents.

    Args:
        inf_net, gen_model, n_samples, temperature, scale, learn_temperature, learn_scale:
            see :class:`~bbvae.losses.REBAR`.
        surrogate: the learned part ``r_psi`` of the control variate. ``None`` (default): a network
            with one hidden layer of 50 tanh units on ``[flatten(x), flatten(s)]`` (``s`` the
            relaxed sample), its output layer starting at zero (so RELAX starts as REBAR),
            **created on the first call** (or by ``loss.prepare(x)``; build the optimiser after
            either). An ``nn.Module``: called as ``surrogate(x, s)`` with ``x`` ``[batch, *obs]``
            and ``s`` ``[batch, K, *latent_shape]``, it must return ``[batch, K]``.
        rebar_term: keep REBAR's ``eta * f(sigma_lambda(z~))`` in the control variate (the RELAX
            paper's choice for discrete latents); ``False`` uses ``r_psi`` alone.

    Attributes:
        surrogate_net_ (nn.Module): the default surrogate, once built.
        Plus those of :class:`~bbvae.losses.REBAR`.
    """

    def __init__(
        self,
        inf_net: InfNet,
        gen_model: GenModel,
        n_samples: int = 1,
        temperature: float = 0.5,
        scale: float = 1.0,
        learn_temperature: bool = True,
        learn_scale: bool = True,
        surrogate: nn.Module | None = None,
        rebar_term: bool = True,
    ) -> None:
        super().__init__(inf_net, gen_model, n_samples, temperature, scale, learn_temperature, learn_scale)
        if surrogate is not None and not isinstance(surrogate, nn.Module):
            raise TypeError(
                "RELAX: expected surrogate to be None (default network) or an nn.Module mapping "
                f"(x, z) to [batch, n_samples], got {type(surrogate).__name__}"
            )
        if not isinstance(rebar_term, bool):
            raise TypeError(f"RELAX: expected rebar_term to be a bool, got {type(rebar_term).__name__}")
        self.surrogate = surrogate
        self.rebar_term = rebar_term

    def prepare(self, x: torch.Tensor, **context) -> None:
        """Build the default surrogate network from the data's and the latents' shapes."""
        if self.surrogate is None and "surrogate_net_" not in self._modules:
            with torch.no_grad():
                q = self.inf_net(x, **context)
                z = q.sample(1)
            self._build_default(x, z)

    def relaxed_control(
        self, x: torch.Tensor, s: torch.Tensor, log_q: torch.Tensor, kind: str
    ) -> torch.Tensor:
        """``r_psi(x, s)`` plus REBAR's ``eta * (log p(x, s) - log q(s|x))`` (if ``rebar_term``)."""
        net = self._surrogate_module(x, s)
        learned = net(x, s)
        expected = tuple(s.shape[:2])
        if not isinstance(learned, torch.Tensor) or tuple(learned.shape) != expected:
            is_tensor = isinstance(learned, torch.Tensor)
            got = shape_str(list(learned.shape)) if is_tensor else type(learned).__name__
            raise ValueError(
                f"RELAX: expected surrogate(x, z) of shape {shape_str(list(expected))} = [batch, n_samples], "
                f"got {got}"
            )
        if not self.rebar_term:
            return learned
        return super().relaxed_control(x, s, log_q, kind) + learned

    def control_variate_parameters(self):
        params = list(super().control_variate_parameters()) if self.rebar_term else [self.log_temperature]
        module = self.surrogate if self.surrogate is not None else self._modules.get("surrogate_net_")
        return params + (list(module.parameters()) if module is not None else [])

    def _surrogate_module(self, x: torch.Tensor, s: torch.Tensor) -> nn.Module:
        if self.surrogate is not None:
            return self.surrogate
        if "surrogate_net_" not in self._modules:
            self._build_default(x, s)
        return self.surrogate_net_

    def _build_default(self, x: torch.Tensor, z: torch.Tensor) -> None:
        dtype = self.log_temperature.dtype
        self.surrogate_net_ = _DefaultSurrogate(
            math.prod(x.shape[1:]), math.prod(z.shape[2:]), dtype=dtype, device=x.device
        )


class _DefaultSurrogate(nn.Module):
    """``r(x, s)``: one tanh layer on ``[flatten(x), flatten(s)]`` per sample, output ``[batch, K]``."""

    def __init__(self, n_x: int, n_z: int, dtype: torch.dtype, device) -> None:
        super().__init__()
        factory = {"dtype": dtype, "device": device}
        self.n_x, self.n_z = n_x, n_z
        self.hidden = nn.Linear(n_x + n_z, DEFAULT_SURROGATE_HIDDEN, **factory)
        self.out = nn.Linear(DEFAULT_SURROGATE_HIDDEN, 1, **factory)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        k = s.shape[1]
        xs = x.flatten(1).to(self.hidden.weight.dtype)  # [batch, n_x]
        zs = s.flatten(2)  # [batch, K, n_z]
        if xs.shape[1] != self.n_x or zs.shape[2] != self.n_z:
            raise ValueError(
                f"RELAX: the default surrogate was built for {self.n_x} data and {self.n_z} latent values "
                f"per data point, got x of shape {list(x.shape)} and z of shape {list(s.shape)}; pass your "
                "own surrogate for data whose shape varies"
            )
        h = torch.cat([xs.unsqueeze(1).expand(-1, k, -1), zs], dim=-1)
        return self.out(torch.tanh(self.hidden(h))).squeeze(-1)  # [batch, K]
