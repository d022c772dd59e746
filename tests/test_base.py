"""The InfNet / GenModel contract: shapes, both subclassing routes, errors."""

import pytest
import torch
from torch import nn
from torch.distributions import Independent, Normal, Poisson

from bbvae import GenModel, InfNet, NotFittedError
from bbvae.losses import ELBO, IWAE
from bbvae.models import (
    BernoulliInfNet,
    GaussianInfNet,
    LinearGaussianGenModel,
    SigmoidBeliefNet,
)


class PoissonInfNet(InfNet):
    """A user-written latent type: overrides sample/log_prob, defines no distribution()."""

    def __init__(self, x_dim, z_dim):
        super().__init__()
        self.net = nn.Linear(x_dim, z_dim)

    def forward(self, x):
        return {"rate": nn.functional.softplus(self.net(x)) + 0.1}

    def sample(self, n_samples=1):
        rate = self.params_["rate"]  # [batch, L]
        return torch.poisson(rate.detach().unsqueeze(1).expand(-1, n_samples, -1))

    def log_prob(self, z):
        self.check_latents(z, (self.params_["rate"].shape[-1],), "log_prob")
        return Poisson(self.params_["rate"].unsqueeze(1)).log_prob(z).sum(-1)


class PoissonGenModel(GenModel):
    def __init__(self, z_dim, x_dim):
        super().__init__()
        self.net = nn.Linear(z_dim, x_dim)
        self.log_rate = nn.Parameter(torch.zeros(z_dim))

    def forward(self, x, z):
        return {"loc": self.net(z)}

    def prior(self):
        return Independent(Poisson(self.log_rate.exp()), 1)

    def likelihood(self):
        loc = self.params_["loc"]
        return Independent(Normal(loc, torch.ones_like(loc)), 1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_distribution_route_shapes_follow_input_dtype(dtype):
    q = GaussianInfNet(5, 3).to(dtype)
    p = LinearGaussianGenModel(3, 5).to(dtype)
    x = torch.randn(7, 5, dtype=dtype)
    assert q(x) is q
    assert set(q.params_) == {"loc", "scale"}
    z = q.rsample(4)
    assert z.shape == (7, 4, 3) and z.dtype == dtype and z.requires_grad
    assert q.sample(2).shape == (7, 2, 3) and not q.sample(2).requires_grad
    assert q.log_prob(z).shape == (7, 4)
    assert p(x, z) is p
    assert p.log_prob(x, z).shape == (7, 4) and p.log_prob(x, z).dtype == dtype
    torch.testing.assert_close(p.log_prob(x, z), p.log_prior(z) + p.log_likelihood(x, z))
    xs, zs = p.sample(6)
    assert xs.shape == (6, 5) and zs.shape == (6, 3) and xs.dtype == dtype


def test_log_prob_matches_torch_distribution_per_sample():
    torch.manual_seed(0)
    q = GaussianInfNet(4, 2)
    x = torch.randn(3, 4)
    z = q(x).sample(5)
    expected = Normal(q.params_["loc"][1], q.params_["scale"][1]).log_prob(z[1, 4]).sum()
    torch.testing.assert_close(q.log_prob(z)[1, 4], expected)


def test_has_rsample_both_routes():
    x = torch.randn(3, 4)
    assert GaussianInfNet(4, 2)(x).has_rsample
    assert not BernoulliInfNet(4, 2)(x).has_rsample
    assert not PoissonInfNet(4, 2)(x).has_rsample

    class WithRsample(PoissonInfNet):
        def rsample(self, n_samples=1):
            return self.sample(n_samples)

    assert WithRsample(4, 2).has_rsample


def test_bernoulli_rsample_error_is_clear():
    q = BernoulliInfNet(4, 2)(torch.randn(3, 4))
    with pytest.raises(TypeError, match="no reparametrized sampler.*score-function"):
        q.rsample(2)


def test_use_before_forward_raises_not_fitted():
    with pytest.raises(NotFittedError, match=r"call the network on a batch first"):
        GaussianInfNet(4, 2).sample(3)
    with pytest.raises(NotFittedError, match=r"gen_model\(x, z\)"):
        LinearGaussianGenModel(2, 4).log_prob(torch.randn(3, 4), torch.randn(3, 1, 2))
    assert isinstance(NotFittedError("x"), ValueError) and isinstance(NotFittedError("x"), AttributeError)


def test_wrong_latent_shape_names_expected_shape():
    q = GaussianInfNet(4, 2)(torch.randn(3, 4))
    with pytest.raises(ValueError, match=r"expected z of shape \[3, n_samples, 2\], got \[3, 5\]"):
        q.log_prob(torch.randn(3, 5))
    with pytest.raises(ValueError, match=r"expected z of shape \[3, n_samples, 2\], got \[4, 1, 2\]"):
        q.log_prob(torch.randn(4, 1, 2))
    p = LinearGaussianGenModel(2, 4)
    z = torch.randn(3, 5, 2)
    p(torch.randn(3, 4), z)
    with pytest.raises(ValueError, match=r"expected z of shape \[3, 5, 2\]"):
        p.log_prob(torch.randn(3, 4), torch.randn(3, 6, 2))


def test_wrong_data_shape_names_argument():
    with pytest.raises(ValueError, match=r"expected x of shape \[batch, 784\], got \[32, 28, 28\]"):
        GaussianInfNet(784, 2)(torch.randn(32, 28, 28))


def test_likelihood_without_independent_is_explained():
    class Elementwise(LinearGaussianGenModel):
        def likelihood(self):
            return Normal(self.params_["loc"], 1.0)

    p = Elementwise(2, 4)
    z = torch.randn(3, 5, 2)
    with pytest.raises(ValueError, match="Independent"):
        p(None, z).log_likelihood(torch.randn(3, 4), z)


def test_forward_must_return_dict():
    class Bad(InfNet):
        def forward(self, x):
            return x

    with pytest.raises(TypeError, match="must return a dict"):
        Bad()(torch.randn(2, 3))


def test_params_detached_restores_parameters():
    q = GaussianInfNet(4, 2)(torch.randn(3, 4))
    z = q.rsample(2)
    with q.params_detached():
        assert not q.log_prob(z.detach()).requires_grad
    assert q.log_prob(z.detach()).requires_grad


def test_custom_latent_type_trains_with_score_elbo_and_is_refused_by_reparam_losses():
    torch.manual_seed(0)
    q, p = PoissonInfNet(3, 2), PoissonGenModel(2, 3)
    x = torch.randn(64, 3) + 2.0
    loss = ELBO(q, p, n_samples=4)
    assert loss.estimator == "auto"
    opt = torch.optim.Adam(loss.parameters(), lr=0.05)
    for _ in range(150):
        opt.zero_grad()
        loss(x).backward()
        opt.step()
    history = loss.loss_history_
    assert len(history) == 150
    # The negative bound falls: first 10 steps vs last 10 (noise is far below the gap).
    assert sum(history[-10:]) / 10 < sum(history[:10]) / 10 - 0.5
    with pytest.raises(TypeError, match="no rsample"):
        ELBO(q, p, estimator="reparam")(x)
    with pytest.raises(TypeError, match="reparametrizable"):
        IWAE(q, p, n_samples=2)(x)


def test_sbn_sampling_support_and_exact_log_prob_normalises():
    torch.manual_seed(0)
    p = SigmoidBeliefNet(3, 4).double()
    x, z = p.sample(50)
    assert set(x.unique().tolist()) <= {0.0, 1.0} and set(z.unique().tolist()) <= {0.0, 1.0}
    from bbvae.models import all_binary_configurations

    every_x = all_binary_configurations(4, like=p.prior_logits)  # [16, 4]
    total = torch.logsumexp(p.exact_log_prob(every_x), dim=0)
    torch.testing.assert_close(total, torch.zeros((), dtype=torch.float64))
