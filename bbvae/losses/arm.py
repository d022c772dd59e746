"""Antithetic estimators for Bernoulli latents: ARM, DisARM and their multi-sample form ARMS.

* ARM: Yin & Zhou (2019), "ARM: augment-REINFORCE-merge gradient for stochastic binary networks".
* DisARM: Dong, Mnih & Tucker (2020), "DisARM: an antithetic gradient estimator for binary latent
  variables".
* ARMS: Dimitriev & Zhou (2021), "ARMS: antithetic-REINFORCE-multi-sample gradient for binary
  variables".

All three estimate the gradient of the ELBO ``E_q[f(z)]``, ``f(z) = log p(x, z) - log q(z|x)``,
with respect to q's logits ``a`` (``q(z_i = 1) = p_i = sigmoid(a_i)``, independent across ``i``)
from ``K`` model evaluations at *correlated* samples, each of which is marginally a draw of q. The
logits' gradient is then pushed through q's network, and p gets ``(1/K) sum_k grad log p(x, z_k)``.

**Why ARMS is unbiased** (the derivation this module implements). Take two samples ``b, b'`` of
an exchangeable coupling that is independent across latent dimensions, with
``r_i = P(b_i = 1, b'_i = 0)``. Conditioning on the other dimensions (independent of dimension
``i``'s pair and each marginally q), ``E[(f(b) - f(b'))(b_i - b'_i)] = 2 r_i E_q[f(z | z_i = 1) -
f(z | z_i = 0)]``, while the true gradient is ``p_i (1 - p_i)`` times that expectation. Averaging
over the ordered pairs of ``K`` exchangeable samples gives the unbiased estimator

``g_i = w_i / (K - 1) sum_k (f_k - mean_j f_j)(b_ki - p_i)``, ``w_i = p_i (1 - p_i) / r_i``.

Independent samples have ``w = 1`` (RLOO). The antithetic pair ``u, 1 - u`` has
``r = min(p, 1 - p)``, so ``w = sigmoid(|a|)``: DisARM. ARMS couples ``K`` samples through the
Dirichlet copula: ``d ~ Dirichlet(1, ..., 1)``, ``u_k = 1 - (1 - d_k)^(K-1)`` (uniform marginals,
negatively correlated), ``b_k = [u_k < p]``, for which ``r = 1 - p - max(0, 1 - 2c)^(K-1)`` with
``c = 1 - (1 - p)^(1/(K-1))``; with ``K = 2`` it is DisARM's pair.

**Layered q** (a chain ``q(z_1|x) q(z_2|z_1) ... q(z_L|z_{L-1})`` of factorised Bernoulli
layers, the protocol of :mod:`bbvae.losses.layered`). The ELBO's gradient is a sum over layers,
``sum_l E_{z_<l}[ J_l^T grad_{a_l} E_{z_l | z_<l}[g_l(z_<=l)] ]``, with ``a_l = a_l(z_<l)`` the
logits of layer ``l``, ``J_l`` their Jacobian in q's parameters and ``g_l = E[f | z_<=l]``. Layer
``l``'s term is the one-layer estimator applied at that layer (Yin & Zhou 2019, section on
multiple stochastic layers): earlier layers fixed at one draw, the coupled group (an antithetic
pair; ARMS's ``K`` samples) formed at layer ``l``, and each member's ``g_l`` estimated by sampling
the later layers conditionally on it. Unbiased, because each member's estimate of ``g_l`` has the
right mean given the group and depends on no other member's noise. The draws are shared along a
*spine*: the last member of layer ``l``'s group is the prefix of layer ``l + 1``'s group, and its
``g_l`` is the mean ``f`` of every chain that continues it; the other members branch off and
are completed ancestrally. One unit costs ``(G - 1) L + 1`` model evaluations (``G`` the group
size): ``L + 1`` for ARM / DisARM, so ``n_samples`` is a multiple of ``L + 1`` there. Every chain
is marginally a draw of q, so the value is still the mean ELBO over all evaluations.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from bbvae.base import GenModel, InfNet
from bbvae.losses.base import Loss, log_mean_exp
from bbvae.losses.discrete import discrete_logits, learning_signal
from bbvae.losses.layered import layer_logits, layer_sizes_of, sample_layers


def _check_even(n_samples, name: str) -> None:
    if isinstance(n_samples, int) and not isinstance(n_samples, bool) and n_samples % 2:
        raise ValueError(
            f"{name}: expected an even n_samples (pairs of antithetic samples, 2 model evaluations "
            f"each), got {n_samples}; use ARMS for an odd number of samples"
        )


def _check_layered_samples(n_samples, unit: int, name: str) -> None:
    if isinstance(n_samples, int) and not isinstance(n_samples, bool) and n_samples % unit:
        raise ValueError(
            f"{name}: with a layered inf_net of {unit - 1} layers, expected n_samples to be a multiple of "
            f"{unit} (one antithetic pair per layer along a spine costs {unit} model evaluations), "
            f"got {n_samples}"
        )


def _broadcast(per_sample: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``[batch, K]`` viewed as ``[batch, K, 1, ...]`` to broadcast against ``like``."""
    return per_sample.reshape(*per_sample.shape, *([1] * (like.dim() - per_sample.dim())))


def _uniform(shape, like: torch.Tensor) -> torch.Tensor:
    finfo = torch.finfo(like.dtype)
    u = torch.rand(shape, dtype=like.dtype, device=like.device)
    return u.clamp(finfo.tiny, 1.0 - finfo.eps)


def dirichlet_copula_weight(logits: torch.Tensor, k: int) -> torch.Tensor:
    """``w = p (1 - p) / r`` of the Dirichlet copula of ``k >= 2`` samples, elementwise in ``logits``.

    ``r = P(b = 1, b' = 0)`` for two of the samples (see the module docstring), computed in log
    space so that it stays accurate for ``p`` near 0 or 1. Between ``1/2`` (never below) and 1.
    """
    log_1mp = F.logsigmoid(-logits)  # log(1 - p)
    m = log_1mp / (k - 1)  # log(1 - c)
    inner = 2.0 * torch.expm1(m)  # 1 - 2c - 1
    positive = inner > -1.0
    t = (k - 1) * torch.log1p(torch.where(positive, inner, torch.zeros_like(inner)))  # log (1-2c)^(k-1)
    # r / (1 - p) = 1 - (1 - 2c)^(k-1) / (1 - p) where 1 - 2c > 0, else 1.
    ratio = torch.where(positive, -torch.expm1(t - log_1mp), torch.ones_like(t))
    return torch.sigmoid(logits) / ratio


class _AntitheticBernoulli(Loss):
    """Shared estimate: draw coupled Bernoulli samples, score them, push the logits' gradient to q."""

    min_samples = 2

    def estimate(self, x: torch.Tensor, **context) -> tuple[torch.Tensor, torch.Tensor]:
        q = self.inf_net(x, **context)
        if layer_sizes_of(q) is not None:
            return self._layered_estimate(x, q)
        _, logits = discrete_logits(q, x, type(self).__name__, bernoulli_only=True)  # [batch, *latent]
        a = logits.detach()
        z, noise = self._draw(a, self.n_samples)  # [batch, K, *latent]
        log_q = q.log_prob(z)
        log_p = self.gen_model(x, z).log_prob(x, z)
        log_w = self.record(log_p, log_q)
        if getattr(self, "bound", "elbo") == "iwae":
            return self._iwae_estimate(log_w, z, noise, a, logits)
        f, usable = learning_signal(log_w)
        grad = self._logit_gradient(f, z, noise, a)  # [batch, *latent]
        grad = torch.where(_broadcast(usable.squeeze(1), grad), grad, 0.0)
        self.logit_gradient_ = grad
        objective = log_p.mean(dim=1) + (grad * logits).flatten(1).sum(dim=1)
        return log_w.detach().mean(dim=1), objective

    def _iwae_estimate(self, log_w, z, noise, a, logits):
        """The K-sample bound: the two halves of the pairs are two K-sample draws whose latents
        (all ``K * L`` of them) are antithetic; f of a half is its bound ``log mean_k w_k``."""
        n_pairs = log_w.shape[1] // 2
        halves = (log_w[:, :n_pairs], log_w[:, n_pairs:])  # [batch, K] each, with gradients
        f_first, f_second = (log_mean_exp(h.detach()) for h in halves)  # [batch]
        usable = torch.isfinite(f_first) & torch.isfinite(f_second)
        f = torch.cat(
            [f_first.unsqueeze(1).expand(-1, n_pairs), f_second.unsqueeze(1).expand(-1, n_pairs)], 1
        )
        f = torch.where(usable.unsqueeze(1), f, 0.0)
        # The K samples of a half share q's logits: their gradients add up (the pair estimators average).
        grad = n_pairs * self._logit_gradient(f, z, noise, a)
        self.logit_gradient_ = grad
        # p's gradient, and q's through the weights at fixed samples (not of mean zero for this bound).
        at_fixed = torch.where(usable, (log_mean_exp(halves[0]) + log_mean_exp(halves[1])) / 2, 0.0)
        objective = at_fixed + (grad * logits).flatten(1).sum(dim=1)
        return (f_first + f_second) / 2, objective

    def _layered_estimate(self, x: torch.Tensor, q) -> tuple[torch.Tensor, torch.Tensor]:
        """The layer-wise estimator for a layered q (module docstring); ``U`` units of groups of ``G``."""
        name = type(self).__name__
        sizes = layer_sizes_of(q)
        units, group = self._layout(len(sizes))
        n_off = group - 1  # members of a group that branch off the spine
        batch = x.shape[0]
        logits, draws, spine, chains = [], [], [], []
        for index, size in enumerate(sizes):
            a_graph = layer_logits(q, index, spine, batch, name)  # [batch, L_1] or [batch, U, L_l]
            a = a_graph.detach()
            if index == 0:
                a = a.unsqueeze(1).expand(batch, units, size)
            logits.append(a_graph)
            flat = a.reshape(batch * units, size)
            z, noise = self._draw(flat, group)  # [batch * U, G, L_l]: one group per unit
            draws.append((z, noise, flat))
            z = z.reshape(batch, units, group, size)
            # Branches: the earlier spine layers, an off member here, the later layers drawn afresh.
            width = units * n_off
            prefix = [s.unsqueeze(2).expand(-1, -1, n_off, -1).reshape(batch, width, -1) for s in spine]
            branch = sample_layers(q, [*prefix, z[:, :, :n_off].reshape(batch, width, size)], batch, name)
            chains.append(torch.cat(branch, dim=-1).reshape(batch, units, n_off, -1))
            spine.append(z[:, :, n_off])  # [batch, U, L_l]
        chains.append(torch.cat(spine, dim=-1).unsqueeze(2))  # the spine's own chain: [batch, U, 1, D]
        m = n_off * len(sizes) + 1  # evaluations per unit
        z_all = torch.cat(chains, dim=2).reshape(batch, units * m, -1)  # [batch, K, D], unit-major
        log_q = q.log_prob(z_all)
        log_p = self.gen_model(x, z_all).log_prob(x, z_all)
        log_w = self.record(log_p, log_q)
        f, usable = learning_signal(log_w)
        f = f.reshape(batch, units, m)
        objective = log_p.mean(dim=1)
        grads = []
        for index, (z, noise, flat) in enumerate(draws):
            start = index * n_off
            f_off = f[:, :, start : start + n_off]  # [batch, U, G - 1]
            f_spine = f[:, :, start + n_off :].mean(dim=2, keepdim=True)  # every chain past the spine member
            f_group = torch.cat([f_off, f_spine], dim=2).reshape(batch * units, group)
            grad = self._logit_gradient(f_group, z, noise, flat).reshape(batch, units, -1)
            grad = torch.where(usable.unsqueeze(2), grad, 0.0)
            if index == 0:  # shared logits: the units' estimates average
                grad = grad.mean(dim=1)  # [batch, L_1]
                objective = objective + (grad * logits[0]).sum(dim=-1)
            else:  # each unit's logits a_l(z_<l) get its own estimate, weighted 1/U
                grad = grad / units  # [batch, U, L_l]
                objective = objective + (grad * logits[index]).sum(dim=(1, 2))
            grads.append(grad)
        self.logit_gradient_ = tuple(grads)
        return log_w.detach().mean(dim=1), objective

    def _layout(self, n_layers: int) -> tuple[int, int]:
        """``(units, group size)`` of the layer-wise estimator for a q of ``n_layers`` layers."""
        raise NotImplementedError

    def _draw(self, a: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` coupled samples per row of logits ``a`` ``[batch, *latent]``.

        Returns ``(z [batch, n, *latent], noise)``.
        """
        raise NotImplementedError

    def _logit_gradient(self, f, z, noise, a) -> torch.Tensor:
        raise NotImplementedError


class _PairedBernoulli(_AntitheticBernoulli):
    """``K / 2`` independent antithetic pairs ``[u > sigmoid(-a)]``, ``[u < sigmoid(a)]``."""

    def __init__(self, inf_net: InfNet, gen_model: GenModel, n_samples: int = 2, bound: str = "elbo") -> None:
        name = type(self).__name__
        sizes = layer_sizes_of(inf_net)
        if sizes is None:
            _check_even(n_samples, name)
        else:
            _check_layered_samples(n_samples, len(sizes) + 1, name)
        super().__init__(inf_net, gen_model, n_samples)
        if bound not in ("elbo", "iwae"):
            raise ValueError(f"{name}: expected bound 'elbo' or 'iwae', got {bound!r}")
        if bound == "iwae" and sizes is not None:
            raise ValueError(
                f"{name}: bound='iwae' is implemented for a plain factorised Bernoulli q only; inf_net "
                f"follows the layered protocol (layer_sizes {list(sizes)}), for which only bound='elbo' "
                "is implemented (use VIMCO for the multi-sample bound)"
            )
        self.bound = bound
        self.importance_weighted = bound == "iwae"

    def _layout(self, n_layers):
        return self.n_samples // (n_layers + 1), 2

    def _draw(self, a, n=None):
        n_pairs = (self.n_samples if n is None else n) // 2
        expanded = a.unsqueeze(1).expand(a.shape[0], n_pairs, *a.shape[1:])
        u = _uniform(expanded.shape, a)  # [batch, P, *latent]
        first = (u > torch.sigmoid(-expanded)).to(a.dtype)  # [1 - u < p]
        second = (u < torch.sigmoid(expanded)).to(a.dtype)  # [u < p]
        return torch.cat([first, second], dim=1), u  # samples 0..P-1 and P..2P-1 pair up

    @staticmethod
    def _pairs(f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n_pairs = f.shape[1] // 2
        return f[:, :n_pairs], f[:, n_pairs:]


class ARM(_PairedBernoulli):
    """ARM (Yin & Zhou 2019): ``g = (f([u > sigmoid(-a)]) - f([u < sigmoid(a)])) (u - 1/2)``.

    ``n_samples`` (even) model evaluations per data point: ``K / 2`` independent pairs from
    uniforms ``u`` ``[batch, K/2, *latent]``, averaged. With a layered q of ``L`` layers (see the
    module docstring) ``n_samples`` is a multiple of ``L + 1``: ``K / (L + 1)`` independent units,
    each a pair per layer along a spine. Unbiased for the gradient of the ELBO
    ``E_q[log p(x, z) - log q(z|x)]`` with respect to q's logits (the explicit ``-grad log q``
    term, of mean zero, is left out); the value is the ELBO averaged over the ``K`` samples.

    Args:
        inf_net: q(z|x) whose ``distribution()`` is a Bernoulli (optionally ``Independent``), or a
            layered Bernoulli q (:class:`~bbvae.models.LayeredBernoulliInfNet`, or any q with
            ``layer_sizes`` and ``layer_logits``: :mod:`bbvae.losses.layered`).
        gen_model: p(x, z); it is only evaluated at discrete ``z``.
        n_samples: even number of model evaluations ``K >= 2`` (a multiple of ``L + 1`` for a
            layered q of ``L`` layers).
        bound: ``"elbo"`` (default) or ``"iwae"``: the ``K/2``-sample bound
            ``log mean_k w_k``. Its two draws of ``K/2`` samples are the two halves of the pairs,
            so every latent of one is antithetic to the same latent of the other, and the
            estimator is applied to the bound as a function of all ``K/2 * L`` latents. The value is
            the mean of the two draws' bounds. q also gets the bound's gradient at the fixed samples
            (through ``log q`` in the weights), as for VIMCO.

    Attributes:
        loss_history_, log_p_, log_q_, bound_: see :class:`~bbvae.losses.Loss`.
        logit_gradient_ (Tensor): ``[batch, *latent]`` the estimate of the ELBO's gradient with
            respect to q's logits, last call, detached. For a layered q, a tuple with one entry per
            layer: ``[batch, L_1]`` for the first (shared) logits, ``[batch, U, L_l]`` for the logits
            ``a_l(z_<l)`` of each of the ``U`` units' spine prefixes.
    """

    def _logit_gradient(self, f, z, noise, a):
        f_first, f_second = self._pairs(f)  # [batch, P] each
        return (_broadcast(f_first - f_second, noise) * (noise - 0.5)).mean(dim=1)


class DisARM(_PairedBernoulli):
    """DisARM (Dong, Mnih & Tucker 2020): ARM's pair of samples, with the noise integrated out.

    For the antithetic pair ``b = [u < p]``, ``b' = [1 - u < p]``:
    ``g_i = 1/2 (f(b) - f(b')) (-1)^(b'_i) [b_i != b'_i] sigmoid(|a_i|)``; it is never worse than
    ARM (it is ARM's estimator conditioned on the pair). ``K / 2`` independent pairs are averaged.
    See :class:`ARM` for the arguments; ``logit_gradient_`` likewise.
    """

    def _logit_gradient(self, f, z, noise, a):
        f_first, f_second = self._pairs(f)  # f(b'), f(b)
        z_first, z_second = self._pairs(z)
        diff = _broadcast(f_second - f_first, z_first) * (z_second - z_first)  # [batch, P, *latent]
        return 0.5 * torch.sigmoid(a.abs()) * diff.mean(dim=1)


class ARMS(_AntitheticBernoulli):
    """ARMS (Dimitriev & Zhou 2021): all pairs of ``K`` samples coupled by the Dirichlet copula.

    ``g_i = w_i / (K - 1) sum_k (f_k - mean_j f_j)(b_ki - p_i)`` with ``w_i`` from
    :func:`dirichlet_copula_weight`; with ``K = 2`` it equals DisARM with one pair, and it uses
    every pair of the ``K`` samples (an RLOO over negatively correlated samples). See the module
    docstring for the derivation.

    With a layered q of ``L`` layers (see the module docstring), each layer's group is ``G``
    coupled samples along one spine, ``n_samples = (G - 1) L + 1`` model evaluations.

    Args:
        inf_net, gen_model: see :class:`ARM`.
        n_samples: model evaluations ``K >= 2`` per data point (``(G - 1) L + 1`` with ``G >= 2``
            for a layered q of ``L`` layers: 3, 5, 7, ... for two layers).

    Attributes:
        logit_gradient_: see :class:`ARM`.
    """

    def __init__(self, inf_net: InfNet, gen_model: GenModel, n_samples: int = 4) -> None:
        sizes = layer_sizes_of(inf_net)
        if sizes is not None and isinstance(n_samples, int) and not isinstance(n_samples, bool):
            n_layers = len(sizes)
            if n_samples < n_layers + 1 or (n_samples - 1) % n_layers:
                raise ValueError(
                    f"ARMS: with a layered inf_net of {n_layers} layers, n_samples counts (G - 1) * "
                    f"{n_layers} + 1 model evaluations for groups of G >= 2 coupled samples per layer: "
                    f"expected one of {[(g - 1) * n_layers + 1 for g in range(2, 6)]}, ..., got {n_samples}"
                )
        super().__init__(inf_net, gen_model, n_samples)

    def _layout(self, n_layers):
        return 1, (self.n_samples - 1) // n_layers + 1

    def _draw(self, a, n=None):
        k = self.n_samples if n is None else n
        shape = (a.shape[0], k, *a.shape[1:])
        e = torch.empty(shape, dtype=a.dtype, device=a.device).exponential_()
        d = e / e.sum(dim=1, keepdim=True)  # Dirichlet(1, ..., 1) over the K samples
        # u_k = 1 - (1 - d_k)^(K-1) < p  <=>  log(1 - d_k) > log(1 - p) / (K - 1)
        z = (torch.log1p(-d) > F.logsigmoid(-a).unsqueeze(1) / (k - 1)).to(a.dtype)
        return z, d

    def _logit_gradient(self, f, z, noise, a):
        k = z.shape[1]
        centred = _broadcast(f - f.mean(dim=1, keepdim=True), z)
        p = torch.sigmoid(a).unsqueeze(1)
        return dirichlet_copula_weight(a, k) * (centred * (z - p)).sum(dim=1) / (k - 1)
