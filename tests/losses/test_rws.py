"""Reweighted wake-sleep: each parameter set gets its own phase's gradient; wake-phi finds p(z|x)."""

import math

import pytest
import torch
from torch.distributions import kl_divergence

from bbvae.losses.base import log_mean_exp
from bbvae.losses.iwae import IWAE
from bbvae.losses.rws import PHASES, RWS
from bbvae.models import GaussianInfNet

K = 4


@pytest.fixture
def full_q(linear_gaussian):
    """A full-covariance q away from the exact posterior (its sampler is rsample under no_grad,
    so ``sample`` and ``rsample`` give the same draws for the same seed)."""
    p = linear_gaussian.p
    a, c, cov = (t.detach() for t in p.posterior_params())
    q = GaussianInfNet(p.x_dim, p.z_dim, covariance="full").double()
    q.set_affine(a + 0.3, c - 0.5, torch.linalg.cholesky(cov) * 1.5)
    return q


def _grads(module):
    return [None if p.grad is None else p.grad.clone() for p in module.parameters()]


def _run(loss, x, seed):
    """Gradients of one call: (q's, p's), from zeroed gradients."""
    loss.inf_net.zero_grad(set_to_none=True)
    loss.gen_model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    loss(x).backward()
    return _grads(loss.inf_net), _grads(loss.gen_model)


def _assert_grads_equal(got, expected):
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        if e is None:
            assert g is None or (g == 0).all()
        else:
            torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-12)


def test_wake_theta_is_the_iwae_gradient_for_p(linear_gaussian, full_q):
    m = linear_gaussian
    rws, iwae = RWS(full_q, m.p, n_samples=K), IWAE(full_q, m.p, n_samples=K)
    _, p_rws = _run(rws, m.x, seed=1)
    _, p_iwae = _run(iwae, m.x, seed=1)
    torch.testing.assert_close(rws.log_q_, iwae.log_q_)  # same draws
    _assert_grads_equal(p_rws, p_iwae)
    # the reported bound is the IWAE bound
    torch.testing.assert_close(rws.bound_, iwae.bound_)
    torch.testing.assert_close(rws.bound_, log_mean_exp(rws.log_p_ - rws.log_q_))
    assert rws.loss_history_ == pytest.approx([-rws.bound_.mean().item()])


def _reference(q, p, x, seed, phases):
    """The phases' surrogates written out on the same draws: (q's grads, p's grads)."""
    q.zero_grad(set_to_none=True)
    p.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    z = q(x).sample(K)
    log_q = q.log_prob(z)
    log_p = p(x, z).log_prob(x, z)
    weights = torch.softmax((log_p - log_q).detach(), dim=1)
    objective = torch.zeros((), dtype=x.dtype)
    if "wake_theta" in phases:
        objective = objective + (weights * log_p).sum(1).mean()
    if "wake_phi" in phases:
        objective = objective + (weights * log_q).sum(1).mean()
    x_sleep, z_sleep = p.sample(x.shape[0])
    if "sleep_phi" in phases:
        objective = objective + q(x_sleep).log_prob(z_sleep.unsqueeze(1)).mean()
    if objective.requires_grad:
        (-objective).backward()
    return _grads(q), _grads(p)


@pytest.mark.parametrize(
    "phases",
    [
        ("wake_theta", "wake_phi"),
        ("wake_theta",),
        ("wake_phi",),
        ("sleep_phi",),
        ("wake_theta", "wake_phi", "sleep_phi"),
        ("wake_phi", "sleep_phi"),
    ],
)
def test_each_parameter_set_gets_only_its_phases_gradient(linear_gaussian, full_q, phases):
    m = linear_gaussian
    q_got, p_got = _run(RWS(full_q, m.p, n_samples=K, phases=phases), m.x, seed=2)
    q_ref, p_ref = _reference(full_q, m.p, m.x, seed=2, phases=phases)
    _assert_grads_equal(q_got, q_ref)
    _assert_grads_equal(p_got, p_ref)
    if "wake_theta" not in phases:
        assert all(g is None for g in p_got)
    if phases == ("wake_theta",):
        assert all(g is None for g in q_got)


def test_combined_phases_are_the_sum_of_single_phases(linear_gaussian, full_q):
    m = linear_gaussian
    q_both, p_both = _run(RWS(full_q, m.p, n_samples=K), m.x, seed=3)
    _, p_theta = _run(RWS(full_q, m.p, n_samples=K, phases=("wake_theta",)), m.x, seed=3)
    q_phi, _ = _run(RWS(full_q, m.p, n_samples=K, phases=("wake_phi",)), m.x, seed=3)
    _assert_grads_equal(p_both, p_theta)
    _assert_grads_equal(q_both, q_phi)


def _mean_kl_to_posterior(q, p, x):
    with torch.no_grad():
        return kl_divergence(q(x).distribution(), p.exact_posterior(x)).mean().item()


@pytest.mark.parametrize("estimator", ["default", "dreg"])
def test_wake_phi_moves_q_to_the_exact_posterior(linear_gaussian, full_q, estimator):
    m = linear_gaussian
    loss = RWS(full_q, m.p, n_samples=8, estimator=estimator)
    opt = torch.optim.Adam(full_q.parameters(), lr=0.03)  # q only
    before = _mean_kl_to_posterior(full_q, m.p, m.x)
    torch.manual_seed(4)
    for _ in range(150):
        opt.zero_grad(set_to_none=True)
        loss(m.x).backward()
        opt.step()
    after = _mean_kl_to_posterior(full_q, m.p, m.x)
    assert after < 0.2 * before, (before, after)


def test_dreg_keeps_p_gradient_and_the_expected_q_gradient(linear_gaussian, full_q, averaged_gradient):
    m = linear_gaussian
    # same draws: p's gradient is wake-theta in both
    _, p_default = _run(RWS(full_q, m.p, n_samples=K), m.x, seed=5)
    _, p_dreg = _run(RWS(full_q, m.p, n_samples=K, estimator="dreg"), m.x, seed=5)
    _assert_grads_equal(p_dreg, p_default)
    # q's gradient: same expectation, compared with a two-sample standard error (4 se)
    params = list(full_q.parameters())
    torch.manual_seed(6)
    mean_d, se_d = averaged_gradient(RWS(full_q, m.p, n_samples=K, estimator="dreg"), m.x, params, 500, 40)
    mean_s, se_s = averaged_gradient(RWS(full_q, m.p, n_samples=K), m.x, params, 500, 40)
    se = (se_d**2 + se_s**2).sqrt()
    assert se.norm() < 0.05 * mean_s.norm()
    assert ((mean_d - mean_s).abs() <= 4 * se).all(), ((mean_d - mean_s) / se).abs().max()
    assert se_d.norm() < se_s.norm()  # and the doubly reparametrized one is less noisy


def test_dreg_without_wake_theta_leaves_p_without_gradient(linear_gaussian, full_q):
    m = linear_gaussian
    q_dreg, p_dreg = _run(RWS(full_q, m.p, n_samples=K, phases=("wake_phi",), estimator="dreg"), m.x, 7)
    q_both, _ = _run(RWS(full_q, m.p, n_samples=K, estimator="dreg"), m.x, 7)
    _assert_grads_equal(q_dreg, q_both)
    for g in p_dreg:  # cancelled by a second evaluation of p: zero up to rounding
        assert g is None or g.abs().max() < 1e-12


def test_settings_are_validated(linear_gaussian, sbn):
    m = linear_gaussian
    with pytest.raises(ValueError, match=r"RWS: expected n_samples >= 2, got 1"):
        RWS(m.q, m.p, n_samples=1)
    with pytest.raises(ValueError, match=r"RWS: unknown phase\(s\) \['sleep_theta'\]; valid phases are"):
        RWS(m.q, m.p, phases=("wake_theta", "sleep_theta"))
    with pytest.raises(ValueError, match="wake_theta.*wake_phi.*sleep_phi"):
        RWS(m.q, m.p, phases=("wake",))
    with pytest.raises(ValueError, match="at least one phase"):
        RWS(m.q, m.p, phases=())
    with pytest.raises(ValueError, match="at most once"):
        RWS(m.q, m.p, phases=("wake_phi", "wake_phi"))
    with pytest.raises(TypeError, match="expected phases to be a tuple"):
        RWS(m.q, m.p, phases="wake_phi")
    with pytest.raises(ValueError, match=r"RWS: expected estimator in \('default', 'dreg'\), got 'stl'"):
        RWS(m.q, m.p, estimator="stl")
    with pytest.raises(TypeError, match=r"RWS\(estimator='dreg'\) needs a reparametrizable q"):
        RWS(sbn.q, sbn.p, estimator="dreg")(sbn.x)
    assert PHASES == ("wake_theta", "wake_phi", "sleep_phi")


@pytest.mark.parametrize("estimator", ["default", "dreg"])
def test_zero_weight_samples_get_no_weight_and_no_nan(linear_gaussian, full_q, truncated, estimator):
    p = truncated(linear_gaussian.p, threshold=0.0)  # log p = -inf where z_0 > 0
    loss = RWS(full_q, p, n_samples=3, estimator=estimator)
    torch.manual_seed(8)
    loss(linear_gaussian.x.repeat(50, 1)).backward()
    zero = torch.isneginf(loss.log_p_)
    assert zero.any() and (zero.sum(1) == 3).any() and (zero.sum(1) < 3).any()
    assert (loss.weights_[zero] == 0).all() and not torch.isnan(loss.weights_).any()
    for param in [*full_q.parameters(), *p.parameters()]:
        assert torch.isfinite(param.grad).all()


def test_nan_log_weights_raise_naming_the_tensor(linear_gaussian, truncated):
    m = linear_gaussian
    bad = truncated(m.p, threshold=0.0, fill=math.nan)
    with pytest.raises(ValueError, match=r"RWS: log p\(x, z\) contains \d+ NaN"):
        RWS(m.q, bad, n_samples=4)(m.x)


def test_float32_and_binary_latents(sbn):
    q, p, x = sbn.q.float(), sbn.p.float(), sbn.x.float()
    value = RWS(q, p, n_samples=4, phases=PHASES)(x)
    value.backward()
    assert value.dtype == torch.float32
    assert all(torch.isfinite(param.grad).all() for param in [*q.parameters(), *p.parameters()])
