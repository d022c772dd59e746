"""Tests of bbvae.evaluation.log_likelihood (importance-sampled log p(x)).

Statistical checks use fixed seeds and 4-standard-error tolerances.
"""

from __future__ import annotations

import math

import pytest
import torch

from bbvae.evaluation import log_likelihood
from bbvae.models import (
    BernoulliInfNet,
    GaussianInfNet,
    LinearGaussianGenModel,
    SigmoidBeliefNet,
)

D, L = 4, 2


def make_model(seed=0, dtype=torch.float64):
    torch.manual_seed(seed)
    p = LinearGaussianGenModel(L, D, noise_std=0.7).to(dtype)
    x, _ = p.sample(5)
    return p, x


def worse_q(p, shift=0.3, scale=1.4):
    a, c, cov = (t.detach() for t in p.posterior_params())
    q = GaussianInfNet(D, L, covariance="full").to(p.weight.dtype)
    q.set_affine(a, c + shift, torch.linalg.cholesky(cov) * scale)
    return q


class CountingInfNet(GaussianInfNet):
    """Records the number of samples requested per call of ``sample``."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.requests = []

    def sample(self, n_samples=1):
        self.requests.append(n_samples)
        return super().sample(n_samples)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_exact_posterior_gives_exact_log_likelihood(dtype):
    p, x = make_model(dtype=dtype)
    q = p.exact_inf_net()
    exact = p.exact_log_prob(x).detach()
    tol = 1e-4 if dtype == torch.float32 else 1e-10
    for n_samples, chunk_size in [(1, 500), (1000, 1000), (1000, 7), (250, 1000)]:
        est = log_likelihood(q, p, x, n_samples=n_samples, chunk_size=chunk_size)
        assert est.shape == (5,) and est.dtype == dtype and not est.requires_grad
        # every weight equals p(x), so a wrong count of samples would show as log(ratio)
        torch.testing.assert_close(est, exact, rtol=0, atol=tol)


def test_worse_q_estimate_is_close_to_and_not_above_exact():
    p, x = make_model()
    q = worse_q(p)
    exact = p.exact_log_prob(x).detach()
    torch.manual_seed(1)
    n_rep = 20
    est = torch.stack([log_likelihood(q, p, x, n_samples=1000, chunk_size=300) for _ in range(n_rep)])
    mean, se = est.mean(0), est.std(0) / math.sqrt(n_rep)
    # the estimate's downward bias ~ var / (2 S) is far below the SE here, so: within 4 SE
    assert torch.all((mean - exact).abs() < 4 * se), (mean - exact) / se
    assert torch.all(mean < exact + 4 * se)
    # and it is much tighter than the one-sample ELBO (power of the test)
    elbo = torch.stack([log_likelihood(q, p, x, n_samples=1) for _ in range(200)]).mean(0)
    assert torch.all(exact - elbo > 10 * se)


def test_chunking_bounds_the_samples_per_pass_and_is_consistent():
    p, x = make_model()
    a, c, cov = (t.detach() for t in p.posterior_params())
    q = CountingInfNet(D, L, covariance="full").double()
    q.set_affine(a, c + 0.3, torch.linalg.cholesky(cov) * 1.4)
    torch.manual_seed(2)
    n_rep = 10
    chunked = torch.stack([log_likelihood(q, p, x, n_samples=1003, chunk_size=7) for _ in range(n_rep)])
    assert q.requests[:144] == [7] * 143 + [2]  # 1003 = 143 * 7 + 2: memory bounded by 7 samples
    assert max(q.requests) == 7
    q.requests.clear()
    whole = torch.stack([log_likelihood(q, p, x, n_samples=1003, chunk_size=5000) for _ in range(n_rep)])
    assert q.requests == [1003] * n_rep
    se = torch.sqrt(chunked.var(0) / n_rep + whole.var(0) / n_rep)
    assert torch.all((chunked.mean(0) - whole.mean(0)).abs() < 4 * se)


def test_non_reparametrizable_q_on_a_sigmoid_belief_net():
    torch.manual_seed(3)
    p = SigmoidBeliefNet(3, 6)
    q = BernoulliInfNet(6, 3)
    x, _ = p.sample(4)
    exact = p.exact_log_prob(x).detach()
    n_rep = 10
    est = torch.stack([log_likelihood(q, p, x, n_samples=2000, chunk_size=600) for _ in range(n_rep)])
    se = est.std(0) / math.sqrt(n_rep)
    assert torch.all((est.mean(0) - exact).abs() < 4 * se + 1e-6)


def test_gradients_are_not_tracked_and_parameters_untouched():
    p, x = make_model()
    q = worse_q(p)
    before = [t.clone() for t in (*q.parameters(), *p.parameters())]
    est = log_likelihood(q, p, x, n_samples=10)
    assert not est.requires_grad
    assert all(torch.equal(a, b) for a, b in zip(before, (*q.parameters(), *p.parameters())))


def test_bad_arguments_raise_clear_errors():
    p, x = make_model()
    q = worse_q(p)
    with pytest.raises(ValueError, match="n_samples >= 1, got 0"):
        log_likelihood(q, p, x, n_samples=0)
    with pytest.raises(TypeError, match="n_samples to be an int"):
        log_likelihood(q, p, x, n_samples=10.0)
    with pytest.raises(ValueError, match="chunk_size >= 1, got -3"):
        log_likelihood(q, p, x, chunk_size=-3)
    with pytest.raises(TypeError, match="chunk_size to be an int"):
        log_likelihood(q, p, x, chunk_size="big")
    with pytest.raises(TypeError, match="x to be a torch.Tensor"):
        log_likelihood(q, p, x.tolist())
    with pytest.raises(TypeError, match="inf_net to be an InfNet"):
        log_likelihood(object(), p, x)
    with pytest.raises(TypeError, match="gen_model to be a GenModel"):
        log_likelihood(q, object(), x)
    with pytest.raises(ValueError, match=r"expected x of shape \[batch, 4\]"):
        log_likelihood(q, p, x[:, :3])


class BrokenGenModel(LinearGaussianGenModel):
    """log p(x, z) is NaN for the first data point."""

    def log_prob(self, x, z):
        log_p = super().log_prob(x, z)
        nan_first = torch.zeros_like(log_p)
        nan_first[0] = float("nan")
        return log_p + nan_first


def test_nan_log_weights_are_named():
    p, x = make_model()
    q = worse_q(p)
    broken = BrokenGenModel(L, D).double()
    broken.load_state_dict(p.state_dict())
    with pytest.raises(ValueError, match="log-weight .* contains 10 NaN"):
        log_likelihood(q, broken, x, n_samples=10)
