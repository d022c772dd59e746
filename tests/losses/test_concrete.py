"""Tests of the Concrete / Gumbel-softmax relaxation (bbvae.losses.concrete).

Statistical checks use fixed seeds and tolerances of 4 standard errors.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.distributions import (
    Bernoulli,
    Categorical,
    Independent,
    OneHotCategorical,
)
from torch.distributions.relaxed_bernoulli import LogitRelaxedBernoulli
from torch.distributions.relaxed_categorical import ExpRelaxedCategorical

from bbvae.base import GenModel, InfNet
from bbvae.losses.concrete import Concrete, GumbelSoftmax, relaxed_log_prob, relaxed_sample
from bbvae.models import (
    BernoulliInfNet,
    GaussianInfNet,
    LinearGaussianGenModel,
    SigmoidBeliefNet,
    all_binary_configurations,
)


# ----------------------------------------------------------------------- categorical test models
class OneHotInfNet(InfNet):
    """q(z|x): ``n_vars`` independent categoricals of ``n_cats`` categories, latent shape [n_vars, n_cats]."""

    def __init__(self, x_dim: int, n_vars: int, n_cats: int) -> None:
        super().__init__()
        self.n_vars, self.n_cats = n_vars, n_cats
        self.net = nn.Linear(x_dim, n_vars * n_cats)

    def forward(self, x):
        return {"logits": self.net(x).reshape(x.shape[0], self.n_vars, self.n_cats)}

    def distribution(self):
        return Independent(OneHotCategorical(logits=self.params_["logits"]), 1)


class OneHotGenModel(GenModel):
    """p(z) a learned categorical per variable; p(x|z) Bernoulli with logits linear in flattened z."""

    def __init__(self, x_dim: int, n_vars: int, n_cats: int) -> None:
        super().__init__()
        self.prior_logits = nn.Parameter(torch.randn(n_vars, n_cats))
        self.net = nn.Linear(n_vars * n_cats, x_dim)

    def forward(self, x, z):
        return {"logits": self.net(z.flatten(-2))}

    def prior(self):
        return Independent(OneHotCategorical(logits=self.prior_logits), 1)

    def likelihood(self):
        return Independent(Bernoulli(logits=self.params_["logits"]), 1)


class IndexCategoricalInfNet(InfNet):
    """q(z|x) as an index-valued Categorical: not relaxable as such."""

    def __init__(self, x_dim: int) -> None:
        super().__init__()
        self.net = nn.Linear(x_dim, 3)

    def forward(self, x):
        return {"logits": self.net(x)}

    def distribution(self):
        return Categorical(logits=self.params_["logits"])


def all_one_hot_configurations(n_vars: int, n_cats: int, like: torch.Tensor) -> torch.Tensor:
    """Every assignment of ``n_vars`` one-hot vectors: ``[n_cats^n_vars, n_vars, n_cats]``."""
    codes = torch.cartesian_prod(*[torch.arange(n_cats)] * n_vars).reshape(-1, n_vars)
    return nn.functional.one_hot(codes, n_cats).to(like.dtype)


def exact_elbo(inf_net, gen_model, x, configs) -> torch.Tensor:
    """Discrete ELBO ``sum_z q(z|x) (log p(x, z) - log q(z|x))`` by enumeration: ``[batch]``."""
    with torch.no_grad():
        z = configs.unsqueeze(0).expand(x.shape[0], *configs.shape)
        log_q = inf_net(x).log_prob(z)
        log_p = gen_model(x, z).log_prob(x, z)
        return (log_q.exp() * (log_p - log_q)).sum(dim=1)


# ---------------------------------------------------------------------------------- sampling
@pytest.mark.parametrize("kind", ["bernoulli", "categorical"])
def test_relaxed_sample_tends_to_the_hard_sample_as_temperature_vanishes(kind):
    logits = torch.randn(2000, 4, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(1)
    _, z_cold, hard_cold = relaxed_sample(kind, logits, 1e-3)
    torch.manual_seed(1)  # same uniform noise
    _, z_warm, hard_warm = relaxed_sample(kind, logits, 1.0)
    assert torch.equal(hard_cold, hard_warm)  # the hard sample does not depend on the temperature
    assert set(hard_cold.unique().tolist()) <= {0.0, 1.0}
    close_cold = ((z_cold - hard_cold).abs() < 1e-3).float().mean()
    close_warm = ((z_warm - hard_warm).abs() < 1e-3).float().mean()
    assert close_cold > 0.99
    assert close_warm < 0.5  # at temperature 1 the relaxed sample is far from binary


@pytest.mark.parametrize("kind", ["bernoulli", "categorical"])
def test_hard_samples_follow_q_probabilities(kind):
    torch.manual_seed(2)
    n = 20000
    base = torch.tensor([-2.0, -0.3, 0.5, 1.7])
    _, _, hard = relaxed_sample(kind, base.expand(n, 4), 0.5)
    freq = hard.mean(dim=0)
    prob = torch.sigmoid(base) if kind == "bernoulli" else torch.softmax(base, dim=-1)
    se = torch.sqrt(prob * (1 - prob) / n)  # standard error of a frequency
    assert torch.all((freq - prob).abs() < 4 * se), (freq, prob)


def test_relaxed_log_prob_matches_torch_distributions():
    torch.manual_seed(3)
    logits = torch.randn(50, 5, dtype=torch.float64)
    for tau in (0.3, 1.0, 2.5):
        y, _, _ = relaxed_sample("bernoulli", logits, tau)
        expected = LogitRelaxedBernoulli(torch.tensor(tau, dtype=torch.float64), logits=logits).log_prob(y)
        torch.testing.assert_close(relaxed_log_prob("bernoulli", logits, y, tau), expected)
        y, z, _ = relaxed_sample("categorical", logits, tau)
        torch.testing.assert_close(z.sum(-1), torch.ones(50, dtype=torch.float64))
        expected = ExpRelaxedCategorical(torch.tensor(tau, dtype=torch.float64), logits=logits).log_prob(y)
        torch.testing.assert_close(relaxed_log_prob("categorical", logits, y, tau), expected)


def test_relaxed_log_prob_stays_finite_at_low_temperature():
    torch.manual_seed(4)
    logits = 5 * torch.randn(500, 6)
    for kind in ("bernoulli", "categorical"):
        y, z, _ = relaxed_sample(kind, logits, 1e-3)
        assert torch.isfinite(relaxed_log_prob(kind, logits, y, 1e-3)).all()
        assert torch.isfinite(z).all()
    _, z, _ = relaxed_sample("bernoulli", logits, 1e-3)
    assert ((z > 0) & (z < 1)).all()  # clamped away from {0, 1}


# --------------------------------------------------------------------------------------- loss
def _sbn_pair(dtype=torch.float64, seed=0):
    torch.manual_seed(seed)
    gen = SigmoidBeliefNet(3, 6).to(dtype)
    with torch.no_grad():
        gen.prior_logits.copy_(torch.tensor([1.0, -0.5, 0.2]))
    inf = BernoulliInfNet(6, 3).to(dtype)
    return inf, gen


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("straight_through", [False, True])
def test_forward_shapes_and_gradients(dtype, straight_through):
    inf, gen = _sbn_pair(dtype)
    x, _ = gen.sample(8)
    loss = Concrete(inf, gen, temperature=0.5, straight_through=straight_through, n_samples=3)
    value = loss(x)
    assert value.dtype == dtype and value.shape == ()
    torch.testing.assert_close(value.detach(), -loss.bound_.mean())
    assert loss.z_.shape == (8, 3, 3) and loss.z_hard_.shape == (8, 3, 3)
    assert set(loss.z_hard_.unique().tolist()) <= {0.0, 1.0}
    if straight_through:
        assert torch.equal(loss.z_, loss.z_hard_)  # hard samples forward
    else:
        assert ((loss.z_ > 0) & (loss.z_ < 1)).all() and not torch.equal(loss.z_, loss.z_hard_)
        assert torch.equal(loss.z_ > 0.5, loss.z_hard_ > 0.5)  # the hard sample rounds the relaxed one
    value.backward()
    for module in (inf, gen):
        grads = [p.grad for p in module.parameters()]
        assert all(g is not None and torch.isfinite(g).all() for g in grads)
        assert sum(g.abs().sum() for g in grads) > 0
    assert len(loss.loss_history_) == 1


class PlainBernoulliInfNet(BernoulliInfNet):
    """q(z|x) as a Bernoulli of batch shape [batch, L], not wrapped in Independent."""

    def distribution(self):
        return Bernoulli(logits=self.params_["logits"])


def test_bernoulli_without_independent_gives_the_same_result():
    inf, gen = _sbn_pair()
    plain = PlainBernoulliInfNet(6, 3).double()
    plain.load_state_dict(inf.state_dict())
    x, _ = gen.sample(5)
    for straight_through in (False, True):
        values = []
        for q in (inf, plain):
            torch.manual_seed(0)
            loss = Concrete(q, gen, temperature=0.5, straight_through=straight_through, n_samples=2)
            values.append((loss(x), loss.relaxed_bound_))
        torch.testing.assert_close(values[0], values[1])


def test_gumbel_softmax_is_an_alias():
    assert GumbelSoftmax is Concrete


def test_temperature_schedule_is_called_with_the_step():
    inf, gen = _sbn_pair()
    x, _ = gen.sample(4)
    steps = []

    def schedule(step):
        steps.append(step)
        return 1.0 / (1.0 + step)

    loss = Concrete(inf, gen, temperature=schedule)
    for _ in range(3):
        loss(x)
    assert steps == [0, 1, 2]
    assert loss.n_calls_ == 3 and loss.temperature_ == pytest.approx(1.0 / 3.0)
    fixed = Concrete(inf, gen, temperature=0.7)
    fixed(x)
    assert fixed.temperature_ == pytest.approx(0.7)


def test_temperature_schedule_values_are_checked():
    inf, gen = _sbn_pair()
    x, _ = gen.sample(4)
    with pytest.raises(ValueError, match="temperature"):
        Concrete(inf, gen, temperature=lambda step: 0.0)(x)
    with pytest.raises(TypeError, match="temperature"):
        Concrete(inf, gen, temperature=lambda step: "hot")(x)


@pytest.mark.parametrize("straight_through", [False, True])
def test_reported_value_is_the_discrete_elbo_in_expectation(straight_through):
    inf, gen = _sbn_pair()
    x0, _ = gen.sample(1)
    n = 4000
    x = x0.expand(n, -1)
    loss = Concrete(inf, gen, temperature=0.5, straight_through=straight_through)
    loss(x)
    reported = loss.bound_  # n independent one-sample estimates
    exact = exact_elbo(inf, gen, x0, all_binary_configurations(3, like=x0))[0]
    se = reported.std() / math.sqrt(n)
    assert (reported.mean() - exact).abs() < 4 * se, (reported.mean(), exact, se)


def test_categorical_latents():
    torch.manual_seed(5)
    x_dim, n_vars, n_cats = 5, 2, 3
    inf = OneHotInfNet(x_dim, n_vars, n_cats).double()
    gen = OneHotGenModel(x_dim, n_vars, n_cats).double()
    x0 = torch.bernoulli(torch.full((1, x_dim), 0.5, dtype=torch.float64))
    n = 4000
    x = x0.expand(n, -1)
    loss = Concrete(inf, gen, temperature=0.5, n_samples=1)
    value = loss(x)
    assert loss.z_.shape == (n, 1, n_vars, n_cats)
    torch.testing.assert_close(loss.z_.sum(-1), torch.ones(n, 1, n_vars, dtype=torch.float64))
    assert torch.equal(loss.z_hard_.sum(-1), torch.ones(n, 1, n_vars, dtype=torch.float64))
    assert torch.equal(loss.z_.argmax(-1), loss.z_hard_.argmax(-1))
    exact = exact_elbo(inf, gen, x0, all_one_hot_configurations(n_vars, n_cats, like=x0))[0]
    se = loss.bound_.std() / math.sqrt(n)
    assert (loss.bound_.mean() - exact).abs() < 4 * se, (loss.bound_.mean(), exact, se)
    value.backward()
    assert inf.net.weight.grad.abs().sum() > 0 and gen.prior_logits.grad.abs().sum() > 0
    inf.zero_grad()
    gen.zero_grad()
    st = Concrete(inf, gen, temperature=0.5, straight_through=True)
    st(x[:16]).backward()
    assert torch.equal(st.z_, st.z_hard_)
    assert inf.net.weight.grad.abs().sum() > 0


def test_training_a_sigmoid_belief_net_improves_the_exact_log_likelihood():
    torch.manual_seed(6)
    z_dim, x_dim, n = 3, 12, 200
    truth = SigmoidBeliefNet(z_dim, x_dim)
    with torch.no_grad():
        truth.net[0].weight.mul_(4.0)
    x, _ = truth.sample(n)
    gen = SigmoidBeliefNet(z_dim, x_dim)
    inf = BernoulliInfNet(x_dim, z_dim, hidden=(16,))
    loss = Concrete(inf, gen, temperature=0.5, n_samples=4)
    opt = torch.optim.Adam([*inf.parameters(), *gen.parameters()], lr=0.03)
    with torch.no_grad():
        before = gen.exact_log_prob(x).mean()
        best = truth.exact_log_prob(x).mean()
    for _ in range(100):
        opt.zero_grad(set_to_none=True)
        loss(x).backward()
        opt.step()
    with torch.no_grad():
        after = gen.exact_log_prob(x).mean()
        loss(x)
    # The fitted model must close at least 3/4 of the gap to the data-generating model.
    assert after - before > 0.75 * (best - before), (before, after, best)
    # The reported (discrete) bound stays below the exact log-likelihood, within 4 standard errors.
    se = loss.bound_.std() / math.sqrt(n)
    assert loss.bound_.mean() < after + 4 * se


def test_unsupported_distributions_raise_type_errors():
    torch.manual_seed(7)
    gen = LinearGaussianGenModel(2, 4)
    gauss_q = GaussianInfNet(4, 2)
    x = torch.randn(3, 4)
    with pytest.raises(TypeError, match="Concrete relaxes Bernoulli and OneHotCategorical"):
        Concrete(gauss_q, gen)(x)
    with pytest.raises(TypeError, match="OneHotCategorical"):
        Concrete(IndexCategoricalInfNet(4), gen)(x)
    # q is Bernoulli but the prior is Gaussian
    with pytest.raises(TypeError, match="gen_model.prior"):
        Concrete(BernoulliInfNet(4, 2), gen)(x)

    class NoDistribution(BernoulliInfNet):
        distribution = InfNet.distribution  # a custom latent type: sample/log_prob only

    with pytest.raises(TypeError, match="has no distribution"):
        Concrete(NoDistribution(4, 2), gen)(x)
    # q is categorical, the prior Bernoulli
    with pytest.raises(TypeError, match="q\\(z\\|x\\) is a categorical but the prior is a bernoulli"):
        Concrete(OneHotInfNet(6, 1, 3), SigmoidBeliefNet(3, 6))(torch.ones(2, 6))


class _WidePriorSBN(SigmoidBeliefNet):
    """A sigmoid belief net whose prior has one latent more than its decoder reads."""

    def prior(self):
        return Independent(Bernoulli(logits=self.prior_logits.new_zeros(self.z_dim + 1)), 1)


def test_mismatched_prior_and_bad_settings_raise():
    inf, gen = _sbn_pair()
    x, _ = gen.sample(2)
    wide = _WidePriorSBN(3, 6).double()
    with pytest.raises(ValueError, match=r"latent shape \[3\] but the prior has event shape \[4\]"):
        Concrete(inf, wide)(x)
    with pytest.raises(ValueError, match="temperature"):
        Concrete(inf, gen, temperature=-1.0)
    with pytest.raises(ValueError, match="temperature"):
        Concrete(inf, gen, temperature=float("inf"))
    with pytest.raises(TypeError, match="temperature"):
        Concrete(inf, gen, temperature="hot")
    with pytest.raises(TypeError, match="straight_through"):
        Concrete(inf, gen, straight_through="yes")
    with pytest.raises(ValueError, match="n_samples"):
        Concrete(inf, gen, n_samples=0)
