"""The fused VRNN step (bbvae.sequential.vrnn_fused): the general step's numbers, where it applies."""

import pytest
import torch
from torch import nn

from bbvae.losses.fivo import FIVO
from bbvae.sequential.base import run_particles
from bbvae.sequential.vrnn import VRNN


def _run(model, x, lengths, inputs, fuse, loss=None):
    """Values and gradients of one pass (same seed) with the fused step on or off."""
    model.fuse = fuse
    model.zero_grad(set_to_none=True)
    torch.manual_seed(7)
    if loss is None:
        run = run_particles(model, x, 4, lengths=lengths, inputs=inputs)
        values = (run.log_p, run.log_q, run.z)
        (run.log_p - run.log_q).sum().backward()
    else:
        value = loss(x, lengths=lengths, inputs=inputs)
        values = (value,)
        value.backward()
    return [v.detach() for v in values], [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("observation", ["bernoulli", "normal", "categorical", "gmm"])
@pytest.mark.parametrize("input_size", [0, 2])
@pytest.mark.parametrize("resq", [True, False])
def test_fused_step_gives_the_general_step_values_and_gradients(seq, observation, input_size, resq):
    torch.manual_seed(0)
    model = seq.neural(VRNN, observation, "lstm", input_size=input_size, resq=resq)
    x = seq.make_x(observation, 3, 6)
    lengths = torch.tensor([6, 2, 4])
    inputs = torch.randn(3, 6, input_size, dtype=torch.float64) if input_size else None
    fused = _run(model, x, lengths, inputs, True)
    general = _run(model, x, lengths, inputs, False)
    for a, b in zip(fused[0] + fused[1], general[0] + general[1]):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("gradient", ["none", "score", "stop_gradient"])
def test_fused_step_gives_the_general_fivo_bound_and_gradients(seq, gradient):
    torch.manual_seed(1)
    model = seq.neural(VRNN, "bernoulli", "lstm")
    x = seq.make_x("bernoulli", 4, 7)
    lengths = torch.tensor([7, 3, 1, 5])
    loss = FIVO(model.inf_net, model.gen_model, n_particles=5, ess_threshold=0.7, gradient=gradient)
    fused = _run(model, x, lengths, None, True, loss)
    general = _run(model, x, lengths, None, False, loss)
    for a, b in zip(fused[0] + fused[1], general[0] + general[1]):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def _fused_items(model, x):
    return "fused" in model.encode(x)[0]


def test_fused_step_applies_to_the_default_lstm_vrnn_only(seq):
    x = seq.make_x("bernoulli", 2, 3)
    assert _fused_items(seq.neural(VRNN, "bernoulli", "lstm"), x)
    assert not _fused_items(seq.neural(VRNN, "bernoulli", "gru"), x)
    model = seq.neural(VRNN, "bernoulli", "lstm")
    model.fuse = False
    assert not _fused_items(model, x)
    two_layers = VRNN(x.shape[-1], latent_size=3, hidden_size=4, fc_hidden_sizes=(5, 5)).double()
    assert not _fused_items(two_layers, x)
    custom = VRNN(x.shape[-1], latent_size=3, hidden_size=4, decoder=nn.Linear(4 + 3, x.shape[-1])).double()
    assert not _fused_items(custom, x)
    replaced = seq.neural(VRNN, "bernoulli", "lstm")
    assert _fused_items(replaced, x)
    replaced.decoder = nn.Sequential(nn.Linear(replaced.decoder_input_size, x.shape[-1])).double()
    assert not _fused_items(replaced, x)  # checked at every encode
    dropped = seq.neural(VRNN, "bernoulli", "lstm", dropout=0.3)
    assert _fused_items(dropped.train(), x)  # dropout active: the fused step draws the masks
    assert _fused_items(dropped.eval(), x)
    assert dropped.encode(x)[0]["fused"]["dropout"] == 0.0  # off in evaluation
    odd = seq.neural(VRNN, "bernoulli", "lstm", dropout=0.3)
    odd.decoder[1][1].p = 0.1  # a layer whose rate is not the model's: the general step
    assert not _fused_items(odd.train(), x)
    assert _fused_items(odd.eval(), x)  # (no dropout in evaluation: any rates)
    bare = seq.neural(VRNN, "bernoulli", "lstm", dropout=0.3)
    bare.decoder[1] = nn.ReLU()  # a layer without dropout: the general step while training
    assert not _fused_items(bare.train(), x)
    assert _fused_items(bare.eval(), x)
    scheduled = seq.neural(VRNN, "bernoulli", "lstm").set_scheduled_sampling("constant:eps=0.5").train()
    with torch.enable_grad():
        assert not _fused_items(scheduled, x)  # feedback: the general step


def test_fused_step_keeps_the_state_dict(seq):
    model = seq.neural(VRNN, "bernoulli", "lstm")
    names = {name: tuple(v.shape) for name, v in model.state_dict().items()}
    run_particles(model, seq.make_x("bernoulli", 2, 3), 2)
    assert {name: tuple(v.shape) for name, v in model.state_dict().items()} == names
    assert "cell.weight_hh" in names and "prior.inputs.0.weight" in names


@pytest.mark.parametrize("observation", ["bernoulli", "normal"])
@pytest.mark.parametrize("input_size", [0, 2])
def test_fused_step_with_dropout_draws_the_general_steps_masks(seq, observation, input_size):
    # Same seed, same masks in the same order: the fused step's values and gradients are the
    # general step's with dropout active. A fused step that drew its masks in another order or
    # shape, or masked the recurrent input per sequence instead of per particle, fails this.
    torch.manual_seed(0)
    model = seq.neural(VRNN, observation, "lstm", input_size=input_size, dropout=0.4).train()
    x = seq.make_x(observation, 3, 6)
    lengths = torch.tensor([6, 2, 4])
    inputs = torch.randn(3, 6, input_size, dtype=torch.float64) if input_size else None
    assert model.encode(x, lengths, inputs)[0]["fused"]["dropout"] == 0.4
    fused = _run(model, x, lengths, inputs, True)
    general = _run(model, x, lengths, inputs, False)
    for a, b in zip(fused[0] + fused[1], general[0] + general[1]):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    model.eval()
    plain = _run(model, x, lengths, inputs, True)
    assert not torch.allclose(plain[0][0], fused[0][0])  # the masks changed the numbers


def test_a_custom_layer_without_dropout_gets_none_from_the_fused_step(seq):
    # model.dropout > 0 but a user's decoder without dropout: training must not drop its units.
    torch.manual_seed(0)
    model = seq.neural(VRNN, "bernoulli", "lstm", dropout=0.4).train()
    model.decoder[1] = nn.ReLU()
    x = seq.make_x("bernoulli", 3, 5)
    fused = _run(model, x, None, None, True)
    general = _run(model, x, None, None, False)
    for a, b in zip(fused[0] + fused[1], general[0] + general[1]):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("gradient", ["none", "score", "stop_gradient"])
def test_fused_step_with_dropout_gives_the_general_fivo_bound_and_gradients(seq, gradient):
    torch.manual_seed(1)
    model = seq.neural(VRNN, "bernoulli", "lstm", dropout=0.25).train()
    x = seq.make_x("bernoulli", 4, 7)
    lengths = torch.tensor([7, 3, 1, 5])
    loss = FIVO(model.inf_net, model.gen_model, n_particles=5, ess_threshold=0.7, gradient=gradient)
    fused = _run(model, x, lengths, None, True, loss)
    general = _run(model, x, lengths, None, False, loss)
    for a, b in zip(fused[0] + fused[1], general[0] + general[1]):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
