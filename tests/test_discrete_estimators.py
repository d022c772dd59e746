"""Estimators for discrete latents (ARM, DisARM, ARMS, RLOO, REBAR, RELAX) against exact answers.

* Unbiasedness: the mean gradient for q's parameters over many draws equals the exact gradient of
  the ELBO, computed by enumerating the latents of a small sigmoid belief net (5 Bernoulli latents)
  and of one 5-class categorical latent, within 4 standard errors per coordinate; a plausibly wrong
  variant of each estimator fails the same check (so the check has power).
* Variance: at equal numbers of model evaluations, below REINFORCE with a running-mean baseline
  (NVIL without its network and normalisation); DisARM below ARM; REBAR's and RELAX's variance falls
  as their control variates train.

Fixed seeds throughout, float64, one thread.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn
from torch.distributions import Bernoulli, Independent, OneHotCategorical

import bbvae.losses.rebar as rebar_module
from bbvae.base import GenModel, InfNet
from bbvae.diagnostics import gradient_stats
from bbvae.losses import ARM, ARMS, NVIL, REBAR, RELAX, RLOO, DisARM
from bbvae.losses.arm import dirichlet_copula_weight
from bbvae.models import BernoulliInfNet, SigmoidBeliefNet, all_binary_configurations

N_SE = 4.0  # tolerance in standard errors, per coordinate


# ------------------------------------------------------------------------------------------ models
class CategoricalInfNet(InfNet):
    """q(z|x): one categorical of ``n_cats`` classes, one-hot latents ``[n_cats]``."""

    def __init__(self, x_dim: int, n_cats: int) -> None:
        super().__init__()
        self.net = nn.Linear(x_dim, n_cats)

    def forward(self, x):
        return {"logits": self.net(x)}

    def distribution(self):
        return OneHotCategorical(logits=self.params_["logits"])


class CategoricalGenModel(GenModel):
    """p(z) a learned categorical; p(x|z) Bernoulli with logits linear in the one-hot z."""

    def __init__(self, n_cats: int, x_dim: int) -> None:
        super().__init__()
        self.prior_logits = nn.Parameter(torch.randn(n_cats))
        self.net = nn.Linear(n_cats, x_dim)

    def forward(self, x, z):
        return {"logits": self.net(z)}

    def prior(self):
        return OneHotCategorical(logits=self.prior_logits)

    def likelihood(self):
        return Independent(Bernoulli(logits=self.params_["logits"]), 1)


def _randomize(module: nn.Module, std: float) -> None:
    with torch.no_grad():
        for param in module.parameters():
            param.add_(std * torch.randn_like(param))


def make_sbn(n_latent=5, x_dim=8, n_data=3, seed=0):
    torch.manual_seed(seed)
    p = SigmoidBeliefNet(n_latent, x_dim).double()
    _randomize(p, 0.8)
    x, _ = p.sample(n_data)
    q = BernoulliInfNet(x_dim, n_latent).double()
    _randomize(q, 0.5)
    configs = all_binary_configurations(n_latent, like=x)  # [2^L, L]
    return SimpleNamespace(p=p, q=q, x=x, configs=configs)


def make_categorical(n_cats=5, x_dim=8, n_data=3, seed=0):
    torch.manual_seed(seed)
    p = CategoricalGenModel(n_cats, x_dim).double()
    _randomize(p, 1.0)
    x, _ = p.sample(n_data)
    q = CategoricalInfNet(x_dim, n_cats).double()
    configs = torch.eye(n_cats, dtype=x.dtype)  # [C, C]
    return SimpleNamespace(p=p, q=q, x=x, configs=configs)


@pytest.fixture(scope="module")
def sbn():
    return make_sbn()


@pytest.fixture(scope="module")
def categorical():
    return make_categorical()


# ----------------------------------------------------------------------------------------- helpers
def flat_grad(value: torch.Tensor, params) -> torch.Tensor:
    grads = torch.autograd.grad(value, params, allow_unused=True)
    return torch.cat(
        [(g if g is not None else torch.zeros_like(p)).reshape(-1) for g, p in zip(grads, params)]
    )


def exact_elbo_gradient(model) -> torch.Tensor:
    """Gradient of the batch-mean ELBO for q's parameters, by enumeration: ``[P]``."""
    x = model.x
    z = model.configs.unsqueeze(0).expand(x.shape[0], *model.configs.shape)
    log_q = model.q(x).log_prob(z)
    log_p = model.p(x, z).log_prob(x, z)
    elbo = (log_q.exp() * (log_p - log_q)).sum(dim=1).mean()
    return flat_grad(elbo, list(model.q.parameters()))


def mean_gradient(loss, model, n_rep=200, n_calls=100, seed=1):
    """Mean of q's gradient of ``-loss`` and its standard error, ``[P]`` each.

    Each call replicates the rows ``n_rep`` times (an average of ``n_rep`` independent draws).
    """
    torch.manual_seed(seed)
    params = list(model.q.parameters())
    xr = model.x.repeat(n_rep, 1)
    draws = torch.stack([flat_grad(-loss(xr), params) for _ in range(n_calls)])  # [n_calls, P]
    return draws.mean(0), draws.std(0) / math.sqrt(n_calls)


def z_scores(loss, model, **kwargs) -> torch.Tensor:
    """``(mean - exact) / SE`` over the coordinates with a positive SE (others must match exactly)."""
    mean, se = mean_gradient(loss, model, **kwargs)
    exact = exact_elbo_gradient(model)
    positive = se > 0
    assert torch.allclose(mean[~positive], exact[~positive])
    return (mean - exact)[positive] / se[positive]


def total_variance(loss, x, params, n_draws=200, warmup=5, seed=1):
    """``(trace of Cov[grad], its standard error)`` of q's gradient over independent calls."""
    torch.manual_seed(seed)
    for _ in range(warmup):  # lets NVIL's running mean settle
        loss(x)
    draws = torch.stack([flat_grad(-loss(x), params) for _ in range(n_draws)])  # [n, P]
    sq = (draws - draws.mean(0)).square().sum(1)  # [n]
    return float(sq.sum() / (n_draws - 1)), float(sq.std() / math.sqrt(n_draws))


# ----------------------------------------------------------------------------------- unbiasedness
BERNOULLI = {
    "ARM": lambda q, p: ARM(q, p, n_samples=4),
    "DisARM": lambda q, p: DisARM(q, p, n_samples=4),
    "ARMS-4": lambda q, p: ARMS(q, p, n_samples=4),
    "ARMS-3": lambda q, p: ARMS(q, p, n_samples=3),
    "RLOO": lambda q, p: RLOO(q, p, n_samples=4),
    "REBAR": lambda q, p: REBAR(q, p),
    "RELAX": lambda q, p: RELAX(q, p),
}
CATEGORICAL = {
    "RLOO": lambda q, p: RLOO(q, p, n_samples=3),
    "REBAR": lambda q, p: REBAR(q, p, temperature=1.0),
    "RELAX": lambda q, p: RELAX(q, p),
}


#: Fewer, larger calls for the estimators whose calls cost more (second-order backward passes).
DRAWS = {"REBAR": {"n_rep": 200, "n_calls": 50}, "RELAX": {"n_rep": 200, "n_calls": 50}}


def _perturb_surrogate(loss, model) -> None:
    """Give RELAX's surrogate a non-zero output, so that its control variate is really tested."""
    if isinstance(loss, RELAX):
        torch.manual_seed(3)
        loss.prepare(model.x)
        _randomize(loss.surrogate_net_, 0.3)


@pytest.mark.parametrize("name", list(BERNOULLI))
def test_bernoulli_estimators_are_unbiased_for_the_elbo_gradient(sbn, name):
    loss = BERNOULLI[name](sbn.q, sbn.p)
    _perturb_surrogate(loss, sbn)
    z = z_scores(loss, sbn, **DRAWS.get(name, {}))
    assert z.abs().max() < N_SE, f"{name}: max |z| = {z.abs().max():.2f}"


@pytest.mark.parametrize("name", list(CATEGORICAL))
def test_categorical_estimators_are_unbiased_for_the_elbo_gradient(categorical, name):
    loss = CATEGORICAL[name](categorical.q, categorical.p)
    _perturb_surrogate(loss, categorical)
    z = z_scores(loss, categorical, **DRAWS.get(name, {}))
    assert z.abs().max() < N_SE, f"{name}: max |z| = {z.abs().max():.2f}"


# Plausibly wrong variants: each must fail the same check, so the check can see such bugs.
class ARMSwappedPair(ARM):
    """ARM with the two samples of a pair swapped (a sign error)."""

    def _logit_gradient(self, f, z, noise, a):
        return -super()._logit_gradient(f, z, noise, a)


class DisARMWithoutWeight(DisARM):
    """DisARM without its ``sigmoid(|a|)`` factor."""

    def _logit_gradient(self, f, z, noise, a):
        return super()._logit_gradient(f, z, noise, a) / torch.sigmoid(a.abs())


class ARMSIgnoringCoupling(ARMS):
    """ARMS that treats its coupled samples as independent (``w = 1``: RLOO's formula)."""

    def _logit_gradient(self, f, z, noise, a):
        return super()._logit_gradient(f, z, noise, a) / dirichlet_copula_weight(a, self.n_samples)


class RLOOWithOwnSample(RLOO):
    """RLOO whose baseline includes the sample itself: ``(f_k - mean_j f_j) / K`` (shrunk by (K-1)/K)."""

    def estimate(self, x, **context):
        q = self.inf_net(x, **context)
        z = q.sample(self.n_samples)
        log_q = q.log_prob(z)
        log_p = self.gen_model(x, z).log_prob(x, z)
        f = self.record(log_p, log_q).detach()
        signal = (f - f.mean(dim=1, keepdim=True)) / self.n_samples
        return f.mean(dim=1), log_p.mean(dim=1) + (signal * log_q).sum(dim=1)


WRONG_BERNOULLI = {
    "ARM swapped": lambda q, p: ARMSwappedPair(q, p, n_samples=4),
    "DisARM no weight": lambda q, p: DisARMWithoutWeight(q, p, n_samples=4),
    "ARMS as independent": lambda q, p: ARMSIgnoringCoupling(q, p, n_samples=4),
    "RLOO own sample": lambda q, p: RLOOWithOwnSample(q, p, n_samples=2),
}


@pytest.mark.parametrize("name", list(WRONG_BERNOULLI))
def test_wrong_variants_fail_the_unbiasedness_check(sbn, name):
    # A quarter of the draws of the real check already puts these far outside it.
    z = z_scores(WRONG_BERNOULLI[name](sbn.q, sbn.p), sbn, n_rep=100, n_calls=50)
    assert z.abs().max() > 2 * N_SE, f"{name}: max |z| = {z.abs().max():.2f}: the check has no power"


@pytest.mark.parametrize("kind", ["bernoulli", "categorical"])
def test_rebar_without_the_conditional_path_gradient_is_biased(sbn, categorical, kind, monkeypatch):
    # Forgetting to reparametrize z~|b (detaching it) drops part of grad E[c(z~|b)]: biased.
    original = rebar_module.conditional_sample
    monkeypatch.setattr(rebar_module, "conditional_sample", lambda *args: original(*args).detach())
    model = sbn if kind == "bernoulli" else categorical
    z = z_scores(REBAR(model.q, model.p, temperature=1.0), model, n_rep=100, n_calls=50)
    assert z.abs().max() > 2 * N_SE


# ---------------------------------------------------------------------------------------- variance
@pytest.fixture(scope="module")
def wide_sbn():
    """16 data points of 30 pixels: their ELBOs differ, as real data's do."""
    return make_sbn(n_latent=5, x_dim=30, n_data=16, seed=0)


EVALUATIONS = 6  # model evaluations per data point and call
EQUAL_COST = {
    "DisARM": lambda q, p: DisARM(q, p, n_samples=EVALUATIONS),
    "ARMS": lambda q, p: ARMS(q, p, n_samples=EVALUATIONS),
    "RLOO": lambda q, p: RLOO(q, p, n_samples=EVALUATIONS),
    "REBAR": lambda q, p: REBAR(q, p, n_samples=EVALUATIONS // 3),  # 3 evaluations per draw
    "RELAX": lambda q, p: RELAX(q, p, n_samples=EVALUATIONS // 3),
}


@pytest.fixture(scope="module")
def reinforce_variance(wide_sbn):
    loss = NVIL(wide_sbn.q, wide_sbn.p, n_samples=EVALUATIONS, baseline=False, normalize=False)
    return total_variance(loss, wide_sbn.x, list(wide_sbn.q.parameters()))


@pytest.mark.parametrize("name", list(EQUAL_COST))
def test_variance_is_below_reinforce_with_a_running_mean_at_equal_evaluations(
    wide_sbn, reinforce_variance, name
):
    loss = EQUAL_COST[name](wide_sbn.q, wide_sbn.p)
    var, se = total_variance(loss, wide_sbn.x, list(wide_sbn.q.parameters()))
    ref, ref_se = reinforce_variance
    assert var + N_SE * math.hypot(se, ref_se) < ref, (
        f"{name}: {var:.3f} +- {se:.3f} vs {ref:.3f} +- {ref_se:.3f}"
    )


def test_disarm_has_lower_variance_than_arm(wide_sbn):
    # DisARM is ARM's estimator conditioned on the pair of samples: never more variance.
    params = list(wide_sbn.q.parameters())
    arm, arm_se = total_variance(ARM(wide_sbn.q, wide_sbn.p, n_samples=EVALUATIONS), wide_sbn.x, params)
    dis, dis_se = total_variance(DisARM(wide_sbn.q, wide_sbn.p, n_samples=EVALUATIONS), wide_sbn.x, params)
    assert dis + N_SE * math.hypot(dis_se, arm_se) < arm


def _train_control_variate(loss, x, steps, lr=0.05):
    opt = torch.optim.Adam(loss.control_variate_parameters(), lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        loss(x).backward()
        opt.step()


@pytest.mark.parametrize("kind", ["bernoulli", "categorical"])
@pytest.mark.parametrize("estimator", [REBAR, RELAX])
def test_variance_falls_as_the_control_variate_trains(sbn, categorical, kind, estimator):
    model = sbn if kind == "bernoulli" else categorical
    x = model.x.repeat(4, 1)  # 12 rows
    params = list(model.q.parameters())
    # eta = 0: the control variate starts at zero (REINFORCE without a baseline).
    torch.manual_seed(0)
    loss = estimator(model.q, model.p, temperature=2.0, scale=0.0)
    if isinstance(loss, RELAX):
        loss.prepare(x)
    q_before = [p.detach().clone() for p in params]
    variances = [total_variance(loss, x, params, n_draws=50)]
    for _ in range(2):
        _train_control_variate(loss, x, steps=25, lr=0.1)
        variances.append(total_variance(loss, x, params, n_draws=50))
    assert all(torch.equal(a, b) for a, b in zip(q_before, params))  # only the control variate trained
    (v0, se0), (v1, se1), (v2, se2) = variances
    assert v1 + N_SE * math.hypot(se0, se1) < v0, variances
    assert v2 < v0 / 2, variances
    assert float(loss.scale_) > 0.1  # eta moved away from zero


# ---------------------------------------------------------------------------------- the copula
@pytest.mark.parametrize("k", [2, 3, 5])
def test_dirichlet_copula_weight_matches_the_simulated_coupling(k):
    logits = torch.tensor([-3.0, -0.7, 0.0, 0.4, 2.5], dtype=torch.float64)
    p = torch.sigmoid(logits)
    torch.manual_seed(0)
    n = 200_000
    loss = ARMS.__new__(ARMS)
    loss.n_samples = k
    b, _ = ARMS._draw(loss, logits.expand(n, -1))  # [n, k, 5]
    freq = b.mean(dim=(0, 1))
    assert ((freq - p).abs() < N_SE * (p * (1 - p) / n).sqrt()).all()  # marginals are q
    r_hat = (b[:, 0] * (1 - b[:, 1])).mean(0)  # P(b_1 = 1, b_2 = 0)
    r = p * (1 - p) / dirichlet_copula_weight(logits, k)
    assert ((r_hat - r).abs() < N_SE * (r * (1 - r) / n).sqrt()).all()
    if k == 2:
        assert torch.allclose(dirichlet_copula_weight(logits, 2), torch.sigmoid(logits.abs()))
    # accurate far in the tails, float32 included
    tails = torch.tensor([-30.0, -12.0, 12.0, 30.0])
    w = dirichlet_copula_weight(tails, k)
    assert torch.isfinite(w).all() and (w >= 0.5).all() and (w <= 1.0 + 1e-6).all()


# ---------------------------------------------------------------------------------- API checks
ALL = {
    **BERNOULLI,
    "RELAX-free": lambda q, p: RELAX(q, p, rebar_term=False),
    "REBAR-fixed": lambda q, p: REBAR(q, p, learn_temperature=False, learn_scale=False),
}


@pytest.mark.parametrize("name", list(ALL))
def test_history_bound_and_gradient_stats(sbn, name):
    loss = ALL[name](sbn.q, sbn.p)
    torch.manual_seed(0)
    values = [loss(sbn.x) for _ in range(3)]
    history = loss.loss_history_
    assert len(history) == 3 and all(isinstance(v, float) for v in history)
    assert history == pytest.approx([float(v.detach()) for v in values])
    assert loss.bound_.shape == (3,) and history[-1] == pytest.approx(-float(loss.bound_.mean()))
    stats = gradient_stats(loss, sbn.x, 5)
    assert set(stats) == {"inf_net", "gen_model"}
    assert all(math.isfinite(s.total_variance) and s.total_variance > 0 for s in stats.values())
    assert loss.loss_history_ == history  # gradient_stats leaves the history as it was


def test_evaluation_without_gradients_gives_the_bound(sbn):
    loss = REBAR(sbn.q, sbn.p, n_samples=4)
    with torch.no_grad():
        value = loss(sbn.x)
    assert torch.isfinite(value) and loss.bound_.shape == (3,)


class LogProbOnlyGenModel(GenModel):
    """The SBN's joint written as one ``log_prob`` (no ``prior()``): the black-box case."""

    def __init__(self, sbn_model: SigmoidBeliefNet) -> None:
        super().__init__()
        self.inner = sbn_model

    def forward(self, x, z):
        return {"logits": self.inner.net(z)}

    def log_prob(self, x, z):
        a = self.inner.prior_logits
        log_prior = (z * nn.functional.logsigmoid(a) + (1 - z) * nn.functional.logsigmoid(-a)).sum(-1)
        log_lik = Independent(Bernoulli(logits=self.params_["logits"]), 1).log_prob(x.unsqueeze(1))
        return log_prior + log_lik


def test_rebar_with_a_generative_model_that_only_writes_log_prob(sbn):
    model = SimpleNamespace(p=LogProbOnlyGenModel(sbn.p), q=sbn.q, x=sbn.x, configs=sbn.configs)
    z = z_scores(REBAR(model.q, model.p), model, n_rep=200, n_calls=30)
    assert z.abs().max() < N_SE


def test_relax_trains_its_surrogate_through_loss_parameters(sbn):
    torch.manual_seed(0)
    loss = RELAX(sbn.q, sbn.p)
    loss.prepare(sbn.x)
    names = {name for name, _ in loss.named_parameters()}
    assert {"log_temperature", "scale", "surrogate_net_.out.weight"} <= names
    opt = torch.optim.Adam(loss.parameters(), lr=0.01)
    before = loss.surrogate_net_.out.weight.detach().clone()
    for _ in range(3):
        opt.zero_grad()
        loss(sbn.x).backward()
        opt.step()
    assert not torch.equal(before, loss.surrogate_net_.out.weight)


def test_bad_arguments_are_refused_with_clear_messages(sbn, categorical):
    with pytest.raises(ValueError, match="even n_samples"):
        DisARM(sbn.q, sbn.p, n_samples=3)
    with pytest.raises(ValueError, match="n_samples >= 2"):
        RLOO(sbn.q, sbn.p, n_samples=1)
    with pytest.raises(ValueError, match="n_samples >= 2"):
        ARMS(sbn.q, sbn.p, n_samples=1)
    with pytest.raises(TypeError, match="for Bernoulli latents"):
        ARM(categorical.q, categorical.p, n_samples=2)(categorical.x)
    with pytest.raises(ValueError, match="temperature"):
        REBAR(sbn.q, sbn.p, temperature=0.0)
    with pytest.raises(TypeError, match="surrogate"):
        RELAX(sbn.q, sbn.p, surrogate="net")

    class BadSurrogate(nn.Module):
        def forward(self, x, z):
            return z.sum(-1).sum(-1)  # [batch], not [batch, K]

    with pytest.raises(ValueError, match=r"surrogate\(x, z\) of shape \[3, 1\]"):
        RELAX(sbn.q, sbn.p, surrogate=BadSurrogate())(sbn.x)


def test_trainer_builds_relax_surrogate_before_the_optimiser(sbn):
    from bbvae.training import Trainer

    torch.manual_seed(0)
    loss = RELAX(sbn.q, sbn.p)
    x = sbn.x.repeat(4, 1)
    trainer = Trainer(loss, max_steps=4, batch_size=6, learning_rate=0.01, progress=False)
    trainer.fit(x)
    assert "surrogate_net_" in loss._modules
    assert trainer.n_iter_ == 4 and len(loss.loss_history_) >= 4
    assert float(loss.surrogate_net_.out.weight.detach().abs().sum()) > 0  # trained from its zero start


# ------------------------------------------------------------------------- the multi-sample bound
def exact_iwae2_gradient(model) -> torch.Tensor:
    """Gradient of the batch-mean ``E[log (w_1 + w_2) / 2]`` for q's parameters, over all pairs."""
    x = model.x
    z = model.configs.unsqueeze(0).expand(x.shape[0], *model.configs.shape)
    log_q = model.q(x).log_prob(z)  # [B, C]
    log_w = model.p(x, z).log_prob(x, z) - log_q
    pair_bound = torch.logaddexp(log_w.unsqueeze(2), log_w.unsqueeze(1)) - math.log(2)  # [B, C, C]
    pair_q = (log_q.unsqueeze(2) + log_q.unsqueeze(1)).exp()
    return flat_grad((pair_q * pair_bound).sum(dim=(1, 2)).mean(), list(model.q.parameters()))


class DisARMIWAEAveraged(DisARM):
    """DisARM on the 2-sample bound that averages, instead of adding, the two samples' logit gradients."""

    def _logit_gradient(self, f, z, noise, a):
        return super()._logit_gradient(f, z, noise, a) / (self.n_samples // 2)


@pytest.mark.parametrize(
    "make, wrong",
    [
        (lambda q, p: ARM(q, p, n_samples=4, bound="iwae"), False),
        (lambda q, p: DisARM(q, p, n_samples=4, bound="iwae"), False),
        (lambda q, p: DisARMIWAEAveraged(q, p, n_samples=4, bound="iwae"), True),
    ],
    ids=["ARM", "DisARM", "DisARM-averaged (wrong)"],
)
def test_antithetic_estimators_of_the_two_sample_bound_are_unbiased(sbn, make, wrong):
    loss = make(sbn.q, sbn.p)
    mean, se = mean_gradient(loss, sbn, n_calls=100 if not wrong else 50)
    exact = exact_iwae2_gradient(sbn)
    positive = se > 0
    z = (mean - exact)[positive] / se[positive]
    if wrong:
        assert z.abs().max() > 2 * N_SE
    else:
        assert z.abs().max() < N_SE, f"max |z| = {z.abs().max():.2f}"
        assert loss.bound_.shape == loss.ess_.shape == (3 * 200,)  # rows replicated 200 times


@pytest.mark.parametrize("loss_class", [REBAR, RELAX])
def test_control_variate_parameters_live_on_q_s_device_and_dtype(loss_class):
    # The Trainer takes its device from the loss's first parameter: it must be where q's are.
    q = BernoulliInfNet(6, 3).double().to("meta")
    p = SigmoidBeliefNet(3, 6).double().to("meta")
    loss = loss_class(q, p, n_samples=2)
    for param in (loss.log_temperature, loss.scale):
        assert param.device.type == "meta" and param.dtype == torch.float64
    assert next(iter(loss.parameters())).device.type == "meta"


def test_fivo_refuses_the_segment_signal_for_reparametrized_proposals():
    from bbvae.losses import FIVO
    from bbvae.sequential import VRNN

    model = VRNN(4, latent_size=2)
    loss = FIVO(model.inf_net, model.gen_model, n_particles=2, proposal_gradient="segment")
    with pytest.raises(ValueError, match="proposal_gradient='segment' is for latents without rsample"):
        loss(torch.zeros(2, 3, 4))
