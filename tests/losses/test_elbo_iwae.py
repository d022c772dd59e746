"""ELBO and IWAE against the closed-form answers of the linear-Gaussian model."""

import math

import pytest
import torch

from bbvae.losses import ELBO, IWAE
from bbvae.models import GaussianInfNet, LinearGaussianGenModel

D, L = 4, 2


def make_model(seed=0, dtype=torch.float64):
    torch.manual_seed(seed)
    p = LinearGaussianGenModel(L, D, noise_std=0.7).to(dtype)
    x, _ = p.sample(6)
    return p, x


def worse_q(p, shift=0.4, scale=1.6):
    """A q with the exact posterior's form but a shifted mean and inflated covariance."""
    a, c, cov = (t.detach() for t in p.posterior_params())
    q = GaussianInfNet(D, L, covariance="full").to(p.weight.dtype)
    q.set_affine(a, c + shift, torch.linalg.cholesky(cov) * scale)
    return q


def q_loc_cov(q, x):
    q(x)
    tril = q.params_["scale_tril"]
    return q.params_["loc"], tril @ tril.T


@pytest.mark.parametrize("loss_cls", [ELBO, IWAE])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_exact_posterior_makes_bounds_tight(loss_cls, dtype):
    p, x = make_model(dtype=dtype)
    q = p.exact_inf_net()
    loss = loss_cls(q, p, n_samples=16)
    value = loss(x)
    assert value.dtype == dtype
    tol = 1e-4 if dtype == torch.float32 else 1e-10
    torch.testing.assert_close(loss.bound_, p.exact_log_prob(x).detach(), rtol=0, atol=tol)
    # every sample has the same weight p(x): the effective sample size is K
    torch.testing.assert_close(loss.ess_, torch.full_like(loss.ess_, 16.0), rtol=1e-3, atol=0)


def test_bounds_are_ordered_and_iwae_increases_with_k():
    p, x = make_model()
    q = worse_q(p)
    log_px = p.exact_log_prob(x).detach()
    n_rep = 4000  # independent evaluations of each bound per data point
    xr = x.repeat_interleave(n_rep, dim=0)  # [6 * n_rep, D]
    means, ses = {}, {}
    torch.manual_seed(1)
    for name, loss in [("elbo", ELBO(q, p, n_samples=1))] + [
        (k, IWAE(q, p, n_samples=k)) for k in (2, 8, 64)
    ]:
        with torch.no_grad():
            loss(xr)
        b = loss.bound_.view(6, n_rep)
        means[name], ses[name] = b.mean(1), b.std(1) / math.sqrt(n_rep)
    order = ["elbo", 2, 8, 64]
    for lo, hi in zip(order, order[1:]):
        se = torch.sqrt(ses[lo] ** 2 + ses[hi] ** 2)
        assert torch.all(means[hi] - means[lo] > -4 * se), (lo, hi)
    # strict improvement overall, far beyond noise, and never above log p(x)
    assert torch.all(means[64] - means["elbo"] > 10 * torch.sqrt(ses[64] ** 2 + ses["elbo"] ** 2))
    assert torch.all(means[64] <= log_px + 4 * ses[64])
    # the gap to log p(x) shrinks with K
    gaps = [float((log_px - means[k]).mean()) for k in order]
    assert gaps == sorted(gaps, reverse=True)


def test_iwae_one_sample_equals_elbo_on_same_draws():
    p, x = make_model()
    q = worse_q(p)
    torch.manual_seed(3)
    a = ELBO(q, p, n_samples=1)(x)
    torch.manual_seed(3)
    b = IWAE(q, p, n_samples=1)(x)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def test_analytic_kl_elbo_is_unbiased_for_exact_elbo():
    p, x = make_model()
    q = worse_q(p)
    exact = p.expected_elbo(x, *q_loc_cov(q, x)).detach()
    n_rep = 4000
    torch.manual_seed(4)
    loss = ELBO(q, p, n_samples=1, analytic_kl=True)
    with torch.no_grad():
        loss(x.repeat_interleave(n_rep, dim=0))
    b = loss.bound_.view(6, n_rep)
    se = b.std(1) / math.sqrt(n_rep)
    assert torch.all((b.mean(1) - exact).abs() < 4 * se)


def _flat_grads(params):
    return torch.cat([prm.grad.reshape(-1) for prm in params])


def _averaged_gradient(loss, x, params, n_rep):
    """R independent gradient estimates (each on the batch x): mean and SE per coordinate."""
    draws = []
    for _ in range(n_rep):
        for prm in params:
            prm.grad = None
        loss(x).backward()
        draws.append(_flat_grads(params))
    g = torch.stack(draws)
    return g.mean(0), g.std(0) / math.sqrt(n_rep)


@pytest.mark.parametrize("estimator", ["reparam", "score"])
def test_elbo_gradient_is_unbiased(estimator):
    p, x = make_model()
    q = worse_q(p)
    params = list(q.parameters()) + list(p.parameters())
    xr = x.repeat(200, 1)  # 200 copies: each call averages 200 independent draws per point
    # exact gradient of the batch-mean negative ELBO
    for prm in params:
        prm.grad = None
    (-p.expected_elbo(xr, *q_loc_cov(q, xr)).mean()).backward()
    exact = _flat_grads(params)
    torch.manual_seed(5)
    n_rep = 40 if estimator == "reparam" else 100
    mean, se = _averaged_gradient(ELBO(q, p, estimator=estimator), xr, params, n_rep)
    # Unbiased estimator: every coordinate within 4.5 standard errors (about 1e-5 false alarm
    # per coordinate; ~30 coordinates).
    err = (mean - exact).abs()
    constant = se == 0  # coordinates with no gradient at all (upper triangle of scale_tril)
    assert torch.all(err[constant] < 1e-12)
    z = err[~constant] / se[~constant]
    assert torch.all(z < 4.5), z.max()
    # and the test has power: the noise is small against the gradient itself
    assert se.max() < 0.25 * exact.abs().max()


def test_training_reaches_maximum_likelihood_and_tight_bound():
    torch.manual_seed(0)
    truth = LinearGaussianGenModel(L, D, noise_std=0.5).double()
    data, _ = truth.sample(400)
    # Probabilistic PCA has a closed-form maximum-likelihood fit (Tipping & Bishop 1999).
    centred = data - data.mean(0)
    cov = centred.T @ centred / data.shape[0]
    evals, evecs = torch.linalg.eigh(cov)  # ascending
    noise_var = evals[: D - L].mean()
    top_vals, top_vecs = evals[D - L :], evecs[:, D - L :]
    cov_ml = top_vecs @ torch.diag(top_vals - noise_var) @ top_vecs.T + noise_var * torch.eye(D)
    best = torch.distributions.MultivariateNormal(data.mean(0), cov_ml).log_prob(data).mean()

    p = LinearGaussianGenModel(L, D).double()
    q = GaussianInfNet(D, L, covariance="full").double()
    loss = IWAE(q, p, n_samples=8)
    opt = torch.optim.Adam(loss.parameters(), lr=0.03)
    for _ in range(1500):
        opt.zero_grad(set_to_none=True)
        loss(data).backward()
        opt.step()
    history = loss.loss_history_
    assert len(history) == 1500 and history[-1] < history[0]
    exact = p.exact_log_prob(data).mean().detach()
    tight = p.expected_elbo(data, *q_loc_cov(q, data)).mean().detach()
    assert best - exact < 0.05  # the model reached the maximum likelihood
    assert exact - tight < 0.05  # and the bound is tight to it (its exact ELBO)
    # the recorded history agrees: the last 100 steps average within 0.05 nats of -log p(x)
    assert abs(sum(history[-100:]) / 100 + float(exact)) < 0.05


def test_loss_history_does_not_sync_and_is_read_lazily():
    p, x = make_model()
    loss = ELBO(worse_q(p), p)
    for _ in range(3):
        loss(x)
    assert len(loss._history._pending) == 3  # kept as tensors until read
    values = loss.loss_history_
    assert len(values) == 3 and all(isinstance(v, float) for v in values)
    assert loss._history._pending == []
    assert loss.loss_history_ == values


def test_invalid_settings_are_rejected():
    p, _ = make_model()
    q = worse_q(p)
    with pytest.raises(ValueError, match="estimator"):
        ELBO(q, p, estimator="magic")
    with pytest.raises(ValueError, match="expected n_samples >= 1, got 0"):
        IWAE(q, p, n_samples=0)
    with pytest.raises(TypeError, match="expected inf_net to be an InfNet"):
        ELBO(object(), p)


def test_nan_log_weights_are_named():
    p, x = make_model()
    q = worse_q(p)

    class Broken(LinearGaussianGenModel):
        def log_prob(self, x, z):
            log_p = super().log_prob(x, z)
            return torch.where(torch.arange(3) == 1, float("nan"), log_p)

    broken = Broken(L, D).double()
    with pytest.raises(ValueError, match=r"IWAE: log p\(x, z\) contains 6 NaN value\(s\) out of 18"):
        IWAE(q, broken, n_samples=3)(x)
