"""Classic wake-sleep: p learns from q's samples, q from p's dreams."""

import math

import pytest
import torch
from torch.distributions import kl_divergence

from bbvae.losses.wake_sleep import WakeSleep
from bbvae.models import GaussianInfNet


def _grads(module):
    return [None if p.grad is None else p.grad.clone() for p in module.parameters()]


@pytest.mark.parametrize("k", [1, 3])
def test_gradients_are_the_wake_and_sleep_phases(linear_gaussian, k):
    m = linear_gaussian
    loss = WakeSleep(m.q, m.p, n_samples=k)
    torch.manual_seed(1)
    value = loss(m.x)
    value.backward()
    got_q, got_p = _grads(m.q), _grads(m.p)
    # the value is the ELBO estimate of the wake samples
    elbo = (loss.log_p_ - loss.log_q_).mean(dim=1)
    torch.testing.assert_close(loss.bound_, elbo)
    torch.testing.assert_close(value.detach(), -elbo.mean())
    assert loss.loss_history_ == pytest.approx([-elbo.mean().item()])

    # the same draws, each phase written out
    m.q.zero_grad(set_to_none=True)
    m.p.zero_grad(set_to_none=True)
    torch.manual_seed(1)
    z = m.q(m.x).sample(k).detach()
    wake = m.p(m.x, z).log_prob(m.x, z).mean()  # theta only
    x_sleep, z_sleep = m.p.sample(m.x.shape[0])
    sleep = m.q(x_sleep).log_prob(z_sleep.unsqueeze(1)).mean()  # phi only
    wake.neg().backward()
    ref_p = _grads(m.p)
    assert all(g is None for g in _grads(m.q))  # q gets nothing from the wake phase
    sleep.neg().backward()
    for got, ref in zip(got_p, ref_p):
        torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-12)
    for got, ref in zip(got_q, _grads(m.q)):
        torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-12)


def test_sleep_phase_fits_q_to_the_posterior(linear_gaussian):
    m = linear_gaussian
    q = GaussianInfNet(m.p.x_dim, m.p.z_dim, covariance="full").double()  # contains p(z|x)
    loss = WakeSleep(q, m.p)
    opt = torch.optim.Adam(q.parameters(), lr=0.03)  # q only: p stays fixed

    def kl():
        with torch.no_grad():
            return kl_divergence(q(m.x).distribution(), m.p.exact_posterior(m.x)).mean().item()

    before = kl()
    torch.manual_seed(2)
    for _ in range(150):
        opt.zero_grad(set_to_none=True)
        loss(m.x).backward()
        opt.step()
    assert kl() < 0.2 * before, (before, kl())


def test_training_improves_the_exact_log_likelihood(sbn):
    loss = WakeSleep(sbn.q, sbn.p, n_samples=2)
    x = sbn.p.sample(64)[0]  # data from the model; then start p from elsewhere
    with torch.no_grad():
        for param in sbn.p.parameters():
            param.mul_(0.1)
    before = sbn.p.exact_log_prob(x).mean().item()
    opt = torch.optim.Adam(loss.parameters(), lr=0.05)
    torch.manual_seed(3)
    for _ in range(100):
        opt.zero_grad(set_to_none=True)
        loss(x).backward()
        opt.step()
    after = sbn.p.exact_log_prob(x).mean().item()
    assert after > before + 0.3, (before, after)


def test_nan_log_weights_raise_naming_the_tensor(linear_gaussian, truncated):
    m = linear_gaussian
    bad = truncated(m.p, threshold=0.0, fill=math.nan)
    with pytest.raises(ValueError, match=r"WakeSleep: log p\(x, z\) contains \d+ NaN"):
        WakeSleep(m.q, bad, n_samples=4)(m.x)


def test_float32(sbn):
    q, p, x = sbn.q.float(), sbn.p.float(), sbn.x.float()
    value = WakeSleep(q, p)(x)
    value.backward()
    assert value.dtype == torch.float32
    assert all(torch.isfinite(param.grad).all() for param in [*q.parameters(), *p.parameters()])
