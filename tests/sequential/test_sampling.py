"""Unconditional and prefix-conditioned sampling (bbvae.sequential.sampling)."""

import math

import pytest
import torch

from bbvae.sequential.ghmm import GaussianHMM
from bbvae.sequential.independent import IndependentVAE
from bbvae.sequential.rnn import RNN
from bbvae.sequential.sampling import filter_prefix, sample_continuations, sample_sequences
from bbvae.sequential.srnn import SRNN
from bbvae.sequential.vrnn import VRNN

CLASSES = {"vrnn": VRNN, "srnn": SRNN, "rnn": RNN, "ivae": IndependentVAE}
KINDS = ["vrnn", "srnn", "rnn", "ivae"]


@pytest.mark.parametrize("observation", ["bernoulli", "categorical", "normal"])
@pytest.mark.parametrize("kind", KINDS)
def test_sample_sequences_shapes_and_support(seq, kind, observation):
    torch.manual_seed(0)
    model = seq.neural(CLASSES[kind], observation)
    x, z = sample_sequences(model, 6, 5)
    assert z.shape == (6, 5, *model.latent_shape)
    if observation == "categorical":
        assert x.shape == (6, 5) and bool(((x >= 0) & (x < seq.V)).all())
    else:
        assert x.shape == (6, 5, seq.D)
    if observation == "bernoulli":
        assert bool(((x == 0) | (x == 1)).all())


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("kind", KINDS)
def test_continuation_shapes_with_ragged_prefixes_and_inputs(seq, kind, cell):
    torch.manual_seed(1)
    model = seq.neural(CLASSES[kind], "bernoulli", cell, input_size=2)
    prefix = seq.make_x("bernoulli", 3, 4)
    lengths = torch.tensor([4, 1, 3])
    inputs = torch.randn(3, 4, 2, dtype=torch.float64)
    future = torch.randn(3, 6, 2, dtype=torch.float64)
    x, z = sample_continuations(
        model, prefix, 5, 6, lengths=lengths, inputs=inputs, future_inputs=future, n_particles=7
    )
    assert x.shape == (3, 5, 6, seq.D) and z.shape == (3, 5, 6, *model.latent_shape)
    assert bool(((x == 0) | (x == 1)).all())
    with pytest.raises(ValueError, match="future_inputs"):
        sample_continuations(model, prefix, 5, 6, lengths=lengths, inputs=inputs, future_inputs=future[:, :2])


@pytest.mark.parametrize("kind", KINDS)
def test_garbage_past_the_prefix_changes_no_continuation(seq, kind):
    torch.manual_seed(2)
    model = seq.neural(CLASSES[kind], "normal", "gru")
    lengths = torch.tensor([2, 5])
    prefix = seq.make_x("normal", 2, 5)
    mask = (torch.arange(5).unsqueeze(0) < lengths.unsqueeze(1)).unsqueeze(-1)
    clean = torch.where(mask, prefix, 0.0)
    outputs = []
    for data in (clean, torch.where(mask, prefix, float("nan"))):
        torch.manual_seed(3)
        outputs.append(
            sample_continuations(model, data, 4, 3, lengths=lengths, n_particles=6, ess_threshold=1.0)
        )
    assert torch.equal(outputs[0][0], outputs[1][0]) and torch.equal(outputs[0][1], outputs[1][1])


@pytest.mark.parametrize("threshold", [0.0, 1.0])
def test_filter_state_is_frozen_after_each_prefix_ends(seq, threshold):
    # One sequence padded to T = 6 versus cut to its length 3: same seed, same draws for the
    # first 3 steps, and the padded run's state must not move afterwards.
    torch.manual_seed(4)
    model = seq.neural(CLASSES["vrnn"], "bernoulli")
    x = seq.make_x("bernoulli", 1, 6)
    torch.manual_seed(5)
    state_cut, log_w_cut = filter_prefix(model, x[:, :3], 4, ess_threshold=threshold)
    torch.manual_seed(5)
    state_pad, log_w_pad = filter_prefix(model, x, 4, lengths=torch.tensor([3]), ess_threshold=threshold)
    assert torch.equal(log_w_cut, log_w_pad)
    assert all(torch.equal(state_cut[key], state_pad[key]) for key in state_cut)


def test_rnn_continuation_follows_the_exact_conditional():
    # The RNN's p(x_{L+1} | x_{1:L}) is exact; the first continued symbol of each ragged prefix
    # must follow it: |freq - p| < 4 standard errors sqrt(p (1 - p) / n).
    torch.manual_seed(6)
    model = RNN(3, hidden_size=8, observation="categorical", embedding_size=3).double()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(3.0)  # sharpen the conditionals so that the prefix matters
    prefix = torch.tensor([[0, 2, 2, 1], [1, 0, 0, 0]])
    lengths = torch.tensor([4, 2])
    n = 6000
    x, _ = sample_continuations(model, prefix, n, 2, lengths=lengths, n_particles=1)
    for b, length in enumerate(lengths.tolist()):
        seqs = torch.cat([prefix[b, :length].expand(3, length), torch.arange(3).unsqueeze(1)], dim=1)
        with torch.no_grad():
            joint = model.exact_log_prob(seqs) - model.exact_log_prob(prefix[b : b + 1, :length])
        p = joint.exp()
        torch.testing.assert_close(p.sum(), torch.tensor(1.0, dtype=torch.float64))
        freq = torch.bincount(x[b, :, 0], minlength=3).double() / n
        assert bool(((freq - p).abs() < 4 * (p * (1 - p) / n).sqrt()).all()), (freq, p)


class FilteredGaussianHMM(GaussianHMM):
    """The GHMM whose filtering state (z_t) becomes its generation state after a prefix."""

    def generation_state(self, state, x, lengths=None, inputs=None):
        started = torch.ones(*state.shape[:2], 1, dtype=torch.bool, device=state.device)
        return {"z": state, "started": started}


def test_model_whose_states_differ_must_define_generation_state():
    class Unconverted(GaussianHMM):
        generation_state = None  # filters with z_t, generates with {"z", "started"}

    model = Unconverted(1, 1).double()
    with pytest.raises(TypeError, match="generation_state"):
        sample_continuations(model, torch.zeros(2, 3, 1, dtype=torch.float64), 2, 2, n_particles=3)


def test_gaussian_hmm_continuation_matches_the_kalman_predictive():
    # The predictive p(x_{L+1} | x_{1:L}) of a linear-Gaussian model is Gaussian: its log-density
    # is a quadratic in v, read off the exact (Kalman) log-likelihood at v = -1, 0, 1.
    torch.manual_seed(7)
    model = FilteredGaussianHMM(1, 1, proposal="optimal", transition_scale=0.5, emission_scale=0.3).double()
    with torch.no_grad():
        model.transition.fill_(0.9)
        model.emission.fill_(1.0)
    prefix = torch.tensor([[2.0, 2.4, 2.9], [-1.5, -1.0, 0.0]], dtype=torch.float64).unsqueeze(-1)
    lengths = torch.tensor([3, 2])
    n, k = 4000, 4000
    x, _ = sample_continuations(model, prefix, n, 1, lengths=lengths, n_particles=k)
    for b, length in enumerate(lengths.tolist()):
        values = torch.tensor([-1.0, 0.0, 1.0], dtype=torch.float64)
        seqs = torch.cat([prefix[b, :length].expand(3, length, 1), values.reshape(3, 1, 1)], dim=1)
        with torch.no_grad():
            f = model.exact_log_prob(seqs)
        a = (f[2] + f[0] - 2 * f[1]) / 2
        mean, var = -(f[2] - f[0]) / 2 / (2 * a), -1 / (2 * a)
        draws = x[b, :, 0, 0]
        # standard error: n draws, plus the particle approximation of p(z_L | prefix) (ESS <= K)
        se = math.sqrt(float(var) * (1 / n + 1 / k))
        assert abs(float(draws.mean() - mean)) < 4 * se, (float(draws.mean()), float(mean), se)
        assert abs(float(draws.var() / var) - 1) < 4 * math.sqrt(2 / n + 2 / k)
        assert abs(float(mean)) > 0.5  # the prefix matters (the unconditional mean is ~0)
