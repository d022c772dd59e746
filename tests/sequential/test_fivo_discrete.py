"""FIVO for latents that cannot be reparametrized (DiscreteHMM): the score-function gradient.

The exact gradient of ``E[log Z-hat]`` is computed by enumerating the whole particle system of a
tiny filter (3 states, 2 particles, 3 steps, multinomial resampling after every step but the last:
every proposal and every ancestor choice, 9^3 * 4^2 = 11,664 systems). FIVO's mean gradient over
many draws must match it within 4 standard errors per coordinate, and variants without the
resampling or the proposal score terms must not. Fixed seeds, float64.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from bbvae.losses import FIVO, IWAE

K, T = 2, 3
N_SE = 4.0


def _flat_grad(value, params):
    grads = torch.autograd.grad(value, params, allow_unused=True)
    return torch.cat(
        [(g if g is not None else torch.zeros_like(p)).reshape(-1) for g, p in zip(grads, params)]
    )


def exact_expected_log_z(model, x, resample: bool) -> torch.Tensor:
    """``mean_b E[log Z-hat(x_b)]`` by enumerating every proposal and ancestor choice (differentiable)."""
    s = model.n_states
    z_steps = list(itertools.product(range(s), repeat=K))  # one step's proposals of the K particles
    a_steps = list(itertools.product(range(K), repeat=K)) if resample else [tuple(range(K))]
    combos = list(itertools.product(*([z_steps] * T + [a_steps] * (T - 1))))
    c = len(combos)
    table = torch.tensor([[i for part in combo for i in part] for combo in combos])  # [C, T*K + (T-1)*K]
    zs = table[:, : T * K].reshape(c, T, K)
    ancestors = table[:, T * K :].reshape(c, T - 1, K)
    total = 0.0
    for row in x:  # one sequence at a time; the systems are the batch
        xr = row.unsqueeze(0).expand(c, *row.shape)
        encoded = model.encode(xr)
        state = model.init_state(encoded, K)
        log_prob = torch.zeros(c, dtype=torch.float64)
        log_z = torch.zeros(c, dtype=torch.float64)
        log_w = torch.zeros(c, K, dtype=torch.float64)
        for t in range(T):
            out = model.step(state, encoded[t], z=zs[:, t])
            log_prob = log_prob + out.log_q.sum(dim=1)
            log_w = log_w + out.log_p - out.log_q
            state = out.state
            if t < T - 1 and resample:
                anc = ancestors[:, t]
                log_prob = log_prob + torch.gather(torch.log_softmax(log_w, dim=1), 1, anc).sum(dim=1)
                log_z = log_z + torch.logsumexp(log_w, dim=1) - math.log(K)
                log_w = torch.zeros_like(log_w)
                state = model.reorder(state, anc)
        log_z = log_z + torch.logsumexp(log_w, dim=1) - math.log(K)
        assert torch.allclose(log_prob.exp().sum(), torch.tensor(1.0, dtype=torch.float64))
        total = total + (log_prob.exp() * log_z).sum()
    return total / x.shape[0]


@pytest.fixture
def tiny(seq):
    model = seq.make_dhmm(n_states=3, n_obs=4, proposal="network", seed=1)
    torch.manual_seed(2)
    x, _ = model.sample(2, T)
    return model, x


def mean_gradient(loss, model, x, n_rep=300, n_calls=60, seed=3):
    torch.manual_seed(seed)
    params = list(model.parameters())
    xr = x.repeat(n_rep, 1)
    draws = torch.stack([_flat_grad(-loss(xr), params) for _ in range(n_calls)])
    return draws.mean(0), draws.std(0) / math.sqrt(n_calls)


def z_scores(loss, model, x, resample: bool, **kwargs):
    exact = _flat_grad(exact_expected_log_z(model, x, resample), list(model.parameters()))
    mean, se = mean_gradient(loss, model, x, **kwargs)
    positive = se > 0
    assert torch.allclose(mean[~positive], exact[~positive], atol=1e-10)
    return (mean - exact)[positive] / se[positive]


@pytest.mark.parametrize("resample", [True, False])
def test_fivo_score_gradient_matches_the_enumerated_particle_system(tiny, resample):
    model, x = tiny
    threshold, gradient = (1.0, "score") if resample else (0.0, "none")
    loss = FIVO(model.inf_net, model.gen_model, n_particles=K, ess_threshold=threshold, gradient=gradient)
    z = z_scores(loss, model, x, resample)
    assert z.abs().max() < N_SE, f"max |z| = {z.abs().max():.2f}"


def test_dropping_a_score_term_is_detected(tiny, monkeypatch):
    model, x = tiny
    # Without the resampling decisions' score (FIVO's default "none"): biased.
    loss = FIVO(model.inf_net, model.gen_model, n_particles=K, ess_threshold=1.0, gradient="none")
    assert z_scores(loss, model, x, True, n_calls=30).abs().max() > 2 * N_SE
    # Without the proposals' score: biased.
    monkeypatch.setattr(FIVO, "_proposal_score", lambda self, result, valid, n: result.log_z.new_zeros(()))
    loss = FIVO(model.inf_net, model.gen_model, n_particles=K, ess_threshold=1.0, gradient="score")
    assert z_scores(loss, model, x, True, n_calls=30).abs().max() > 2 * N_SE


def test_fivo_trains_a_discrete_hmm_towards_the_exact_likelihood(seq):
    truth = seq.make_dhmm(n_states=3, n_obs=4, proposal="network", seed=4)
    torch.manual_seed(5)
    x, _ = truth.sample(32, 20)
    with torch.no_grad():
        exact_truth = float(truth.exact_log_prob(x).mean())
    model = seq.make_dhmm(n_states=3, n_obs=4, proposal="network", seed=6)
    loss = FIVO(model.inf_net, model.gen_model, n_particles=4, gradient="score")
    opt = torch.optim.Adam(loss.parameters(), lr=0.05)
    with torch.no_grad():
        start = float(model.exact_log_prob(x).mean())
    for _ in range(100):
        opt.zero_grad()
        loss(x).backward()
        opt.step()
    with torch.no_grad():
        end = float(model.exact_log_prob(x).mean())
    # The model's exact log-likelihood climbs most of the way to the data-generating model's.
    assert end > start + 0.6 * (exact_truth - start), (start, end, exact_truth)
    assert len(loss.loss_history_) == 100 and loss.proposal_signal_.shape == (32, 20)


def test_iwae_still_refuses_a_discrete_hmm(seq):
    model = seq.make_dhmm()
    x, _ = model.sample(2, 3)
    with pytest.raises(TypeError, match="reparametrizable"):
        IWAE(model.inf_net, model.gen_model, n_samples=2)(x)


def test_segment_signal_is_vimcos_within_each_segment(seq):
    from bbvae.losses.vimco import leave_one_out_bounds

    model = seq.make_dhmm(n_states=3, n_obs=4, proposal="network", seed=7)
    torch.manual_seed(8)
    x, _ = model.sample(5, 6)
    lengths = torch.tensor([6, 4, 6, 1, 3])
    # Never resampling: one segment per sequence, closed at its last valid step.
    loss = FIVO(model.inf_net, model.gen_model, n_particles=3, ess_threshold=0.0, proposal_gradient="segment")
    loss(x, lengths=lengths).backward()
    final = loss.log_weights_  # [batch, K]: the accumulated weights at each sequence's end
    expected = final.logsumexp(1, keepdim=True) - math.log(3) - leave_one_out_bounds(final)
    for b, n in enumerate(lengths.tolist()):
        sig = loss.proposal_signal_[b]  # [T, K]
        assert torch.allclose(sig[:n], expected[b].expand(n, 3))
        assert (sig[n:] == 0).all()
    # Resampling at every step: every step is its own segment.
    loss = FIVO(model.inf_net, model.gen_model, n_particles=3, ess_threshold=1.0, proposal_gradient="segment")
    loss(x)
    assert loss.proposal_signal_.shape == (5, 6, 3)
    assert torch.isfinite(loss.proposal_signal_).all()
    assert loss.resampling_rate_ == 1.0
    with pytest.raises(ValueError, match="n_particles >= 2"):
        FIVO(model.inf_net, model.gen_model, n_particles=1, proposal_gradient="segment")
    with pytest.raises(ValueError, match="proposal_gradient"):
        FIVO(model.inf_net, model.gen_model, proposal_gradient="vimco")


def test_segment_fivo_trains_a_discrete_hmm(seq):
    truth = seq.make_dhmm(n_states=3, n_obs=4, proposal="network", seed=4)
    torch.manual_seed(5)
    x, _ = truth.sample(32, 20)
    with torch.no_grad():
        exact_truth = float(truth.exact_log_prob(x).mean())
    model = seq.make_dhmm(n_states=3, n_obs=4, proposal="network", seed=6)
    loss = FIVO(model.inf_net, model.gen_model, n_particles=4, proposal_gradient="segment")
    opt = torch.optim.Adam(loss.parameters(), lr=0.05)
    with torch.no_grad():
        start = float(model.exact_log_prob(x).mean())
    for _ in range(60):
        opt.zero_grad()
        loss(x).backward()
        opt.step()
    with torch.no_grad():
        end = float(model.exact_log_prob(x).mean())
    assert end > start + 0.6 * (exact_truth - start), (start, end, exact_truth)


def test_checkpoints_without_the_baseline_buffers_still_load(seq):
    model = seq.make_dhmm()
    loss = FIVO(model.inf_net, model.gen_model, n_particles=2)
    x, _ = model.sample(3, 4)
    loss(x)  # moves the running rate away from zero
    old = {k: v for k, v in loss.state_dict().items() if "score_rate" not in k}  # as written before
    fresh = FIVO(model.inf_net, model.gen_model, n_particles=2)
    fresh.load_state_dict(old)  # strict: the missing buffers start at zero
    assert float(fresh.score_rate_weight) == 0.0
    fresh.load_state_dict(loss.state_dict())
    assert torch.allclose(fresh.score_rate.double(), loss.score_rate.double())
