"""NVIL: the score-function ELBO with learned baselines and variance normalisation (Mnih & Gregor 2014)."""

from __future__ import annotations

import math

import torch
from torch import nn

from bbvae._validation import shape_str
from bbvae.base import GenModel, InfNet
from bbvae.losses.base import Loss

#: Hidden units of the default input-dependent baseline (one tanh layer, as in the paper).
DEFAULT_BASELINE_HIDDEN = 100


class NVIL(Loss):
    """Score-function ELBO with the variance reductions of Mnih & Gregor (2014).

    With ``z_k ~ q(z|x)`` drawn by ``q.sample`` (no reparametrization needed) and the
    learning signal ``l_k = log p(x, z_k) - log q(z_k|x)``, the gradient is

    * for p: ``(1/K) sum_k grad log p(x, z_k)``;
    * for q: ``(1/K) sum_k A_k grad log q(z_k|x)`` with the centred, normalised signal
      ``A_k = (l_k - b(x) - c) / max(1, s)``.

    Three reductions make ``A``:

    * ``b(x)``, an input-dependent baseline network, trained by regression on the
      detached centred signal: its gradient is that of ``-(l - c - b(x))^2 / (2 max(1, s))``
      (the paper's update), averaged over batch and samples, and it reaches the optimiser
      through ``loss.parameters()`` (the network is a submodule of the loss);
    * ``c``, a running mean of ``l - b(x)`` (exponential moving average over calls);
    * ``s``, a running standard deviation of ``l - b(x)``, for variance normalisation.

    ``c`` and ``s`` come from *earlier* calls (bias-corrected like Adam's moments) and are
    updated after use, so they do not depend on the current samples; the first call uses
    the statistics of its own batch. They are only updated in training mode. ``b(x)`` does
    not depend on ``z``. With ``normalize=False`` the gradient is therefore unbiased for
    the ELBO's gradient; with normalisation q's gradient is scaled by ``1 / max(1, s)``
    (an adaptive step size for q, as in the paper).

    Like the ELBO itself, NVIL needs ``log p(x, z) > -inf`` wherever q puts mass: a sample
    outside the model's support makes the bound ``-inf`` (use VIMCO or RWS, which give
    such samples zero weight).

    Args:
        inf_net, gen_model: see :class:`~bbvae.losses.Loss`.
        n_samples: draws of z per data point (K >= 1); the gradient averages them.
        baseline: the input-dependent baseline. ``None`` (default): a network with one
            hidden layer of 100 tanh units on the flattened x, **created on the first
            call** from the data's shape, dtype and device (create the optimiser after one
            call, or pass a network). ``False``: no input-dependent baseline. An
            ``nn.Module``: called as ``baseline(x)``, must return ``[batch]``.
        centering: subtract the running mean ``c``.
        normalize: divide by ``max(1, s)``.
        decay: decay of the moving averages (the paper's alpha), in ``[0, 1)``.

    Attributes:
        loss_history_, log_p_, log_q_, bound_: see :class:`~bbvae.losses.Loss`.
        baseline_net_ (nn.Module): the default baseline network, once built.
        baseline_ (Tensor): ``[batch]`` values ``b(x)`` of the last call (zeros without a
            baseline), detached.
        signal_mean_ (Tensor): scalar ``c`` used by the last call.
        signal_std_ (Tensor): scalar ``s`` used by the last call.
        learning_signal_ (Tensor): ``[batch, K]`` the signal ``A`` of the last call, detached.
    """

    def __init__(
        self,
        inf_net: InfNet,
        gen_model: GenModel,
        n_samples: int = 1,
        baseline: nn.Module | bool | None = None,
        centering: bool = True,
        normalize: bool = True,
        decay: float = 0.8,
    ) -> None:
        super().__init__(inf_net, gen_model, n_samples)
        if not (baseline is None or baseline is False or isinstance(baseline, nn.Module)):
            raise TypeError(
                "NVIL: expected baseline to be None (default network), False (none) or an "
                f"nn.Module mapping x to [batch], got {type(baseline).__name__}"
            )
        for name, flag in (("centering", centering), ("normalize", normalize)):
            if not isinstance(flag, bool):
                raise TypeError(f"NVIL: expected {name} to be a bool, got {type(flag).__name__}")
        if isinstance(decay, bool) or not isinstance(decay, (int, float)) or not 0 <= decay < 1:
            raise ValueError(f"NVIL: expected decay in [0, 1), got {decay!r}")
        self.baseline = baseline
        self.centering = centering
        self.normalize = normalize
        self.decay = decay
        # Moving averages of the mean and variance of l - b(x), and the total weight they
        # hold (1 - decay^t), which removes the bias towards the zero start.
        self.register_buffer("running_mean", torch.zeros(()))
        self.register_buffer("running_var", torch.zeros(()))
        self.register_buffer("running_weight", torch.zeros(()))

    # --------------------------------------------------------------------------- estimator
    def estimate(self, x: torch.Tensor, **context) -> tuple[torch.Tensor, torch.Tensor]:
        q = self.inf_net(x, **context)
        z = q.sample(self.n_samples).detach()  # [batch, K, *latent]: no gradient path
        log_q = q.log_prob(z)  # [batch, K]
        log_p = self.gen_model(x, z).log_prob(x, z)  # [batch, K]
        log_w = self.record(log_p, log_q).detach()  # l = log w
        bound = log_w.mean(dim=1)  # [batch]
        # A data point with a zero-weight sample (possible only with validation off) has bound
        # -inf and no learning signal; it must not reach the running statistics either.
        finite = torch.isfinite(log_w).all(dim=1, keepdim=True)  # [batch, 1]
        signal = torch.where(finite, log_w, 0.0)

        b = self._baseline_values(x, like=signal)  # [batch], differentiable in the baseline's parameters
        residual = signal - b.detach().unsqueeze(1)  # [batch, K]: l - b(x)
        mean, var = self._statistics(residual, finite.expand_as(residual))
        c = mean if self.centering else torch.zeros_like(mean)
        scale = var.sqrt().clamp_min(1.0) if self.normalize else torch.ones_like(var)
        centred = torch.where(finite, (residual - c) / scale, 0.0)  # [batch, K]

        self.baseline_ = b.detach()
        self.signal_mean_ = c
        self.signal_std_ = var.sqrt()
        self.learning_signal_ = centred
        # p: grad log p(x, z_k); q: the centred signal times grad log q(z_k|x) (the
        # pathwise -grad log q of log w has mean zero and is left out, as in the paper).
        objective = (log_p + centred * log_q).mean(dim=1)  # [batch]
        if b.requires_grad:
            # Regression of b(x) on l - c: its gradient is centred * grad b, as in the paper.
            target = (signal - c).detach()
            regression = torch.where(finite, target - b.unsqueeze(1), 0.0).pow(2).mean(dim=1) / (2 * scale)
            objective = objective - regression
        return bound, objective

    # ------------------------------------------------------------------------------ helpers
    def _baseline_values(self, x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        module = self._baseline_module(x)
        if module is None:
            return like.new_zeros(x.shape[0])
        values = module(x)
        if not isinstance(values, torch.Tensor) or tuple(values.shape) != (x.shape[0],):
            got = shape_str(list(values.shape)) if isinstance(values, torch.Tensor) else type(values).__name__
            raise ValueError(f"NVIL: expected baseline(x) of shape [{x.shape[0]}] = [batch], got {got}")
        return values

    def prepare(self, x: torch.Tensor, **context) -> None:
        """Build the default baseline network from the data's shape (if it is used)."""
        self._baseline_module(x)

    def _baseline_module(self, x: torch.Tensor) -> nn.Module | None:
        if self.baseline is False:
            return None
        if isinstance(self.baseline, nn.Module):
            return self.baseline
        if "baseline_net_" not in self._modules:
            self.baseline_net_ = _DefaultBaseline(x, self._float_dtype(x))
        return self.baseline_net_

    def _float_dtype(self, x: torch.Tensor) -> torch.dtype:
        if x.is_floating_point():
            return x.dtype
        for param in self.inf_net.parameters():
            if param.is_floating_point():
                return param.dtype
        return torch.get_default_dtype()

    def _statistics(self, residual: torch.Tensor, keep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and variance of ``l - b(x)`` over the ``keep`` entries to use now; updates the
        running ones afterwards (an all-dropped batch leaves them as they are)."""
        count = keep.sum().to(residual.dtype)
        any_kept = count > 0
        safe_count = count.clamp_min(1.0)
        batch_mean = torch.where(keep, residual, 0.0).sum() / safe_count
        batch_var = torch.where(keep, (residual - batch_mean).square(), 0.0).sum() / safe_count
        weight = self.running_weight.to(batch_mean)
        seen = weight > 0
        safe_weight = torch.where(seen, weight, torch.ones_like(weight))
        mean = torch.where(seen, self.running_mean.to(batch_mean) / safe_weight, batch_mean)
        var = torch.where(seen, self.running_var.to(batch_mean) / safe_weight, batch_var)
        if self.training:
            d = torch.where(any_kept, residual.new_tensor(self.decay), 1.0)
            self.running_mean = d * self.running_mean.to(batch_mean) + (1 - d) * batch_mean
            self.running_var = d * self.running_var.to(batch_mean) + (1 - d) * batch_var
            self.running_weight = d * weight + (1 - d)
        return mean, var


class _DefaultBaseline(nn.Module):
    """``b(x)``: flattened x, one hidden layer of tanh units, a linear output ``[batch]``.

    The output layer starts at zero, so until it is trained the baseline changes nothing.
    """

    def __init__(self, like: torch.Tensor, dtype: torch.dtype) -> None:
        super().__init__()
        n_in = math.prod(like.shape[1:])
        factory = {"dtype": dtype, "device": like.device}
        self.hidden = nn.Linear(n_in, DEFAULT_BASELINE_HIDDEN, **factory)
        self.out = nn.Linear(DEFAULT_BASELINE_HIDDEN, 1, **factory)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.flatten(1)  # [batch, prod(obs_shape)]
        if h.shape[1] != self.hidden.in_features:
            raise ValueError(
                f"NVIL: the default baseline network was built for data of {self.hidden.in_features} "
                f"values per row, got x of shape {list(x.shape)}; pass baseline=False (or your own "
                "baseline module) for data whose shape varies, such as ragged sequence batches"
            )
        if h.dtype != self.hidden.weight.dtype:
            h = h.to(self.hidden.weight.dtype)
        return self.out(torch.tanh(self.hidden(h))).squeeze(1)  # [batch]
