"""GaussianHMM: the Kalman likelihood, the proposals, SMC's unbiasedness and FIVO versus IWAE."""

from __future__ import annotations

import math

import pytest
import torch

from bbvae.sequential import GaussianHMM, run_particles, smc


@pytest.mark.parametrize("z_dim, x_dim, n_steps", [(1, 1, 4), (2, 3, 5), (3, 2, 3)])
def test_kalman_matches_dense_gaussian(seq, z_dim, x_dim, n_steps):
    model = seq.make_ghmm(z_dim, x_dim, seed=z_dim)
    x, _ = model.sample(6, n_steps)
    exact = model.exact_log_prob(x)
    assert exact.shape == (6,)
    torch.testing.assert_close(exact.detach(), seq.dense_ghmm_log_prob(model, x), rtol=1e-10, atol=1e-10)


def test_kalman_with_lengths_scores_only_the_prefix(seq):
    model = seq.make_ghmm()
    x, _ = model.sample(3, 6)
    lengths = torch.tensor([6, 2, 4])
    exact = model.exact_log_prob(x, lengths).detach()
    for b, n in enumerate(lengths.tolist()):
        ref = seq.dense_ghmm_log_prob(model, x[b : b + 1, :n])
        torch.testing.assert_close(exact[b : b + 1], ref, rtol=1e-10, atol=1e-10)
    garbage = x.clone()
    garbage[1, 2:] = 1e3
    assert torch.equal(model.exact_log_prob(garbage, lengths).detach(), exact)


def test_sample_shapes_and_first_step_covariance(seq):
    model = seq.make_ghmm(2, 3)
    x, z = model.sample(20000, 2)
    assert x.shape == (20000, 2, 3) and z.shape == (20000, 2, 2)
    c, s0, _, sr = model.emission.detach(), *(s.detach() for s in model._noise())
    cov = c @ torch.diag(s0**2) @ c.T + torch.diag(sr**2)
    emp = torch.cov(x[:, 0].T)
    # entries of a sample covariance have sd about sqrt((s_ii s_jj + s_ij^2) / n)
    se = ((cov.diag().outer(cov.diag()) + cov**2) / 20000).sqrt()
    assert ((emp - cov).abs() < 5 * se).all()


def test_optimal_proposal_weight_is_the_predictive(seq):
    model = seq.make_ghmm(2, 3, proposal="optimal")
    x, _ = model.sample(4, 1)
    run = run_particles(model, x, 7)
    log_w = (run.log_p - run.log_q).detach()
    # with one step the weight p(x_1 | z_0) = p(x_1) does not depend on the particle
    torch.testing.assert_close(log_w, model.exact_log_prob(x).detach().unsqueeze(1).expand(4, 7))
    # and for longer sequences the particles' weights at step t depend on z_{t-1} only: with
    # K = 1 and always resampling the SMC estimate is still exact at T = 1
    result = smc(model, x, 3, ess_threshold=1.0)
    torch.testing.assert_close(result.log_z.detach(), model.exact_log_prob(x).detach())


def set_network_near_optimal(model, scale_factor, noise):
    """Affine network weights close to p(z_t | z_{t-1}, x_t) for t > 1 (the unbiasedness test
    needs a proposal whose tails cover the posterior's, else Z-hat / p(x) has no usable SE)."""
    zd = model.z_dim
    with torch.no_grad():
        terms = model._optimal_terms()
        model.proposal_z.weight[:zd] = terms["next_gain_prior"] @ model.transition
        model.proposal_x.weight[:zd] = terms["next_gain_x"]
        sd = scale_factor * (terms["next_scale_tril"] @ terms["next_scale_tril"].T).diag().sqrt()
        model.proposal_x.bias[zd:] = torch.log(torch.expm1(sd)) - math.log(math.e - 1)
        for param in (model.proposal_x.weight, model.proposal_z.weight):
            param.add_(noise * torch.randn_like(param))


@pytest.mark.parametrize("proposal", ["prior", "optimal", "network"])
def test_smc_is_unbiased(seq, proposal):
    # Z-hat / p(x) has mean 1; 20000 independent runs as a batch of copies; |mean - 1| < 4 se.
    model = seq.make_ghmm(2, 2, proposal=proposal, seed=3)
    torch.manual_seed(1)
    if proposal == "network":  # near the optimal proposal, with 1.5x its scale, perturbed
        set_network_near_optimal(model, scale_factor=1.5, noise=0.1)
    x, _ = model.sample(1, 5)
    n = 20000
    with torch.no_grad():
        result = smc(model, x.expand(n, -1, -1), 4, ess_threshold=0.5)
        ratio = torch.exp(result.log_z - model.exact_log_prob(x))
    assert result.resampled.any()
    mean, se = ratio.mean(), ratio.std() / math.sqrt(n)
    assert abs(mean - 1) < 4 * se, (float(mean), float(se))


def test_fivo_with_many_particles_is_tight(seq):
    # K = 1000 with the optimal proposal: within 0.01 nats per step of log p(x), and below it
    # in expectation (mean gap < 4 se above zero).
    model = seq.make_ghmm(2, 3, proposal="optimal", seed=5)
    torch.manual_seed(2)
    n_steps = 10
    x, _ = model.sample(8, n_steps)
    with torch.no_grad():
        reps = 4
        result = smc(model, x.repeat(reps, 1, 1), 1000, ess_threshold=0.5)
        gap = result.log_z - model.exact_log_prob(x).repeat(reps)
    assert gap.abs().max() / n_steps < 0.01
    mean, se = gap.mean(), gap.std() / math.sqrt(gap.numel())
    assert mean < 4 * se


def test_fivo_beats_iwae_on_long_sequences(seq):
    # T = 100, K = 4, bootstrap proposal: resampling keeps the estimate's variance in check,
    # and the mean log Z-hat of FIVO exceeds IWAE's by far more than its standard error.
    model = seq.make_ghmm(2, 3, proposal="prior", seed=7)
    torch.manual_seed(3)
    x, _ = model.sample(4, 100)
    reps = 50
    xs = x.repeat(reps, 1, 1)
    with torch.no_grad():
        fivo = smc(model, xs, 4, ess_threshold=0.5).log_z
        iwae = smc(model, xs, 4, ess_threshold=0.0).log_z
        exact = model.exact_log_prob(x).repeat(reps)
    diff = fivo - iwae
    mean, se = diff.mean(), diff.std() / math.sqrt(diff.numel())
    assert mean > 10 * se and mean > 5.0, (float(mean), float(se))
    assert (fivo - exact).mean() < 0 and (iwae - exact).mean() < 0


def test_network_proposal_is_trainable(seq):
    model = seq.make_ghmm(2, 3, proposal="network", hidden=(8,))
    x, _ = model.sample(3, 4)
    with torch.no_grad():
        for param in model.proposal_rest.parameters():
            param.add_(0.3 * torch.randn_like(param))
    run = run_particles(model, x, 5)
    (run.log_p - run.log_q).mean().backward()
    for param in (model.proposal_x.weight, model.proposal_z.weight, model.transition, model.emission):
        assert param.grad is not None and param.grad.abs().sum() > 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dtypes_follow_the_parameters(seq, dtype):
    model = seq.make_ghmm(2, 3, proposal="optimal", dtype=dtype)
    x, z = model.sample(2, 3)
    assert x.dtype == dtype and z.dtype == dtype
    result = smc(model, x, 5)
    assert result.log_z.dtype == dtype and model.exact_log_prob(x).dtype == dtype


_GENERATIVE = ("init_loc", "init_log_scale", "transition", "transition_log_scale", "emission",
               "emission_log_scale")  # fmt: skip


def test_full_covariance_proposal_contains_the_optimal_one(seq):
    # With an affine network, the 'full' family holds p(z_t | z_{t-1}, x_t) for t > 1: set to it,
    # its log q and log p equal the closed-form optimal proposal's at every (z_{t-1}, z_t); the
    # diagonal family cannot hold it (the optimal covariance is not diagonal here).
    opt = seq.make_ghmm(2, 3, proposal="optimal", seed=4)
    full = GaussianHMM(2, 3, proposal="network", covariance="full").double()
    assert full.proposal_x.out_features == 2  # the network gives the mean only
    torch.testing.assert_close(full.proposal_scale_tril(), torch.eye(2, dtype=torch.float64))
    with torch.no_grad():
        for name in _GENERATIVE:
            getattr(full, name).copy_(getattr(opt, name))
        terms = opt._optimal_terms()
        full.proposal_z.weight.copy_(terms["next_gain_prior"] @ opt.transition)
        full.proposal_x.weight.copy_(terms["next_gain_x"])
        full.proposal_x.bias.zero_()
        tril = terms["next_scale_tril"]
        full.proposal_scale_tril_raw.copy_(torch.tril(tril, -1) + torch.diag_embed(tril.diagonal().log()))
    cov = tril @ tril.T
    assert abs(float(cov[0, 1])) > 0.05 * float(cov.diag().prod().sqrt())
    torch.manual_seed(0)
    x, _ = opt.sample(4, 3)
    z_prev = torch.randn(4, 5, 2, dtype=torch.float64)
    z = torch.randn(4, 5, 2, dtype=torch.float64)
    a = full.step(z_prev, full.encode(x)[1], z=z)
    b = opt.step(z_prev, opt.encode(x)[1], z=z)
    torch.testing.assert_close(a.log_q, b.log_q, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(a.log_p, b.log_p, rtol=1e-10, atol=1e-10)
    # Sampled: draws follow the shared factor (their spread around the mean is tril @ eps).
    torch.manual_seed(1)
    drawn = full.step(z_prev[:1, :1].expand(1, 20000, 2), full.encode(x[:1])[1]).z[0]
    emp = torch.cov(drawn.T)
    se = ((cov.diag().outer(cov.diag()) + cov**2) / 20000).sqrt()
    assert ((emp - cov).abs() < 5 * se).all()


def test_full_covariance_network_trains_and_smc_runs(seq):
    model = seq.make_ghmm(2, 3, proposal="network", covariance="full", hidden=(8,))
    x, _ = model.sample(3, 4)
    with torch.no_grad():
        for param in model.proposal_rest.parameters():
            param.add_(0.3 * torch.randn_like(param))
    run = run_particles(model, x, 5)
    (run.log_p - run.log_q).mean().backward()
    assert model.proposal_scale_tril_raw.grad.tril(-1).abs().sum() > 0  # the correlation is learned
    assert model.proposal_scale_tril_raw.grad.triu(1).abs().sum() == 0  # the upper triangle is unused
    result = smc(model, x, 4)
    assert torch.isfinite(result.log_z).all()


def test_bad_arguments():
    with pytest.raises(ValueError, match="proposal"):
        GaussianHMM(2, 3, proposal="bootstrap")
    with pytest.raises(ValueError, match="expected covariance 'diag' or 'full', got 'block'"):
        GaussianHMM(2, 3, proposal="network", covariance="block")
    with pytest.raises(ValueError, match="covariance='full' is an option of the 'network' proposal, got "
                       "proposal='prior'"):  # fmt: skip
        GaussianHMM(2, 3, covariance="full")
    with pytest.raises(ValueError, match="z_dim"):
        GaussianHMM(0, 3)
    model = GaussianHMM(2, 3)
    with pytest.raises(ValueError, match=r"expected x of shape \[batch, T, 3\], got \[2, 4, 2\]"):
        model.exact_log_prob(torch.zeros(2, 4, 2))
    with pytest.raises(ValueError, match=r"\[batch, T, 3\]"):
        run_particles(model, torch.zeros(2, 4), 3)
