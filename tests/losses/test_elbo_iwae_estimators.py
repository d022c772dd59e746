"""Sticking-the-landing (STL) and doubly-reparametrized (DReG) gradients on the linear-Gaussian model.

Everything runs in float64. Statistical checks average many independent gradient estimates
(many copies of the data in one batch, over repeated calls) and allow 4 standard errors per
coordinate, the SE estimated from the repetitions.
"""

from __future__ import annotations

import math

import torch

from bbvae.diagnostics import gradient_stats
from bbvae.losses.elbo import ELBO
from bbvae.losses.iwae import IWAE
from bbvae.models import GaussianInfNet, LinearGaussianGenModel

D, L = 4, 2


def make_model(seed=0):
    torch.manual_seed(seed)
    p = LinearGaussianGenModel(L, D, noise_std=0.7).double()
    x, _ = p.sample(3)
    return p, x


def shifted_q(p, shift=0.4, scale=1.6):
    """A full-covariance q of the exact posterior's form, with its mean shifted and scale inflated."""
    a, c, cov = (t.detach() for t in p.posterior_params())
    q = GaussianInfNet(D, L, covariance="full").double()
    q.set_affine(a, c + shift, torch.linalg.cholesky(cov) * scale)
    return q


def diag_q(seed=1):
    """A diagonal-Gaussian q with an MLP mean (not of the posterior's form)."""
    torch.manual_seed(seed)
    return GaussianInfNet(D, L, hidden=(5,), covariance="diag").double()


def flat_grad(value, params):
    grads = torch.autograd.grad(value, params, allow_unused=True)
    return torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1) for p, g in zip(params, grads)])


def repeated_gradient(loss, x, params, n_rep):
    """``n_rep`` independent gradient estimates on batch ``x``: their mean and standard error."""
    draws = torch.stack([flat_grad(loss(x), params) for _ in range(n_rep)])
    return draws.mean(0), draws.std(0) / math.sqrt(n_rep)


def exact_elbo_gradient(p, q, x, params):
    """Autograd gradient of the closed-form negative ELBO averaged over the batch."""
    q(x)
    if "scale" in q.params_:
        cov = torch.diag_embed(q.params_["scale"].square())
    else:
        cov = q.params_["scale_tril"] @ q.params_["scale_tril"].T
    return flat_grad(-p.expected_elbo(x, q.params_["loc"], cov).mean(), params)


def test_stl_elbo_gradient_is_unbiased():
    p, x = make_model()
    for q in (diag_q(), shifted_q(p)):
        params = [*q.parameters(), *p.parameters()]
        xr = x.repeat(100, 1)  # 100 independent draws per data point per call
        exact = exact_elbo_gradient(p, q, xr, params)
        torch.manual_seed(2)
        mean, se = repeated_gradient(ELBO(q, p, estimator="stl"), xr, params, n_rep=60)
        # Unbiased: every coordinate within 4 SE; coordinates with no gradient at all are 0.
        err = (mean - exact).abs()
        constant = se == 0  # the upper triangle of the full scale_tril
        assert torch.all(err[constant] < 1e-12)
        assert torch.all(err[~constant] < 4 * se[~constant]), (err / se).max()
        # the test has power: the noise is small against the gradient
        assert se.max() < 0.2 * exact.abs().max()


def test_stl_gradient_for_q_vanishes_for_every_draw_at_the_exact_posterior():
    p, x = make_model()
    q = p.exact_inf_net()
    q_params = list(q.parameters())
    torch.manual_seed(3)
    for loss in (ELBO(q, p, n_samples=3, estimator="stl"), IWAE(q, p, n_samples=5, estimator="stl")):
        for _ in range(5):  # single draws, not averages
            value = loss(x)
            assert flat_grad(value, q_params).abs().max() < 1e-10
            # the bound itself is log p(x) for every draw: log p(x, z) - log q(z|x) is constant
            torch.testing.assert_close(loss.bound_, p.exact_log_prob(x).detach(), rtol=0, atol=1e-10)
    # while the plain pathwise gradient is zero only on average: single draws are noisy
    reparam = ELBO(q, p, n_samples=3, estimator="reparam")
    assert flat_grad(reparam(x), q_params).abs().max() > 1e-3
    # DReG inherits the property (its q-gradient is sum_k w_k^2 d log w_k / dz dz/dphi)
    dreg = IWAE(q, p, n_samples=5, estimator="dreg")
    assert flat_grad(dreg(x), q_params).abs().max() < 1e-10


def test_dreg_gradient_for_p_equals_the_reparam_gradient_draw_by_draw():
    # Both give sum_k w_k grad_theta log p(x, z_k) for the same z_k (same seed).
    p, x = make_model()
    q = diag_q()
    p_params = list(p.parameters())
    for seed in range(3):
        torch.manual_seed(seed)
        g_reparam = flat_grad(IWAE(q, p, n_samples=8)(x), p_params)
        torch.manual_seed(seed)
        g_dreg = flat_grad(IWAE(q, p, n_samples=8, estimator="dreg")(x), p_params)
        torch.testing.assert_close(g_dreg, g_reparam, rtol=1e-10, atol=1e-12)


def test_dreg_gradient_equals_the_reparam_iwae_gradient_on_average():
    p, x = make_model()
    q = diag_q()
    params = [*q.parameters(), *p.parameters()]
    xr = x.repeat(50, 1)
    torch.manual_seed(4)
    mean_r, se_r = repeated_gradient(IWAE(q, p, n_samples=8), xr, params, n_rep=50)
    mean_d, se_d = repeated_gradient(IWAE(q, p, n_samples=8, estimator="dreg"), xr, params, n_rep=50)
    # 2500 draws per data point each; both unbiased for the IWAE gradient: two-sample 4 SE.
    se = torch.sqrt(se_r**2 + se_d**2)
    assert torch.all((mean_r - mean_d).abs() < 4 * se), ((mean_r - mean_d).abs() / se).max()
    # power: the noise is small against the gradient
    assert se.max() < 0.2 * mean_r.abs().max()


def test_dreg_has_higher_inference_network_snr_than_reparam_at_k64():
    p, x = make_model()
    x = x[:1]
    q = shifted_q(p)
    groups = {"inf_net": list(q.parameters())}
    torch.manual_seed(5)
    # SNR: mean over q's coordinates of |mean| / std over 100 single-batch gradient draws.
    reparam, dreg = IWAE(q, p, n_samples=64), IWAE(q, p, n_samples=64, estimator="dreg")
    snr_reparam = gradient_stats(reparam, x, 100, params=groups)["inf_net"].snr
    snr_dreg = gradient_stats(dreg, x, 100, params=groups)["inf_net"].snr
    # Rainforth et al. (2018): the pathwise IWAE q-gradient's SNR decays like 1/sqrt(K); DReG's
    # does not (Tucker et al. 2019). At K = 64 the gap is an order of magnitude; require 3x.
    assert snr_dreg > 3 * snr_reparam, (snr_dreg, snr_reparam)
