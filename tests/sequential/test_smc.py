"""smc(): resampling schemes, the resampling rule, padding, ancestry and gradients through resampling."""

from __future__ import annotations

import math

import pytest
import torch

from bbvae.sequential import (
    multinomial_resampling,
    run_particles,
    smc,
    stratified_resampling,
    systematic_resampling,
)

SCHEMES = {
    "multinomial": multinomial_resampling,
    "systematic": systematic_resampling,
    "stratified": stratified_resampling,
}


def offspring_counts(ancestors: torch.Tensor, k: int) -> torch.Tensor:
    return torch.nn.functional.one_hot(ancestors, k).sum(dim=1).double()  # [B, K]


# ------------------------------------------------------------------------------ resampling
@pytest.mark.parametrize("name", list(SCHEMES))
def test_offspring_counts_have_the_right_expectation(name):
    # E[count_k] = K w_k; 20000 independent rows; |mean - K w| <= 4 se (se = 0 where the count
    # is deterministic, e.g. zero-weight particles, which are never drawn).
    torch.manual_seed(0)
    weights = torch.tensor([0.05, 0.3, 0.0, 0.15, 0.5], dtype=torch.float64)
    k, n = weights.numel(), 20000
    log_w = weights.log().expand(n, k) + 3.0  # unnormalised
    counts = offspring_counts(SCHEMES[name](log_w), k)
    assert counts.sum(dim=1).eq(k).all()
    mean, se = counts.mean(0), counts.std(0) / math.sqrt(n)
    assert ((mean - k * weights).abs() <= 4 * se + 1e-12).all(), (mean, se)
    assert counts[:, 2].eq(0).all()


def test_systematic_and_stratified_have_lower_offspring_variance():
    torch.manual_seed(1)
    weights = torch.tensor([0.05, 0.3, 0.1, 0.15, 0.4], dtype=torch.float64)
    k, n = weights.numel(), 20000
    log_w = weights.log().expand(n, k)
    var = {name: offspring_counts(fn(log_w), k).var(0).sum() for name, fn in SCHEMES.items()}
    # multinomial: sum_k K w_k (1 - w_k) = 3.46; the others are far below
    assert abs(var["multinomial"] - (k * weights * (1 - weights)).sum()) < 0.1
    assert var["systematic"] < 0.5 * var["multinomial"]
    assert var["stratified"] < 0.5 * var["multinomial"]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_resampling_uses_the_weights_dtype_and_a_generator(dtype):
    log_w = torch.randn(3, 6, dtype=dtype)
    for fn in SCHEMES.values():
        a = fn(log_w, generator=torch.Generator().manual_seed(5))
        b = fn(log_w, generator=torch.Generator().manual_seed(5))
        assert a.dtype == torch.long and a.shape == (3, 6) and torch.equal(a, b)
        assert ((a >= 0) & (a < 6)).all()


def test_a_dominant_particle_is_always_chosen():
    log_w = torch.tensor([[0.0, -math.inf, -math.inf, -math.inf]])
    for fn in SCHEMES.values():
        assert fn(log_w.expand(100, 4)).eq(0).all()


@pytest.mark.parametrize("gradient", ["none", "score", "stop_gradient"])
def test_all_zero_weights_are_named_and_give_minus_infinity(seq, gradient):
    # (finite gradients with a dead sequence: tests/losses/test_zero_likelihood_points.py; here the
    # emission's own derivative at x = inf is infinite, so only values are checked)
    model = seq.make_ghmm(2, 3)  # bootstrap proposal: the infinite x_t reaches only the emission
    torch.manual_seed(0)
    x, _ = model.sample(3, 5)
    x[1, 2, 0] = math.inf  # every particle of sequence 1 gets weight 0 at step 2
    with pytest.warns(RuntimeWarning, match="sequence 1 at step 2"):
        r = smc(model, x, 4, ess_threshold=1.0, gradient=gradient)
    assert torch.isneginf(r.log_z[1]) and torch.isfinite(r.log_z[[0, 2]]).all()
    assert r.ess[1, 2] == 0 and not r.resampled[1, 2:].any()  # a dead set is never resampled
    assert r.resampled[[0, 2], :4].all()


# ------------------------------------------------------------------------------ the filter
def test_result_shapes_and_resampling_rule(seq):
    model = seq.make_ghmm(2, 3)
    torch.manual_seed(0)
    x, _ = model.sample(4, 6)
    lengths = torch.tensor([6, 3, 1, 5])
    r = smc(model, x, 5, ess_threshold=1.0, lengths=lengths, return_latents=True)
    assert r.log_z.shape == (4,) and r.log_weights.shape == (4, 5)
    assert r.ess.shape == (4, 6) and r.resampled.shape == (4, 6) and r.ancestors.shape == (4, 6, 5)
    assert r.z.shape == (4, 5, 6, 2) and r.log_p.shape == (4, 5)
    # threshold 1: resampled at every valid step but each sequence's last
    expected = torch.arange(6) < (lengths - 1).unsqueeze(1)
    assert torch.equal(r.resampled, expected)
    assert ((r.ess >= 1 - 1e-9) & (r.ess <= 5 + 1e-9)).all()
    identity = torch.arange(5).expand(4, 6, 5)
    assert torch.equal(r.ancestors[~r.resampled], identity[~r.resampled])
    # even with equal weights (optimal proposal, first step: ESS = K exactly)
    model.proposal = "optimal"
    assert torch.equal(smc(model, x, 5, ess_threshold=1.0, lengths=lengths).resampled, expected)
    never = smc(model, x, 5, ess_threshold=0.0, lengths=lengths)
    assert not never.resampled.any() and torch.equal(never.ancestors, identity)


def test_ess_threshold_is_relative_to_k(seq):
    model = seq.make_ghmm(2, 3, proposal="prior")
    torch.manual_seed(1)
    x, _ = model.sample(8, 10)
    r = smc(model, x, 6, ess_threshold=0.5)
    steps = torch.arange(10) < 9
    torch.testing.assert_close(r.resampled, (r.ess < 3.0) & steps)


def test_never_resampling_is_iwae_on_the_same_draws(seq):
    model = seq.make_ghmm(2, 3, proposal="prior")
    x, _ = model.sample(4, 7)
    lengths = torch.tensor([7, 2, 5, 6])
    torch.manual_seed(3)
    r = smc(model, x, 6, ess_threshold=0.0, lengths=lengths)
    torch.manual_seed(3)
    run = run_particles(model, x, 6, lengths=lengths)
    log_w = run.log_p - run.log_q
    torch.testing.assert_close(r.log_z, torch.logsumexp(log_w, 1) - math.log(6), rtol=0, atol=1e-12)
    torch.testing.assert_close(r.log_weights, log_w, rtol=0, atol=1e-12)


def test_lineages_are_consistent_with_teacher_forced_scores(seq):
    model = seq.make_ghmm(2, 3, proposal="optimal")
    torch.manual_seed(4)
    x, _ = model.sample(3, 6)
    r = smc(model, x, 5, ess_threshold=1.0, return_latents=True)
    rescored = run_particles(model, x, 5, z=r.z)
    torch.testing.assert_close(rescored.log_p, r.log_p)
    torch.testing.assert_close(rescored.log_q, r.log_q)
    # the pytree reorder of a dict/tuple state (toy model): lines of z stay consistent too
    toy = seq.InputShiftModel().double()
    inputs = torch.randn(3, 4, 1, dtype=torch.float64)
    xt = torch.randn(3, 4, 1, dtype=torch.float64)
    rt = smc(toy, xt, 4, ess_threshold=1.0, inputs=inputs, return_latents=True)
    torch.testing.assert_close(run_particles(toy, xt, 4, inputs=inputs, z=rt.z).log_p, rt.log_p)


def test_log_z_is_the_sum_of_its_increments(seq):
    model = seq.make_ghmm(2, 3)
    x, _ = model.sample(3, 8)
    r = smc(model, x, 4)
    total = r.log_z_increments.sum(1) + torch.logsumexp(r.log_weights, 1) - math.log(4)
    torch.testing.assert_close(r.log_z, total)


def test_garbage_past_lengths_changes_nothing(seq):
    # Same seed: entries past each sequence's length may hold anything, the result is identical.
    model = seq.make_ghmm(2, 3, proposal="optimal")
    x, _ = model.sample(4, 6)
    lengths = torch.tensor([6, 2, 4, 1])
    garbage = x.clone()
    for b, n in enumerate(lengths.tolist()):
        garbage[b, n:] = 1e6 * torch.randn_like(garbage[b, n:])
    outs = []
    for data in (x, garbage):
        torch.manual_seed(7)
        outs.append(smc(model, data, 5, ess_threshold=0.7, lengths=lengths))
    for name in ("log_z", "log_weights", "ess", "resampled", "ancestors", "log_p", "log_q"):
        a, b = getattr(outs[0], name), getattr(outs[1], name)
        valid = torch.arange(6) < lengths.unsqueeze(1)
        if name == "ess":
            a, b = a[valid], b[valid]
        assert torch.equal(a, b), name


def test_padded_sequence_equals_the_truncated_one(seq):
    model = seq.make_ghmm(2, 3, proposal="prior")
    x, _ = model.sample(1, 8)
    torch.manual_seed(11)
    padded = smc(model, x, 6, lengths=torch.tensor([5]))
    torch.manual_seed(11)
    short = smc(model, x[:, :5].contiguous(), 6)
    torch.testing.assert_close(padded.log_z, short.log_z, rtol=0, atol=0)
    torch.testing.assert_close(padded.resampled[:, :5], short.resampled)


def test_side_inputs_reach_the_model(seq):
    toy = seq.InputShiftModel().double()
    torch.manual_seed(0)
    inputs = 3 * torch.randn(2, 3, 1, dtype=torch.float64)
    x = inputs + 0.3 + 2**0.5 * torch.randn(2, 3, 1, dtype=torch.float64)
    r = smc(toy, x, 3000, inputs=inputs)
    assert toy.seen_inputs is inputs
    exact = toy.exact_log_prob(x, inputs=inputs).detach()
    assert (r.log_z.detach() - exact).abs().max() < 0.05
    r0 = smc(toy, x, 3000)  # without the inputs the likelihood is far lower
    assert (r0.log_z.detach() < exact - 1).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_float32_and_float64(seq, dtype):
    model = seq.make_ghmm(2, 3, proposal="network", dtype=dtype)
    x, _ = model.sample(3, 4)
    r = smc(model, x, 4, ess_threshold=1.0, gradient="stop_gradient")
    assert r.log_z.dtype == dtype and r.ess.dtype == dtype
    r.log_z.sum().backward()
    assert model.proposal_x.weight.grad.dtype == dtype


def test_bad_arguments(seq):
    model = seq.make_ghmm(2, 3)
    x, _ = model.sample(2, 4)
    with pytest.raises(ValueError, match="ess_threshold in \\[0, 1\\], got 1.5"):
        smc(model, x, 4, ess_threshold=1.5)
    with pytest.raises(ValueError, match="resampling"):
        smc(model, x, 4, resampling="residual")
    with pytest.raises(ValueError, match="gradient"):
        smc(model, x, 4, gradient="reinforce")
    with pytest.raises(ValueError, match="multinomial"):
        smc(model, x, 4, resampling="systematic", gradient="score")
    with pytest.raises(ValueError, match="n_particles >= 1"):
        smc(model, x, 0)
    with pytest.raises(TypeError, match="SequentialModel"):
        smc(torch.nn.Linear(2, 2), x, 4)
    with pytest.raises(TypeError, match="x to be a torch.Tensor"):
        smc(model, x.tolist(), 4)
    with pytest.raises(ValueError, match=r"lengths of shape \[2\]"):
        smc(model, x, 4, lengths=torch.tensor([4, 4, 4]))
    with pytest.raises(TypeError, match="integer"):
        smc(model, x, 4, lengths=torch.tensor([4.0, 4.0]))
    with pytest.raises(ValueError, match=r"1 <= lengths <= T = 4, got lengths\[1\] = 5"):
        smc(model, x, 4, lengths=torch.tensor([4, 5]))
    with pytest.raises(ValueError, match=r"inputs of shape \[2, 4, ...\]"):
        smc(model, x, 4, inputs=torch.zeros(2, 3, 1))


# ---------------------------------------------------------------- gradients through resampling
def test_gradient_options_for_the_expected_likelihood_estimate(seq):
    """Unbiasedness for grad E[Z-hat] = grad p(x): divide by p(x) (a constant) and compare the
    averaged gradient of Z-hat / p(x) with grad log p(x) from the Kalman filter.

    20 groups of 5000 independent runs (T = 3, K = 2, bootstrap, resampling at every step); the
    group means give the mean and its se. "score" adds Z-hat * grad log P(ancestors) and
    "stop_gradient" needs nothing: both match within 4 se for every parameter. "none" drops the
    resampling terms and is biased: some parameter's gradient is off by more than 8 se (about
    30 se measured).
    """
    model = seq.make_ghmm(1, 1, proposal="prior", seed=11)
    torch.manual_seed(0)
    x, _ = model.sample(1, 3)
    params = [p for p in model.parameters()]
    exact = model.exact_log_prob(x)
    target = torch.cat([g.flatten() for g in torch.autograd.grad(exact.sum(), params)])
    groups, n = 20, 5000
    z_scores = {}
    for option in ("none", "score", "stop_gradient"):
        torch.manual_seed(1)
        grads = []
        for _ in range(groups):
            r = smc(model, x.expand(n, -1, -1), 2, ess_threshold=1.0, gradient=option)
            ratio = torch.exp(r.log_z - exact.detach())
            if option == "score":
                log_prob = r.ancestor_log_prob.sum(1)
                ratio = ratio + ratio.detach() * (log_prob - log_prob.detach())
            grads.append(torch.cat([g.flatten() for g in torch.autograd.grad(ratio.mean(), params)]))
        grads = torch.stack(grads)
        z_scores[option] = (grads.mean(0) - target) / (grads.std(0) / math.sqrt(groups))
    assert z_scores["score"].abs().max() < 4, z_scores["score"]
    assert z_scores["stop_gradient"].abs().max() < 4, z_scores["stop_gradient"]
    assert z_scores["none"].abs().max() > 8, z_scores["none"]


def test_stop_gradient_leaves_values_unchanged(seq):
    model = seq.make_ghmm(2, 3)
    x, _ = model.sample(3, 6)
    outs = {}
    for option in ("none", "score", "stop_gradient"):
        torch.manual_seed(2)
        outs[option] = smc(model, x, 4, ess_threshold=1.0, gradient=option)
    for option in ("score", "stop_gradient"):
        torch.testing.assert_close(outs[option].log_z, outs["none"].log_z, rtol=0, atol=1e-12)
        assert torch.equal(outs[option].ancestors, outs["none"].ancestors)
    assert outs["score"].ancestor_log_prob.requires_grad
    assert not outs["none"].ancestor_log_prob.requires_grad
