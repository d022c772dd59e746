"""SRNN: shapes, padding, x-only recurrences once per sequence, smoothing proposal, training."""

import pytest
import torch

from bbvae.losses import IWAE
from bbvae.sequential.base import run_particles
from bbvae.sequential.srnn import SRNN

DTYPES = [torch.float32, torch.float64]
OBSERVATIONS = ["bernoulli", "normal", "categorical", "gmm"]
CELLS = ["lstm", "gru"]


def srnn(seq, *args, **kw):
    """A small SRNN (see the ``seq`` fixture) whose backward RNN has a size of its own."""
    return seq.neural(SRNN, *args, backward_size=7, **kw)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("observation", OBSERVATIONS)
def test_shapes_ragged_side_inputs_and_gradients(seq, observation, cell, dtype):
    torch.manual_seed(0)
    batch, n_steps, k = 3, 5, 4
    model = srnn(seq, observation, cell, input_size=2, dtype=dtype)
    x = seq.make_x(observation, batch, n_steps, dtype)
    lengths = torch.tensor([2, 5, 4])
    inputs = torch.randn(batch, n_steps, 2, dtype=dtype)
    run = run_particles(model, x, k, lengths=lengths, inputs=inputs)
    assert run.log_p.shape == (batch, k) and run.z.shape == (batch, k, n_steps, seq.L)
    assert run.log_q.dtype == dtype
    seq.assert_finite_iwae_gradients(model, x, k, lengths=lengths, inputs=inputs)


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("observation", OBSERVATIONS)
def test_garbage_padding_changes_nothing(seq, observation, cell):
    # The backward recurrence starts at each sequence's own end: garbage past it (NaN,
    # out-of-vocabulary symbols) leaves the bound and the gradients bit-identical.
    torch.manual_seed(1)
    model = srnn(seq, observation, cell, dtype=torch.float32)
    lengths = torch.tensor([3, 6, 1])
    x = seq.make_x(observation, 3, 6, torch.float32)
    seq.assert_padding_ignored(model, x, lengths, symbol=-(10**5))


@pytest.mark.parametrize("cell", CELLS)
def test_sequence_alone_equals_sequence_in_padded_batch(seq, cell):
    torch.manual_seed(2)
    model = srnn(seq, "normal", cell)
    lengths = torch.tensor([5, 2, 4])
    x = seq.make_x("normal", 3, 5)
    z = torch.randn(3, 2, 5, seq.L, dtype=torch.float64)
    batch_run = run_particles(model, x, 2, lengths=lengths, z=z)
    for b, n in enumerate(lengths.tolist()):
        alone = run_particles(model, x[b : b + 1, :n], 2, z=z[b : b + 1, :, :n])
        torch.testing.assert_close(alone.log_p, batch_run.log_p[b : b + 1])
        torch.testing.assert_close(alone.log_q, batch_run.log_q[b : b + 1])


def test_x_only_recurrences_run_once_per_loss_call(seq):
    torch.manual_seed(3)
    model = srnn(seq, "bernoulli", "lstm")
    counts = {"encoder": 0, "forward_rnn": 0, "backward_rnn": 0}
    for name in counts:

        def hook(module, args, output, name=name):
            counts[name] += 1

        getattr(model, name).register_forward_hook(hook)
    x = seq.make_x("bernoulli", 4, 9)
    IWAE(model.inf_net, model.gen_model, n_samples=6)(x, lengths=torch.tensor([9, 4, 6, 2])).backward()
    assert counts == {"encoder": 1, "forward_rnn": 1, "backward_rnn": 1}


def test_proposal_smooths_and_prior_filters(seq):
    # a_t sees the future: changing x at a sequence's last valid step changes the proposal's
    # input at t = 0 but not the prior's (which only sees the past).
    torch.manual_seed(4)
    model = srnn(seq, "normal", "gru")
    lengths = torch.tensor([4, 3])
    x = seq.make_x("normal", 2, 4)
    changed = x.clone()
    changed[1, 2] += 1.0  # the last valid step of sequence 1
    with torch.no_grad():
        before, after = model.encode(x, lengths), model.encode(changed, lengths)
    assert not torch.allclose(before[0]["qa"][1], after[0]["qa"][1])
    torch.testing.assert_close(before[0]["pc"], after[0]["pc"])
    torch.testing.assert_close(before[2]["pc"], after[2]["pc"])
    torch.testing.assert_close(before[0]["qa"][0], after[0]["qa"][0])  # other sequences untouched
    assert not torch.allclose(before[3]["pc"][1], after[3]["pc"][1])  # past the end it may change


def test_resq_predicts_a_residual_on_the_prior_mean(seq):
    torch.manual_seed(5)
    model = srnn(seq, "bernoulli", resq=True)
    last = model.proposal.tail[-1][-1]  # the proposal's output layer
    with torch.no_grad():
        last.weight.zero_()
        last.bias.zero_()
    # The residual is 0, so q's mean is the prior mean: scoring z = that mean under q gives
    # log q = sum(-log sigma_q) - L/2 log(2 pi); check through a direct step.
    x = seq.make_x("bernoulli", 2, 3)
    encoded = model.encode(x)
    state = model.init_state(encoded, 1)
    p_loc, _ = model.prior.gaussian(state["z"], encoded[0]["ctx"].unsqueeze(1))
    out = model.step(state, encoded[0], z=p_loc)
    sigma = torch.nn.functional.softplus(torch.tensor(0.25, dtype=torch.float64)) + 1e-4
    log_2pi = torch.log(torch.tensor(2 * torch.pi, dtype=torch.float64))
    expected = -seq.L * torch.log(sigma) - 0.5 * seq.L * log_2pi
    torch.testing.assert_close(out.log_q, expected.expand(2, 1))


@pytest.mark.parametrize("observation", OBSERVATIONS)
def test_ancestral_samples_shape_and_support(seq, observation):
    torch.manual_seed(6)
    model = srnn(seq, observation, "lstm")
    x, z = model.gen_model.sample(4, 7)
    assert z.shape == (4, 7, seq.L)
    if observation == "categorical":
        assert x.shape == (4, 7) and bool(((x >= 0) & (x < seq.V)).all())
    else:
        assert x.shape == (4, 7, seq.D)
    if observation == "bernoulli":
        assert bool(((x == 0) | (x == 1)).all())


def test_training_improves_the_bound(seq):
    torch.manual_seed(9)
    gen = torch.Generator().manual_seed(10)
    model = SRNN(6, latent_size=4, hidden_size=16, fc_hidden_sizes=(16,)).double()
    before, after = seq.training_gain(model, gen, n_steps=8, dim=6)
    assert after > before + 8.0, (before, after)
