"""gradient_stats: mean, variance and SNR of a loss's gradient over repeated draws."""

import math

import pytest
import torch

from bbvae.diagnostics import GradientStats, gradient_stats
from bbvae.losses.base import Loss
from bbvae.losses.elbo import ELBO
from bbvae.losses.nvil import NVIL
from bbvae.models import GaussianInfNet, LinearGaussianGenModel


def _models():
    torch.manual_seed(0)
    p = LinearGaussianGenModel(2, 3).double()
    q = GaussianInfNet(3, 2).double()
    x, _ = p.sample(5)
    return q, p, x


def _flat(params):
    return torch.cat([p.grad.reshape(-1) for p in params])


def test_statistics_match_a_manual_loop():
    q, p, x = _models()
    loss = ELBO(q, p, n_samples=2, estimator="score")
    torch.manual_seed(1)
    stats = gradient_stats(loss, x, n_draws=30)
    torch.manual_seed(1)
    draws = {"inf_net": [], "gen_model": []}
    for _ in range(30):
        q.zero_grad(set_to_none=True)
        p.zero_grad(set_to_none=True)
        loss(x).backward()
        draws["inf_net"].append(_flat(q.parameters()))
        draws["gen_model"].append(_flat(p.parameters()))
    assert set(stats) == {"inf_net", "gen_model"}
    for name, rows in draws.items():
        g = torch.stack(rows)  # [n_draws, P]
        s = stats[name]
        assert isinstance(s, GradientStats) and s.n_draws == 30
        torch.testing.assert_close(s.mean, g.mean(0))
        torch.testing.assert_close(s.variance, g.var(0))
        std = g.std(0)
        assert s.snr == pytest.approx((g.mean(0).abs() / std).mean().item(), rel=1e-9)
        assert s.snr_norm == pytest.approx((g.mean(0).norm() / g.var(0).sum().sqrt()).item(), rel=1e-9)
        assert s.total_variance == pytest.approx(g.var(0).sum().item(), rel=1e-9)
        torch.testing.assert_close(s.std_error, std / math.sqrt(30))


class _Deterministic(Loss):
    """A 'bound' with no sampling: its gradient never varies."""

    def estimate(self, x, **context):
        loc = self.inf_net(x).params_["loc"]  # [batch, L]
        value = -(loc - x[:, :2]).pow(2).sum(1) - self.gen_model.bias.pow(2).sum()
        return value.detach(), value


def test_deterministic_gradient_has_zero_variance():
    q, p, x = _models()
    with torch.no_grad():
        p.bias.fill_(0.5)
    loss = _Deterministic(q, p)
    stats = gradient_stats(loss, x, n_draws=3)
    loss(x).backward()
    torch.testing.assert_close(stats["inf_net"].mean, _flat(q.parameters()))
    assert (stats["inf_net"].variance == 0).all()
    assert math.isnan(stats["inf_net"].snr) and stats["inf_net"].snr_norm == math.inf
    # parameters that get no gradient count as zeros (all of p but its bias)
    gen = stats["gen_model"]
    assert gen.mean.shape == (sum(t.numel() for t in p.parameters()),)
    torch.testing.assert_close(gen.mean.abs().sum(), torch.tensor(3.0, dtype=torch.float64))


def test_custom_groups_and_context_are_used():
    q, p, x = _models()
    loss = ELBO(q, p)
    groups = {"loc": list(q.net.parameters()), "noise": [p.log_noise_std]}
    stats = gradient_stats(loss, x, 4, params=groups)
    assert set(stats) == {"loc", "noise"}
    assert stats["noise"].mean.shape == (1,)
    assert stats["loc"].mean.shape == (sum(t.numel() for t in q.net.parameters()),)


def test_loss_is_left_as_found():
    q, p, x = _models()
    loss = NVIL(q, p, n_samples=2)
    loss(x)
    loss(x)
    sentinel = torch.full_like(p.bias, 7.0)
    p.bias.grad = sentinel.clone()  # an existing gradient survives
    buffers = {k: v.clone() for k, v in loss.named_buffers()}
    history = loss.loss_history_
    gradient_stats(loss, x, n_draws=5)
    torch.testing.assert_close(p.bias.grad, sentinel)
    assert p.weight.grad is None and all(t.grad is None for t in q.parameters())
    assert all(t.grad is None for t in loss.baseline_net_.parameters())
    for k, v in loss.named_buffers():
        torch.testing.assert_close(v, buffers[k])
    assert loss.loss_history_ == history


def test_baseline_created_during_the_draws_ends_without_gradient():
    q, p, x = _models()
    loss = NVIL(q, p)
    gradient_stats(loss, x, n_draws=2)
    assert all(t.grad is None for t in loss.baseline_net_.parameters())


def test_bad_arguments():
    q, p, x = _models()
    loss = ELBO(q, p)
    with pytest.raises(ValueError, match="gradient_stats: expected n_draws >= 2, got 1"):
        gradient_stats(loss, x, 1)
    with pytest.raises(ValueError, match="parameter group 'empty' has no parameter"):
        gradient_stats(loss, x, 2, params={"empty": []})
    with pytest.raises(TypeError, match="expected params to be a dict"):
        gradient_stats(loss, x, 2, params=list(q.parameters()))
    with pytest.raises(TypeError, match="expected x to be a torch.Tensor"):
        gradient_stats(loss, x.tolist(), 2)
