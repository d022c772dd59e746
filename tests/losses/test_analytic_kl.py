"""``ELBO(analytic_kl=True)`` equals the exact ELBO in expectation for every reference model."""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Independent, Normal

from bbvae.losses import ELBO
from bbvae.models import GaussianInfNet, LinearGaussianGenModel

N_REP = 4000


def _mean_and_se(loss, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-data-point mean bound over ``N_REP`` independent draws, and its standard error."""
    with torch.no_grad():
        loss(x.repeat_interleave(N_REP, dim=0))
    b = loss.bound_.view(x.shape[0], N_REP)
    return b.mean(1), b.std(1) / math.sqrt(N_REP)


@pytest.mark.parametrize("analytic", [True, False])
def test_sbn_analytic_kl_elbo_matches_enumeration(sbn, exact_sbn_elbo, analytic):
    # The prior is Bernoulli of batch shape [] against q's [batch]: torch's KL does not broadcast.
    exact = exact_sbn_elbo(sbn.p, sbn.q, sbn.x).detach()
    torch.manual_seed(0)
    mean, se = _mean_and_se(ELBO(sbn.q, sbn.p, analytic_kl=analytic), sbn.x)
    assert torch.all((mean - exact).abs() < 4 * se)


def test_sbn_analytic_kl_is_the_enumerated_kl(sbn):
    from bbvae.models import all_binary_configurations

    z = all_binary_configurations(sbn.p.z_dim, like=sbn.x).unsqueeze(0).expand(sbn.x.shape[0], -1, -1)
    log_q = sbn.q(sbn.x).log_prob(z)
    log_prior = sbn.p(sbn.x, z).log_prior(z)
    enumerated = (log_q.exp() * (log_q - log_prior)).sum(1)
    torch.testing.assert_close(ELBO._kl(sbn.q(sbn.x), sbn.p), enumerated)


@pytest.mark.parametrize("covariance", ["diag", "full"])
def test_gaussian_analytic_kl_elbo_matches_closed_form(linear_gaussian, exact_gaussian_elbo, covariance):
    lg = linear_gaussian
    torch.manual_seed(0)
    q = GaussianInfNet(lg.x.shape[1], lg.p.z_dim, covariance=covariance).double()
    exact = exact_gaussian_elbo(lg.p, q, lg.x).detach()
    mean, se = _mean_and_se(ELBO(q, lg.p, analytic_kl=True), lg.x)
    assert torch.all((mean - exact).abs() < 4 * se)


class SampleShapedPrior(LinearGaussianGenModel):
    """The same model, but its prior is written with batch shape [batch, n_samples] (as documented)."""

    def prior(self):
        z = self.params_["z"] if "z" in self.params_ else None
        shape = (*z.shape[:2], self.z_dim) if z is not None else (self.z_dim,)
        zeros = self.bias.new_zeros(shape)
        return Independent(Normal(zeros, torch.ones_like(zeros)), 1)

    def forward(self, x, z):
        params = super().forward(x, z)
        return {**params, "z": z}


def test_a_prior_of_batch_shape_batch_by_samples_gives_the_same_kl(linear_gaussian):
    lg = linear_gaussian
    wide = SampleShapedPrior(lg.p.z_dim, lg.p.x_dim).double()
    wide.load_state_dict(lg.p.state_dict())
    z = lg.q(lg.x).rsample(5)
    wide(lg.x, z)
    lg.p(lg.x, z)
    torch.testing.assert_close(ELBO._kl(lg.q(lg.x), wide), ELBO._kl(lg.q(lg.x), lg.p))
