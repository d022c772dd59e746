"""VIMCO: leave-one-out baselines, unbiasedness for the gradient of E[IWAE_K], variance, edge cases."""

import math

import pytest
import torch

from bbvae.diagnostics import gradient_stats
from bbvae.losses.base import log_mean_exp
from bbvae.losses.elbo import ELBO
from bbvae.losses.iwae import IWAE
from bbvae.losses.vimco import VIMCO, leave_one_out_bounds


def naive_leave_one_out(log_w):
    """The definition, with an explicit [batch, K, K] tensor: row k has log_w_k replaced."""
    k = log_w.shape[1]
    eye = torch.eye(k, dtype=torch.bool)
    others = log_w.unsqueeze(1).expand(-1, k, -1)  # [B, K(replaced), K]
    mean_others = others.masked_fill(eye, 0.0).sum(-1) / (k - 1)  # [B, K]
    replaced = torch.where(eye, mean_others.unsqueeze(-1), others)
    return torch.logsumexp(replaced, dim=-1) - math.log(k)


@pytest.mark.parametrize("k", [2, 3, 8])
@pytest.mark.parametrize("scale", [1.0, 50.0])
def test_leave_one_out_bounds_match_the_definition(k, scale):
    torch.manual_seed(0)
    log_w = scale * torch.randn(6, k, dtype=torch.float64) - 20.0
    torch.testing.assert_close(leave_one_out_bounds(log_w), naive_leave_one_out(log_w), rtol=0, atol=1e-10)


def test_leave_one_out_bounds_are_stable_when_one_weight_dominates():
    # the others of the dominant sample are 700 nats below it: subtracting its weight
    # from the total would lose them entirely
    log_w = torch.tensor([[0.0, 700.0, -30.0], [-1000.0, -1001.0, -1300.0]], dtype=torch.float64)
    expected = naive_leave_one_out(log_w)
    assert torch.isfinite(expected).all()
    torch.testing.assert_close(leave_one_out_bounds(log_w), expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(leave_one_out_bounds(log_w.float()), expected.float(), rtol=1e-6, atol=1e-4)


def test_leave_one_out_bounds_with_zero_weights():
    inf = math.inf
    log_w = torch.tensor([[-inf, 1.0, 2.0], [-inf, -inf, 2.0], [0.0, 0.0, 0.0]], dtype=torch.float64)
    loo = leave_one_out_bounds(log_w)
    log3 = math.log(3)
    # k=0: others {1, 2} (geometric mean 1.5); k=1: others {-inf, 2}: geometric mean 0
    row0 = [math.log(math.exp(1.5) + math.e + math.exp(2)) - log3, 2 - log3, 1 - log3]
    torch.testing.assert_close(loo[0], torch.tensor(row0, dtype=torch.float64))
    # every other sample of the last one has zero weight: -inf
    torch.testing.assert_close(loo[1], torch.tensor([2 - log3, 2 - log3, -inf], dtype=torch.float64))
    torch.testing.assert_close(loo[2], torch.zeros(3, dtype=torch.float64))


def test_leave_one_out_bounds_memory_is_linear_in_k():
    # [1, K, K] would need 20 GB in float64; [batch, K] takes 400 kB
    log_w = torch.randn(1, 50_000, dtype=torch.float64)
    loo = leave_one_out_bounds(log_w)
    assert loo.shape == (1, 50_000) and torch.isfinite(loo).all()


def test_gradient_is_unbiased_for_the_iwae_gradient(linear_gaussian, averaged_gradient):
    # VIMCO (score function for q) and IWAE (reparametrized) estimate the same gradient,
    # that of E[IWAE_K]; compare their means with a two-sample standard error.
    m = linear_gaussian
    params = [*m.q.parameters(), *m.p.parameters()]
    torch.manual_seed(1)
    mean_v, se_v = averaged_gradient(VIMCO(m.q, m.p, n_samples=3), m.x, params, n_rep=500, n_calls=40)
    mean_i, se_i = averaged_gradient(IWAE(m.q, m.p, n_samples=3), m.x, params, n_rep=500, n_calls=40)
    se = (se_v**2 + se_i**2).sqrt()
    assert se.norm() < 0.05 * mean_i.norm()  # the comparison has power
    assert ((mean_v - mean_i).abs() <= 4 * se).all(), ((mean_v - mean_i) / se).abs().max()


def test_gradient_matches_enumeration_on_sigmoid_belief_net(
    sbn, exact_sbn_iwae2, averaged_gradient, flat_grad
):
    # exact gradient of E[IWAE_2] from all 8 x 8 pairs of latent configurations
    q_params, p_params = list(sbn.q.parameters()), list(sbn.p.parameters())
    exact = flat_grad(-exact_sbn_iwae2(sbn.p, sbn.q, sbn.x).mean(), [*q_params, *p_params])
    torch.manual_seed(2)
    mean, se = averaged_gradient(VIMCO(sbn.q, sbn.p, n_samples=2), sbn.x, [*q_params, *p_params], 500, 40)
    assert se.norm() < 0.05 * exact.norm()
    n_q = sum(p.numel() for p in q_params)
    for part in (slice(0, n_q), slice(n_q, None)):  # q's and p's parameters
        err, tol = (mean - exact)[part], 4 * se[part] + 1e-9  # 4 standard errors (40 calls)
        assert (err.abs() <= tol).all(), (err / (se[part] + 1e-12)).abs().max()


def test_leave_one_out_baselines_reduce_q_gradient_variance(sbn):
    k = 4
    torch.manual_seed(3)
    plain = gradient_stats(ELBO(sbn.q, sbn.p, n_samples=k, estimator="score"), sbn.x, 100)["inf_net"]
    vimco = gradient_stats(VIMCO(sbn.q, sbn.p, n_samples=k), sbn.x, 100)["inf_net"]
    assert vimco.total_variance / plain.total_variance < 0.5  # measured about 0.04
    assert vimco.snr_norm > plain.snr_norm


def test_signal_is_per_data_point_and_per_sample(linear_gaussian):
    m = linear_gaussian
    loss = VIMCO(m.q, m.p, n_samples=5)
    torch.manual_seed(4)
    value = loss(m.x)
    log_w = loss.log_p_ - loss.log_q_
    bound = log_mean_exp(log_w)
    torch.testing.assert_close(loss.bound_, bound)
    torch.testing.assert_close(value.detach(), -bound.mean())
    assert loss.loss_history_ == pytest.approx([-bound.mean().item()])
    expected = bound.unsqueeze(1) - naive_leave_one_out(log_w)
    torch.testing.assert_close(loss.learning_signal_, expected)
    assert loss.ess_.shape == (4,) and loss.max_weight_.shape == (4,)
    assert ((loss.ess_ >= 1) & (loss.ess_ <= 5)).all()


def test_surrogate_gradient_is_the_vimco_formula(sbn, flat_grad):
    loss = VIMCO(sbn.q, sbn.p, n_samples=3)
    params = [*sbn.q.parameters(), *sbn.p.parameters()]
    torch.manual_seed(5)
    got = flat_grad(loss(sbn.x), params)
    # same draws again, gradient written out: sum_k w_k grad log w_k + sum_k (L - L_-k) grad log q_k
    torch.manual_seed(5)
    q = sbn.q(sbn.x)
    z = q.sample(3)
    log_q = q.log_prob(z)
    log_w = sbn.p(sbn.x, z).log_prob(sbn.x, z) - log_q
    signal = log_mean_exp(log_w.detach()).unsqueeze(1) - naive_leave_one_out(log_w.detach())
    weights = torch.softmax(log_w.detach(), dim=1)
    surrogate = (weights * log_w).sum(1) + (signal * log_q).sum(1)
    torch.testing.assert_close(got, flat_grad(-surrogate.mean(), params))


def test_fewer_than_two_samples_are_refused(linear_gaussian):
    m = linear_gaussian
    with pytest.raises(ValueError, match=r"VIMCO: expected n_samples >= 2, got 1"):
        VIMCO(m.q, m.p, n_samples=1)
    with pytest.raises(TypeError, match="VIMCO: expected n_samples to be an int"):
        VIMCO(m.q, m.p, n_samples=2.0)


def test_zero_weight_samples_get_no_weight_and_no_nan(linear_gaussian, truncated):
    m = linear_gaussian
    # log p = -inf where z_0 > 0: about half of the samples; some data points keep only one
    # sample (whose baseline then falls back to zero), some none (bound -inf, no gradient)
    p = truncated(m.p, threshold=0.0)
    loss = VIMCO(m.q, p, n_samples=3)
    torch.manual_seed(6)
    xr = m.x.repeat(50, 1)
    loss(xr).backward()
    zero = torch.isneginf(loss.log_p_)
    n_finite = (~zero).sum(1)
    assert (n_finite == 0).any() and (n_finite == 1).any() and (n_finite >= 2).any()
    assert torch.isfinite(loss.learning_signal_).all()
    for param in [*m.q.parameters(), *p.parameters()]:
        assert torch.isfinite(param.grad).all()
    # the bound counts only the samples inside the support
    finite_w = (loss.log_p_ - loss.log_q_).masked_fill(zero, -math.inf)
    torch.testing.assert_close(loss.bound_, log_mean_exp(finite_w))
    assert torch.isfinite(loss.bound_[n_finite > 0]).all()


def test_nan_log_weights_raise_naming_the_tensor(linear_gaussian, truncated):
    m = linear_gaussian
    bad = truncated(m.p, threshold=0.0, fill=math.nan)
    with pytest.raises(ValueError, match=r"VIMCO: log p\(x, z\) contains \d+ NaN"):
        VIMCO(m.q, bad, n_samples=4)(m.x)


def test_float32(sbn):
    q, p, x = sbn.q.float(), sbn.p.float(), sbn.x.float()
    value = VIMCO(q, p, n_samples=4)(x)
    value.backward()
    assert value.dtype == torch.float32
    assert all(torch.isfinite(param.grad).all() for param in [*q.parameters(), *p.parameters()])
