"""Estimators on a sigmoid belief net with two stochastic layers, against exact answers.

The model is ``x <- z_1 <- z_2`` with 3 + 2 Bernoulli latents (:class:`LayeredSigmoidBeliefNet`),
and q(z|x) = q(z_1|x) q(z_2|z_1) (:class:`LayeredBernoulliInfNet`), whose second layer depends
strongly on the first. The exact gradient of the ELBO for q's parameters sums over the 32
configurations of (z_1, z_2).

* The layered q's ancestral sampler matches its ``log_prob``; the model's prior is normalised and
  its ``exact_log_prob`` sums to one over all data configurations.
* Unbiasedness: the mean gradient over many draws of ARM, DisARM, ARMS, RLOO, REINFORCE, NVIL,
  REBAR and RELAX equals the exact ELBO gradient within 4 standard errors per coordinate (VIMCO:
  the exact gradient of the 2-sample bound).
* Plausibly wrong variants fail the same check: DisARM whose branches draw the second layer given
  another draw's first layer (ignoring the second layer's dependence on the first); REBAR whose
  control variate does not carry the relaxation's path through the second layer, or plugs in
  the hard second layer.

Fixed seeds throughout, float64, one thread.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

import bbvae.losses.arm as arm_module
import bbvae.losses.rebar as rebar_module
from bbvae.diagnostics import gradient_stats
from bbvae.evaluation import log_likelihood
from bbvae.losses import ARM, ARMS, ELBO, IWAE, NVIL, REBAR, RELAX, RLOO, RWS, VIMCO, Concrete, DisARM
from bbvae.losses.concrete import discrete_log_prob
from bbvae.models import LayeredBernoulliInfNet, LayeredSigmoidBeliefNet, all_binary_configurations

N_SE = 4.0  # tolerance in standard errors, per coordinate
SIZES = (3, 2)


def _randomize(module: nn.Module, std: float) -> None:
    with torch.no_grad():
        for param in module.parameters():
            param.add_(std * torch.randn_like(param))


def make_two_layer(x_dim=8, n_data=3, seed=0):
    torch.manual_seed(seed)
    p = LayeredSigmoidBeliefNet(SIZES, x_dim).double()
    _randomize(p, 1.0)
    x, _ = p.sample(n_data)
    q = LayeredBernoulliInfNet(x_dim, SIZES).double()
    _randomize(q.nets[0], 0.5)
    _randomize(q.nets[1], 2.0)  # q(z_2 | z_1) depends strongly on z_1
    configs = all_binary_configurations(sum(SIZES), like=x)  # [32, 5]
    return SimpleNamespace(p=p, q=q, x=x, configs=configs)


@pytest.fixture(scope="module")
def sbn2():
    return make_two_layer()


# ----------------------------------------------------------------------------------------- helpers
def flat_grad(value: torch.Tensor, params) -> torch.Tensor:
    grads = torch.autograd.grad(value, params, allow_unused=True)
    return torch.cat(
        [(g if g is not None else torch.zeros_like(p)).reshape(-1) for g, p in zip(grads, params)]
    )


def enumerated(model):
    """``(log_q, log_w)``, each ``[batch, 32]``, over every configuration (differentiable)."""
    z = model.configs.unsqueeze(0).expand(model.x.shape[0], *model.configs.shape)
    log_q = model.q(model.x).log_prob(z)
    return log_q, model.p(model.x, z).log_prob(model.x, z) - log_q


def exact_elbo_gradient(model) -> torch.Tensor:
    log_q, log_w = enumerated(model)
    return flat_grad((log_q.exp() * log_w).sum(dim=1).mean(), list(model.q.parameters()))


def exact_iwae2_gradient(model) -> torch.Tensor:
    log_q, log_w = enumerated(model)
    pair_bound = torch.logaddexp(log_w.unsqueeze(2), log_w.unsqueeze(1)) - math.log(2)  # [B, C, C]
    pair_q = (log_q.unsqueeze(2) + log_q.unsqueeze(1)).exp()
    return flat_grad((pair_q * pair_bound).sum(dim=(1, 2)).mean(), list(model.q.parameters()))


def z_scores(loss, model, exact=exact_elbo_gradient, n_rep=200, n_calls=100, seed=1) -> torch.Tensor:
    """``(mean - exact) / SE`` of q's gradient of ``-loss`` over ``n_calls`` calls on replicated rows."""
    torch.manual_seed(seed)
    params = list(model.q.parameters())
    xr = model.x.repeat(n_rep, 1)
    draws = torch.stack([flat_grad(-loss(xr), params) for _ in range(n_calls)])  # [n_calls, P]
    mean, se = draws.mean(0), draws.std(0) / math.sqrt(n_calls)
    reference = exact(model)
    positive = se > 0  # weights of pixels that are 0 in every data point get no gradient at all
    assert positive.sum() > 20 and torch.allclose(mean[~positive], reference[~positive])
    return (mean - reference)[positive] / se[positive]


# ------------------------------------------------------------------------------------ the models
def test_layered_q_samples_match_its_log_prob(sbn2):
    q, x, configs = sbn2.q, sbn2.x, sbn2.configs
    torch.manual_seed(0)
    n = 40_000
    z = q(x).sample(n)  # [3, n, 5]
    assert z.shape == (3, n, 5) and set(z.unique().tolist()) <= {0.0, 1.0}
    codes = (z * 2 ** torch.arange(5, dtype=z.dtype)).sum(-1).long()  # the index into configs
    freq = torch.stack([torch.bincount(c, minlength=32) for c in codes]).double() / n  # [3, 32]
    prob = q.log_prob(configs.unsqueeze(0).expand(3, -1, -1)).exp()  # [3, 32]
    assert torch.allclose(prob.sum(1), torch.ones(3, dtype=prob.dtype))
    assert ((freq - prob).abs() <= N_SE * (prob * (1 - prob) / n).sqrt() + 1e-12).all()
    # and the sampler really draws z_2 given z_1 (a q without that dependence fails the line above)
    wrong = prob.reshape(3, 4, 8).sum(1, keepdim=True) * prob.reshape(3, 4, 8).sum(2, keepdim=True)
    assert ((freq.reshape(3, 4, 8) - wrong).abs() > N_SE * (wrong * (1 - wrong) / n).sqrt()).any()


def test_layered_sbn_is_normalised_and_samples_its_marginal():
    torch.manual_seed(0)
    p = LayeredSigmoidBeliefNet((3, 2), x_dim=4).double()
    _randomize(p, 1.5)
    xs = all_binary_configurations(4, like=p.prior_logits)  # [16, 4]
    log_px = p.exact_log_prob(xs)
    assert torch.allclose(log_px.logsumexp(0), torch.zeros((), dtype=log_px.dtype))
    z = all_binary_configurations(5, like=xs).unsqueeze(0)  # [1, 32, 5]
    p(xs[:1], z)
    assert torch.allclose(p.log_prior(z).logsumexp(1), torch.zeros(1, dtype=xs.dtype))
    n = 40_000
    x, z = p.sample(n)
    assert x.shape == (n, 4) and z.shape == (n, 5)
    freq = torch.bincount((x * 2 ** torch.arange(4, dtype=x.dtype)).sum(-1).long(), minlength=16) / n
    prob = log_px.exp()
    assert ((freq - prob).abs() <= N_SE * (prob * (1 - prob) / n).sqrt()).all()


def test_one_layer_layered_sbn_equals_the_sigmoid_belief_net():
    from bbvae.models import SigmoidBeliefNet

    torch.manual_seed(0)
    one = SigmoidBeliefNet(4, 6).double()
    _randomize(one, 1.0)
    layered = LayeredSigmoidBeliefNet((4,), 6).double()
    layered.load_state_dict(one.state_dict())
    x = torch.bernoulli(torch.full((5, 6), 0.5, dtype=torch.float64))
    assert torch.allclose(layered.exact_log_prob(x), one.exact_log_prob(x))


def test_bad_layer_sizes_are_refused():
    with pytest.raises(TypeError, match="layer_sizes"):
        LayeredBernoulliInfNet(8, 3)
    with pytest.raises(ValueError, match=r"layer_sizes\[1\]"):
        LayeredSigmoidBeliefNet((3, 0), 8)
    p = LayeredSigmoidBeliefNet((3, 2), 8)
    with pytest.raises(ValueError, match=r"expected z of shape \[batch, n_samples, 5\]"):
        p(torch.zeros(2, 8), torch.zeros(2, 1, 4))
    with pytest.raises(ValueError, match="enumeration needs"):
        LayeredSigmoidBeliefNet((15, 10), 8).exact_log_prob(torch.zeros(1, 8))


# ----------------------------------------------------------------------------------- unbiasedness
ESTIMATORS = {
    "ARM-6": lambda q, p: ARM(q, p, n_samples=6),
    "DisARM-6": lambda q, p: DisARM(q, p, n_samples=6),
    "DisARM-3": lambda q, p: DisARM(q, p, n_samples=3),
    "ARMS-3": lambda q, p: ARMS(q, p, n_samples=3),  # groups of 2 per layer
    "ARMS-5": lambda q, p: ARMS(q, p, n_samples=5),  # groups of 3 per layer
    "RLOO": lambda q, p: RLOO(q, p, n_samples=4),
    "REINFORCE": lambda q, p: ELBO(q, p, n_samples=4, estimator="score"),
    "NVIL": lambda q, p: NVIL(q, p, n_samples=4, normalize=False),
    "REBAR": lambda q, p: REBAR(q, p),
    "RELAX": lambda q, p: RELAX(q, p),
}
#: Fewer, larger calls for the estimators whose calls cost more (second-order backward passes).
DRAWS = {"REBAR": {"n_calls": 50}, "RELAX": {"n_calls": 50}, "REINFORCE": {"n_rep": 400}}


@pytest.mark.parametrize("name", list(ESTIMATORS))
def test_estimators_are_unbiased_for_the_two_layer_elbo_gradient(sbn2, name):
    loss = ESTIMATORS[name](sbn2.q, sbn2.p)
    if isinstance(loss, RELAX):  # a non-zero surrogate, so that its control variate is really tested
        torch.manual_seed(3)
        loss.prepare(sbn2.x)
        _randomize(loss.surrogate_net_, 0.3)
    z = z_scores(loss, sbn2, **DRAWS.get(name, {}))
    assert z.abs().max() < N_SE, f"{name}: max |z| = {z.abs().max():.2f}"


def test_vimco_is_unbiased_for_the_two_layer_two_sample_bound(sbn2):
    z = z_scores(VIMCO(sbn2.q, sbn2.p, n_samples=2), sbn2, exact=exact_iwae2_gradient)
    assert z.abs().max() < N_SE, f"max |z| = {z.abs().max():.2f}"


def test_wrong_disarm_ignoring_the_second_layer_s_dependence_fails(sbn2, monkeypatch):
    # The branch that leaves the spine at layer 1 must draw z_2 given its own z_1; here it is drawn
    # given the z_1 of another unit's branch (an independent draw): E[f | z_1] is then wrong.
    original = arm_module.sample_layers

    def given_another_first_layer(q, prefix, batch, where):
        rolled = [*prefix[:-1], prefix[-1].roll(1, dims=1)]
        return [*prefix, *original(q, rolled, batch, where)[len(prefix) :]]

    monkeypatch.setattr(arm_module, "sample_layers", given_another_first_layer)
    z = z_scores(DisARM(sbn2.q, sbn2.p, n_samples=6), sbn2, n_rep=800)  # 4x the real check's draws
    assert z.abs().max() > 2 * N_SE, f"max |z| = {z.abs().max():.2f}: the check has no power"


def test_wrong_rebar_without_the_path_through_the_second_layer_fails(sbn2, monkeypatch):
    # Layer 1's control variate is a function of z~_1 also through q(z_2 | s_1): detaching that
    # path (treating the second layer as independent of the first) drops part of grad E[c].
    original = rebar_module.layer_logits

    def detached(q, index, previous, batch, where):
        return original(q, index, [v.detach() for v in previous], batch, where)

    monkeypatch.setattr(rebar_module, "layer_logits", detached)
    z = z_scores(REBAR(sbn2.q, sbn2.p, temperature=1.0), sbn2, n_rep=400)
    assert z.abs().max() > 2 * N_SE, f"max |z| = {z.abs().max():.2f}: the check has no power"


class REBARHardSecondLayer(REBAR):
    """REBAR whose layer-l control variate plugs in the hard later layers (a jump at z~_l = 0)."""

    def _layer_control(self, x, q, index, z, chain):
        s = rebar_module.relax_sample("bernoulli", z, self.log_temperature.exp())
        layers = [*chain.hard[:index], s, *chain.hard[index + 1 :]]
        log_q = sum(
            discrete_log_prob("bernoulli", a.detach(), h).sum(-1)
            for j, (a, h) in enumerate(zip(chain.logits, chain.hard))
            if j != index
        )
        log_q = log_q + discrete_log_prob("bernoulli", chain.logits[index], s).sum(-1)
        return self.relaxed_control(x, torch.cat(layers, dim=-1), log_q, "bernoulli")


def test_wrong_rebar_with_the_hard_second_layer_in_its_control_variate_fails(sbn2):
    z = z_scores(REBARHardSecondLayer(sbn2.q, sbn2.p, temperature=1.0), sbn2, n_rep=400)
    assert z.abs().max() > 2 * N_SE, f"max |z| = {z.abs().max():.2f}: the check has no power"


# ---------------------------------------------------------------------------------- API checks
def test_layered_losses_record_history_shapes_and_gradient_stats(sbn2):
    torch.manual_seed(0)
    losses = (DisARM(sbn2.q, sbn2.p, n_samples=6), ARMS(sbn2.q, sbn2.p, n_samples=5), REBAR(sbn2.q, sbn2.p))
    for loss in losses:
        values = [loss(sbn2.x) for _ in range(2)]
        assert loss.loss_history_ == pytest.approx([float(v.detach()) for v in values])
        assert loss.log_p_.shape == (3, loss.n_samples if not isinstance(loss, REBAR) else 1)
        grads = loss.logit_gradient_
        assert isinstance(grads, tuple) and len(grads) == 2 and grads[0].shape == (3, 3)
        assert grads[1].shape[0] == 3 and grads[1].shape[-1] == 2
        stats = gradient_stats(loss, sbn2.x, 4)
        assert math.isfinite(stats["inf_net"].total_variance) and stats["inf_net"].total_variance > 0
    assert log_likelihood(sbn2.q, sbn2.p, sbn2.x, n_samples=50).shape == (3,)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_layered_estimators_follow_the_input_dtype(dtype):
    torch.manual_seed(0)
    q = LayeredBernoulliInfNet(6, (3, 2), hidden=(5,)).to(dtype)
    p = LayeredSigmoidBeliefNet((3, 2), 6, hidden=(5,)).to(dtype)
    x = torch.bernoulli(torch.full((4, 6), 0.5, dtype=dtype))
    for loss in (ARM(q, p, 3), DisARM(q, p, 6), ARMS(q, p, 5), REBAR(q, p, 1), RELAX(q, p, 2), RWS(q, p, 3)):
        loss.prepare(x)
        value = loss(x)
        value.backward()
        assert value.dtype == dtype and torch.isfinite(value)
        assert all(torch.isfinite(param.grad).all() for param in q.parameters() if param.grad is not None)
        q.zero_grad()
        p.zero_grad()


def test_layered_q_is_refused_with_clear_messages(sbn2):
    q, p = sbn2.q, sbn2.p
    with pytest.raises(ValueError, match=r"multiple of 3 .* got 4"):
        DisARM(q, p, n_samples=4)
    with pytest.raises(ValueError, match=r"ARMS: with a layered inf_net of 2 layers.*got 4"):
        ARMS(q, p, n_samples=4)
    with pytest.raises(ValueError, match="bound='iwae' is implemented for a plain factorised Bernoulli"):
        ARM(q, p, n_samples=6, bound="iwae")
    with pytest.raises(TypeError, match="has no distribution"):
        Concrete(q, p)(sbn2.x)
    with pytest.raises(TypeError, match="reparametrizable"):
        IWAE(q, p, n_samples=2)(sbn2.x)

    class BadLayers(LayeredBernoulliInfNet):
        def layer_logits(self, index, previous):
            return super().layer_logits(index, previous)[..., :1]  # one logit too few

    bad = BadLayers(8, SIZES).double()
    with pytest.raises(ValueError, match=r"layer_logits\(0, \.\.\.\) of shape \[3, 3\]"):
        DisARM(bad, p, n_samples=3)(sbn2.x)
