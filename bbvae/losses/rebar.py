"""REBAR (Tucker, Mnih, Maddison, Lawson & Sohl-Dickstein 2017) for Bernoulli and one-hot categorical latents.

A discrete sample is the argmax of a continuous one, ``b = H(z~)``: ``z~ = a + logit(u)`` and
``b = [z~ > 0]`` for a Bernoulli of logit ``a``; ``z~ = log softmax(a) + Gumbel`` and
``b = onehot(argmax z~)`` for a categorical. With ``z~|b`` a second continuous sample drawn from
its conditional given ``b`` (reparametrized with fresh noise ``v``) and a control variate ``c``
evaluated at relaxed samples, the gradient of ``E_q[f(b)]`` with respect to the logits is

``g = (f(b) - c(z~|b)) grad log q(b) + grad c(z~) - grad c(z~|b)``,

unbiased for any ``c`` (the last two terms are the pathwise gradients, through ``a``, of the two
expectations of ``c`` whose score-function difference the first term removes). REBAR's control
variate is ``c(z~) = eta * f(sigma_lambda(z~))``: the ELBO's signal evaluated at the Concrete
relaxation at temperature ``lambda`` (``sigmoid(z~ / lambda)``; ``softmax(z~ / lambda)``), with
the discrete log-masses written linearly in ``z`` so they extend to relaxed latents. ``eta`` and
``log lambda`` are parameters of the loss, trained by the same optimiser to minimise the
variance of ``g``: since ``E[g]`` does not depend on them, the gradient of ``E[|g|^2]`` is that
of the variance (the "variance-gradient trick"). The squared norm is taken of the gradient with
respect to the logits of each data point, averaged over the batch.

**Layered q** (``q(z_1|x) q(z_2|z_1) ... q(z_L|z_{L-1})``, the protocol of
:mod:`bbvae.losses.layered`). One hard chain ``b = (b_1, ..., b_L)`` is drawn from uniforms
``u_1, ..., u_L`` (``b_l = [a_l(b_<l) + logit(u_l) > 0]``), and the estimator above is applied
layer by layer: for layer ``l``, with ``b_<l`` fixed, ``f(b)`` is a function of ``b_l`` whose later
layers are drawn conditionally (with the fixed noise ``u_>l``), and the control variate is
``c_l(z~_l) = eta * f~(b_<l, s_l, s_>l)``: the relaxed signal at ``s_l = sigma_lambda(z~_l)``, with
the relaxation carried through the later layers, ``s_m = sigma_lambda(a_m(b_<l, s_l, .., s_m-1) +
logit(u_m))`` (the same noise as the hard chain, so ``c_l`` follows ``f``; continuous in ``z~_l``,
as the pathwise terms need). ``b_<l`` and ``u_>l`` are independent of layer ``l``'s noise, so each
layer's estimate is unbiased for its part of the gradient, ``J_l^T grad_{a_l} E[f | b_<l]``
(``J_l`` the Jacobian of ``a_l(b_<l)`` in q's parameters). A draw costs ``1 + 2 L`` evaluations of
p (the hard chain; ``z~_l`` and ``z~_l|b_l`` per layer). The variance proxy is the squared norm of
all layers' logit gradients.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from bbvae.base import GenModel, InfNet
from bbvae.losses.base import Loss
from bbvae.losses.concrete import _BERNOULLI, _check_temperature, discrete_log_prob
from bbvae.losses.discrete import discrete_logits, learning_signal, relaxed_log_joint, sum_latent_dims
from bbvae.losses.layered import layer_logits, layer_sizes_of


def _uniform(shape, like: torch.Tensor) -> torch.Tensor:
    finfo = torch.finfo(like.dtype)
    return torch.rand(shape, dtype=like.dtype, device=like.device).clamp(finfo.tiny, 1.0 - finfo.eps)


def continuous_sample(kind: str, a: torch.Tensor, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(z~, b)``: the continuous sample of logits ``a`` from uniforms ``u`` and its discrete ``b = H(z~)``.

    Shapes are those of ``a`` (categories last for ``"categorical"``); ``z~`` is differentiable in ``a``.
    """
    if kind == _BERNOULLI:
        z = a + torch.log(u) - torch.log1p(-u)
        return z, (z.detach() > 0).to(a.dtype)
    z = torch.log_softmax(a, dim=-1) - torch.log(-torch.log(u))
    return z, F.one_hot(z.detach().argmax(dim=-1), a.shape[-1]).to(a.dtype)


def conditional_sample(kind: str, a: torch.Tensor, b: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``z~ ~ p(z~ | H(z~) = b)`` from uniforms ``v``, reparametrized in the logits ``a``.

    Bernoulli: ``u = 1 - p + v p`` if ``b = 1``, ``u = v (1 - p)`` if ``b = 0``, then ``z~ = a + logit(u)``
    (all in log space). Categorical (``a`` normalised to ``log pi``): the argmax coordinate is a
    Gumbel of location ``logsumexp = 0``, ``-log(-log v_b)``, and every other one a Gumbel of
    location ``log pi_i`` truncated below it, ``-log(-log v_i / pi_i - log v_b)``.
    """
    if kind == _BERNOULLI:
        log_p, log_1mp = F.logsigmoid(a), F.logsigmoid(-a)
        log_v, log_1mv = torch.log(v), torch.log1p(-v)
        one = b > 0.5
        log_u = torch.where(one, torch.logaddexp(log_1mp, log_p + log_v), log_v + log_1mp)
        log_1mu = torch.where(one, log_p + log_1mv, torch.logaddexp(log_p, log_1mp + log_1mv))
        return a + log_u - log_1mu
    log_pi = torch.log_softmax(a, dim=-1)
    log_neg_log_v = torch.log(-torch.log(v))  # log(-log v)
    top = (log_neg_log_v * b).sum(dim=-1, keepdim=True)  # log(-log v_b)
    others = -torch.logaddexp(log_neg_log_v - log_pi, top)
    return torch.where(b > 0.5, -top, others)


def relax_sample(kind: str, z: torch.Tensor, temperature: torch.Tensor) -> torch.Tensor:
    """``sigma_lambda(z~)``: ``sigmoid(z~ / lambda)`` or ``softmax(z~ / lambda)`` (categories last)."""
    if kind == _BERNOULLI:
        return torch.sigmoid(z / temperature)
    return torch.softmax(z / temperature, dim=-1)


class REBAR(Loss):
    """REBAR estimator of the ELBO's gradient for Bernoulli and one-hot categorical latents.

    See the module docstring for the estimator. Each of the ``n_samples`` draws per data point
    costs three evaluations of ``gen_model`` (at ``b``, ``z~`` and ``z~|b``) and a second-order
    backward pass through it (for the variance gradient); the gradient is the mean of the draws'.
    p gets ``(1/K) sum_k grad log p(x, b_k)``; the value is the ELBO at the discrete samples.

    The generative model must accept relaxed latents (as for :class:`~bbvae.losses.Concrete`).
    With a Bernoulli / OneHotCategorical ``prior()`` the control variate uses the prior's
    log-mass linear in ``z``; without one it calls ``gen_model.log_prob(x, z)`` at the relaxed
    ``z`` (which must accept it).

    Args:
        inf_net: q(z|x) whose ``distribution()`` is a Bernoulli or OneHotCategorical (optionally
            ``Independent``), or a layered Bernoulli q of ``L`` layers
            (:class:`~bbvae.models.LayeredBernoulliInfNet`; see the module docstring).
        gen_model: p(x, z).
        n_samples: draws per data point (3 model evaluations each; ``1 + 2 L`` for a layered q).
        temperature: initial ``lambda > 0`` (trained; Tucker et al. start at 0.5).
        scale: initial ``eta`` (trained; 1 by default).
        learn_temperature, learn_scale: whether ``lambda`` / ``eta`` are trained (by the variance
            gradient, through ``loss.parameters()``); fixed otherwise.

    Attributes:
        loss_history_, log_p_, log_q_, bound_: see :class:`~bbvae.losses.Loss`.
        temperature_ (Tensor), scale_ (Tensor): the current ``lambda`` and ``eta`` (scalars).
        logit_gradient_ (Tensor): ``[batch, *latent]`` the estimate of the ELBO's gradient with
            respect to q's logits, last call, detached. For a layered q, a tuple per layer:
            ``[batch, L_1]``, then ``[batch, K, L_l]`` (the logits ``a_l(b_<l)`` of each draw).
        variance_ (Tensor): ``[batch]`` its squared norm per data point (the variance proxy that
            the control variate minimises), detached.
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
    ) -> None:
        super().__init__(inf_net, gen_model, n_samples)
        name = type(self).__name__
        _check_temperature(temperature, "temperature", name)
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale):
            raise TypeError(f"{name}: expected scale to be a finite float, got {scale!r}")
        for flag_name, flag in (("learn_temperature", learn_temperature), ("learn_scale", learn_scale)):
            if not isinstance(flag, bool):
                raise TypeError(f"{name}: expected {flag_name} to be a bool, got {type(flag).__name__}")
        like = _first_float_param(inf_net)  # the control variate lives where q's parameters do
        dtype = torch.get_default_dtype() if like is None else like.dtype
        device = None if like is None else like.device
        log_t = torch.tensor(math.log(temperature), dtype=dtype, device=device)
        eta = torch.tensor(float(scale), dtype=dtype, device=device)
        self.log_temperature = nn.Parameter(log_t, requires_grad=learn_temperature)
        self.scale = nn.Parameter(eta, requires_grad=learn_scale)

    @property
    def temperature_(self) -> torch.Tensor:
        return self.log_temperature.detach().exp()

    @property
    def scale_(self) -> torch.Tensor:
        return self.scale.detach()

    # ---------------------------------------------------------------------------- estimator
    def estimate(self, x: torch.Tensor, **context) -> tuple[torch.Tensor, torch.Tensor]:
        name = type(self).__name__
        q = self.inf_net(x, **context)
        if layer_sizes_of(q) is not None:
            return self._layered_estimate(x, q)
        kind, logits = discrete_logits(q, x, name)  # [batch, *latent]
        k = self.n_samples
        a_leaf = logits.detach().requires_grad_(torch.is_grad_enabled())
        a = a_leaf.unsqueeze(1).expand(x.shape[0], k, *logits.shape[1:])  # [batch, K, *latent]
        z_tilde, b = continuous_sample(kind, a, _uniform(a.shape, a))
        log_q = q.log_prob(b)
        log_p = self.gen_model(x, b).log_prob(x, b)
        log_w = self.record(log_p, log_q)
        bound = log_w.detach().mean(dim=1)
        if not torch.is_grad_enabled():
            return bound, bound
        f, usable = learning_signal(log_w)  # [batch, K]
        z_cond = conditional_sample(kind, a, b, _uniform(a.shape, a))
        c_tilde = self.control_variate(x, z_tilde, a, kind)  # [batch, K]
        c_cond = self.control_variate(x, z_cond, a, kind)
        # The estimate is differentiated once more (for the variance gradient) only if something trains.
        trains = any(p.requires_grad for p in self.control_variate_parameters())
        (path,) = torch.autograd.grad((c_tilde - c_cond).sum(), a_leaf, create_graph=trains)
        score = b - (torch.sigmoid(a) if kind == _BERNOULLI else torch.softmax(a, dim=-1)).detach()
        coef = (f - c_cond).reshape(*f.shape, *([1] * (score.dim() - 2)))
        grad = ((coef * score).sum(dim=1) + path) / k  # [batch, *latent]
        keep = usable.reshape(-1, *([1] * (grad.dim() - 1)))
        grad = torch.where(keep, grad, 0.0)
        variance = grad.square().flatten(1).sum(dim=1)  # [batch]
        self.logit_gradient_ = grad.detach()
        self.variance_ = variance.detach()
        objective = log_p.mean(dim=1) + (grad.detach() * logits).flatten(1).sum(dim=1)
        return bound, objective - self._variance_term(variance.mean())

    def _layered_estimate(self, x: torch.Tensor, q) -> tuple[torch.Tensor, torch.Tensor]:
        """The layer-wise estimator for a layered q (see the module docstring)."""
        name = type(self).__name__
        sizes = layer_sizes_of(q)
        k, batch = self.n_samples, x.shape[0]
        grad_on = torch.is_grad_enabled()
        logits, leaves, chain = [], [], _Chain([], [], [], [])
        for index, size in enumerate(sizes):
            a_graph = layer_logits(q, index, chain.hard, batch, name)  # [batch, L_1] or [batch, K, L_l]
            leaf = a_graph.detach().requires_grad_(grad_on)
            a = leaf.unsqueeze(1).expand(batch, k, size) if index == 0 else leaf  # [batch, K, L_l]
            u = _uniform(a.shape, a)
            z_tilde, b = continuous_sample(_BERNOULLI, a, u)
            logits.append(a_graph)
            leaves.append(leaf)
            chain.logits.append(a)
            chain.hard.append(b)
            chain.uniforms.append(u)
            chain.z_tilde.append(z_tilde)
        b = torch.cat(chain.hard, dim=-1)  # [batch, K, D]
        log_q = q.log_prob(b)
        log_p = self.gen_model(x, b).log_prob(x, b)
        log_w = self.record(log_p, log_q)
        bound = log_w.detach().mean(dim=1)
        if not grad_on:
            return bound, bound
        f, usable = learning_signal(log_w)  # [batch, K]
        trains = any(p.requires_grad for p in self.control_variate_parameters())
        objective = log_p.mean(dim=1)
        grads, variance = [], log_p.new_zeros(batch)
        for index, leaf in enumerate(leaves):
            a, b_l = chain.logits[index], chain.hard[index]
            z_cond = conditional_sample(_BERNOULLI, a, b_l, _uniform(a.shape, a))
            c_tilde = self._layer_control(x, q, index, chain.z_tilde[index], chain)  # [batch, K]
            c_cond = self._layer_control(x, q, index, z_cond, chain)
            (path,) = torch.autograd.grad((c_tilde - c_cond).sum(), leaf, create_graph=trains)
            coef = (f - c_cond).unsqueeze(-1)  # [batch, K, 1]
            per_draw = coef * (b_l - torch.sigmoid(a).detach())  # [batch, K, L_l]
            grad = ((per_draw.sum(dim=1) if index == 0 else per_draw) + path) / k
            grad = torch.where(usable.reshape(-1, *([1] * (grad.dim() - 1))), grad, 0.0)
            variance = variance + grad.square().flatten(1).sum(dim=1)
            objective = objective + (grad.detach() * logits[index]).flatten(1).sum(dim=1)
            grads.append(grad.detach())
        self.logit_gradient_ = tuple(grads)
        self.variance_ = variance.detach()
        return bound, objective - self._variance_term(variance.mean())

    def _layer_control(self, x: torch.Tensor, q, index: int, z: torch.Tensor, chain) -> torch.Tensor:
        """``c_l`` ``[batch, K]`` at layer ``index``'s continuous sample ``z`` ``[batch, K, L_l]``.

        The earlier layers are the hard chain's; the relaxation ``s_l`` is carried through the later
        layers with the hard chain's noise; the log-masses of q are linear in the relaxed values.
        """
        temperature = self.log_temperature.exp()
        s = relax_sample(_BERNOULLI, z, temperature)
        layers = [*chain.hard[:index], s]
        log_q = sum(
            discrete_log_prob(_BERNOULLI, a.detach(), h).sum(dim=-1)
            for a, h in zip(chain.logits[:index], chain.hard[:index])
        )
        log_q = log_q + discrete_log_prob(_BERNOULLI, chain.logits[index], s).sum(dim=-1)
        for later in range(index + 1, len(chain.hard)):
            a = layer_logits(q, later, layers, x.shape[0], type(self).__name__)
            u = chain.uniforms[later]
            s = relax_sample(_BERNOULLI, a + torch.log(u) - torch.log1p(-u), temperature)
            log_q = log_q + discrete_log_prob(_BERNOULLI, a, s).sum(dim=-1)
            layers.append(s)
        return self.relaxed_control(x, torch.cat(layers, dim=-1), log_q, _BERNOULLI)

    def control_variate(self, x: torch.Tensor, z: torch.Tensor, a: torch.Tensor, kind: str) -> torch.Tensor:
        """``c(z~)`` ``[batch, K]`` at continuous samples ``z`` ``[batch, K, *latent]`` (logits ``a``).

        REBAR's: ``eta * (log p(x, s) - log q(s|x))`` at ``s = sigma_lambda(z~)``, with the
        discrete log-masses linear in ``s``.
        """
        s = relax_sample(kind, z, self.log_temperature.exp())
        n_dims = s.dim() - 2 if kind == _BERNOULLI else s.dim() - 3
        log_q = sum_latent_dims(discrete_log_prob(kind, a, s), n_dims)
        return self.relaxed_control(x, s, log_q, kind)

    def relaxed_control(
        self, x: torch.Tensor, s: torch.Tensor, log_q: torch.Tensor, kind: str
    ) -> torch.Tensor:
        """The control variate ``[batch, K]`` at relaxed latents ``s`` with relaxed ``log q`` ``[batch, K]``.

        REBAR's: ``eta * (log p(x, s) - log q(s|x))``.
        """
        return self.scale * (relaxed_log_joint(self.gen_model, x, s, kind, type(self).__name__) - log_q)

    def _variance_term(self, variance: torch.Tensor) -> torch.Tensor:
        """A zero-valued scalar with ``variance``'s gradient for the control variate's parameters only.

        (Differentiating ``variance`` itself would also reach p's parameters through ``c``.)
        """
        params = [p for p in self.control_variate_parameters() if p.requires_grad]
        if not params or not variance.requires_grad:
            return variance.new_zeros(())
        grads = torch.autograd.grad(variance, params, allow_unused=True, retain_graph=False)
        term = variance.new_zeros(())
        for p, g in zip(params, grads):
            if g is not None:
                term = term + (g.detach() * p).sum()
        return term - term.detach()

    def control_variate_parameters(self):
        """The parameters the variance gradient trains: ``eta`` and ``log lambda`` here."""
        return [self.log_temperature, self.scale]


class _Chain(NamedTuple):
    """The hard chain of a layered draw, one entry per layer: logits ``[batch, K, L_l]`` (layer 0's
    expanded from its leaf), binary samples, their uniforms and continuous samples ``z~_l``."""

    logits: list
    hard: list
    uniforms: list
    z_tilde: list


def _first_float_param(module: nn.Module) -> torch.Tensor | None:
    for p in module.parameters():
        if p.is_floating_point():
            return p
    return None
