"""RNN (exact likelihood, every bound equals it) and IndependentVAE (fixed N(0, I) prior per step)."""

import math

import pytest
import torch
from torch import nn

from bbvae.losses import ELBO, IWAE, VIMCO
from bbvae.losses.fivo import FIVO
from bbvae.sequential.base import run_particles
from bbvae.sequential.independent import IndependentVAE
from bbvae.sequential.nets import step_rnn
from bbvae.sequential.rnn import RNN
from bbvae.sequential.smc import smc

DTYPES = [torch.float32, torch.float64]
OBSERVATIONS = ["bernoulli", "normal", "categorical", "gmm"]
CELLS = ["lstm", "gru"]


MODELS = {"rnn": RNN, "ivae": IndependentVAE}


# ------------------------------------------------------------------------------- both models
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("observation", OBSERVATIONS)
@pytest.mark.parametrize("kind", ["rnn", "ivae"])
def test_shapes_ragged_side_inputs_and_gradients(seq, kind, observation, cell, dtype):
    torch.manual_seed(0)
    batch, n_steps, k = 3, 5, 4
    model = seq.neural(MODELS[kind], observation, cell, input_size=2, dtype=dtype)
    x = seq.make_x(observation, batch, n_steps, dtype)
    lengths = torch.tensor([1, 5, 3])
    inputs = torch.randn(batch, n_steps, 2, dtype=dtype)
    run = run_particles(model, x, k, lengths=lengths, inputs=inputs)
    latent = 0 if kind == "rnn" else seq.L
    assert run.z.shape == (batch, k, n_steps, latent) and run.log_p.shape == (batch, k)
    assert run.log_p.dtype == dtype
    seq.assert_finite_iwae_gradients(model, x, k, lengths=lengths, inputs=inputs)


@pytest.mark.parametrize("observation", OBSERVATIONS)
@pytest.mark.parametrize("kind", ["rnn", "ivae"])
def test_garbage_padding_changes_nothing(seq, kind, observation):
    torch.manual_seed(1)
    model = seq.neural(MODELS[kind], observation, "gru", dtype=torch.float32)
    lengths = torch.tensor([4, 1, 6])
    x = seq.make_x(observation, 3, 6, torch.float32)
    seq.assert_padding_ignored(model, x, lengths, symbol=999)


@pytest.mark.parametrize("kind", ["rnn", "ivae"])
def test_sequence_alone_equals_sequence_in_padded_batch(seq, kind):
    torch.manual_seed(2)
    model = seq.neural(MODELS[kind], "bernoulli", "lstm")
    lengths = torch.tensor([3, 5, 1])
    x = seq.make_x("bernoulli", 3, 5)
    z = torch.randn(3, 2, 5, *model.latent_shape, dtype=torch.float64)
    batch_run = run_particles(model, x, 2, lengths=lengths, z=z)
    for b, n in enumerate(lengths.tolist()):
        alone = run_particles(model, x[b : b + 1, :n], 2, z=z[b : b + 1, :, :n])
        torch.testing.assert_close(alone.log_p, batch_run.log_p[b : b + 1])
        torch.testing.assert_close(alone.log_q, batch_run.log_q[b : b + 1])


@pytest.mark.parametrize("kind", ["rnn", "ivae"])
def test_x_only_networks_run_once_per_loss_call(seq, kind):
    torch.manual_seed(3)
    model = seq.neural(MODELS[kind], "normal", "lstm")
    names = ["encoder", "rnn"] + (["proposal"] if kind == "ivae" else [])
    counts = dict.fromkeys(names, 0)
    for name in names:

        def hook(module, args, output, name=name):
            counts[name] += 1

        getattr(model, name).register_forward_hook(hook)
    x = seq.make_x("normal", 4, 8)
    IWAE(model.inf_net, model.gen_model, n_samples=5)(x, lengths=torch.tensor([8, 2, 5, 7])).backward()
    assert counts == dict.fromkeys(names, 1)


@pytest.mark.parametrize("observation", OBSERVATIONS)
@pytest.mark.parametrize("kind", ["rnn", "ivae"])
def test_ancestral_samples_shape_and_support(seq, kind, observation):
    torch.manual_seed(4)
    model = seq.neural(MODELS[kind], observation, "gru", input_size=1)
    x, z = model.gen_model.sample(3, inputs=torch.randn(3, 6, 1, dtype=torch.float64))
    assert z.shape == (3, 6, *model.latent_shape)
    if observation == "categorical":
        assert x.shape == (3, 6) and bool(((x >= 0) & (x < seq.V)).all())
    else:
        assert x.shape == (3, 6, seq.D) and x.dtype == torch.float64
    if observation == "bernoulli":
        assert bool(((x == 0) | (x == 1)).all())


@pytest.mark.parametrize("kind", ["rnn", "ivae"])
def test_training_improves_the_bound(seq, kind):
    torch.manual_seed(9)
    gen = torch.Generator().manual_seed(10)
    if kind == "rnn":
        model = RNN(6, hidden_size=16).double()
    else:
        model = IndependentVAE(6, latent_size=4, hidden_size=16, fc_hidden_sizes=(16,)).double()
    before, after = seq.training_gain(model, gen, n_steps=8, dim=6)
    assert after > before + 8.0, (before, after)


# ---------------------------------------------------------------------------------------- RNN
def teacher_forced(model, x):
    """log p(x) stepping the generation recurrence on the true x (an independent code path)."""
    state = model.generate_init(x.shape[0], 1, x)
    total = x.new_zeros(x.shape[0])
    for x_t in x.unbind(1):
        params = model.decoder(state["h"])  # [batch, 1, param_size]
        total = total + model.observation.log_prob(params, x_t.unsqueeze(1)).squeeze(1)
        state = step_rnn(model.rnn, model.x_features(x_t.unsqueeze(1)), state)
    return total


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("observation", ["bernoulli", "normal"])
def test_rnn_exact_log_prob_is_teacher_forced_likelihood(seq, observation, cell):
    torch.manual_seed(5)
    model = seq.neural(RNN, observation, cell)
    x = seq.make_x(observation, 3, 6)
    lengths = torch.tensor([6, 2, 4])
    exact = model.exact_log_prob(x, lengths)
    assert exact.shape == (3,)
    for b, n in enumerate(lengths.tolist()):
        torch.testing.assert_close(exact[b : b + 1], teacher_forced(model, x[b : b + 1, :n]))


@pytest.mark.parametrize("observation", OBSERVATIONS)
def test_rnn_every_bound_equals_its_exact_log_likelihood(seq, observation):
    torch.manual_seed(6)
    model = seq.neural(RNN, observation, "lstm")
    x = seq.make_x(observation, 3, 5)
    lengths = torch.tensor([5, 3, 2])
    exact = model.exact_log_prob(x, lengths)
    iwae = IWAE(model.inf_net, model.gen_model, n_samples=4)
    iwae(x, lengths=lengths)
    elbo = ELBO(model.inf_net, model.gen_model, n_samples=2)
    elbo(x, lengths=lengths)
    torch.testing.assert_close(iwae.bound_, exact.detach())
    torch.testing.assert_close(elbo.bound_, exact.detach())
    result = smc(model, x, 4, ess_threshold=1.0, lengths=lengths)
    torch.testing.assert_close(result.log_z, exact)
    others = [
        FIVO(model.inf_net, model.gen_model, n_particles=3, ess_threshold=1.0),
        IWAE(model.inf_net, model.gen_model, n_samples=3, estimator="dreg"),
        VIMCO(model.inf_net, model.gen_model, n_samples=3),
    ]
    for loss in others:
        loss(x, lengths=lengths).backward()
        torch.testing.assert_close(loss.bound_, exact.detach())


# ------------------------------------------------------------------------------ IndependentVAE
class ZeroDecoder(nn.Module):
    """Bernoulli logits 0 whatever the input: log p(x_t | .) = -D log 2 for binary x_t [D]."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def forward(self, h):
        return h.new_zeros(*h.shape[:-1], self.size)


def test_independent_prior_is_standard_normal_whatever_the_history(seq):
    torch.manual_seed(7)
    model = seq.neural(IndependentVAE, "bernoulli", "lstm", decoder=ZeroDecoder(seq.D))
    lengths = torch.tensor([5, 3])
    z = torch.randn(2, 4, 5, seq.L, dtype=torch.float64)
    mask = (torch.arange(5).unsqueeze(0) < lengths.unsqueeze(1)).unsqueeze(1)  # [batch, 1, T]
    log_normal = -0.5 * z.square().sum(-1) - 0.5 * seq.L * math.log(2 * math.pi)  # [batch, K, T]
    expected = torch.where(mask, log_normal - seq.D * math.log(2.0), 0.0).sum(-1)
    for history in (seq.make_x("bernoulli", 2, 5), 1.0 - seq.make_x("bernoulli", 2, 5)):
        run = run_particles(model, history, 4, lengths=lengths, z=z)
        torch.testing.assert_close(run.log_p, expected)
