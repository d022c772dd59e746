"""Dropout in the built-in sequence models: active in training, fully off in evaluation and sampling."""

from __future__ import annotations

import pytest
import torch

from bbvae.losses import FIVO, IWAE
from bbvae.sequential import RNN, SRNN, VRNN, IndependentVAE, evaluate, sample_sequences

MODELS = {
    "vrnn": lambda p: VRNN(obs_dim=5, latent_size=3, dropout=p),
    "srnn": lambda p: SRNN(obs_dim=5, latent_size=3, dropout=p),
    "rnn": lambda p: RNN(obs_dim=5, hidden_size=4, dropout=p),
    "independent": lambda p: IndependentVAE(obs_dim=5, latent_size=3, dropout=p),
}


def _data():
    torch.manual_seed(0)
    return torch.bernoulli(torch.full((3, 6, 5), 0.4)), torch.tensor([6, 4, 5])


def _bound(model, x, lengths, seed=1):
    loss = FIVO(model.inf_net, model.gen_model, n_particles=3) if model.has_rsample else None
    loss = loss or IWAE(model.inf_net, model.gen_model, n_samples=3)
    torch.manual_seed(seed)
    loss(x, lengths=lengths)
    return loss.bound_


@pytest.mark.parametrize("name", sorted(MODELS))
def test_dropout_is_off_in_eval_mode_and_on_in_training(name):
    x, lengths = _data()
    torch.manual_seed(0)
    dropped = MODELS[name](0.5)
    plain = MODELS[name](0.0)
    plain.load_state_dict(dropped.state_dict())  # same names with and without dropout
    dropped.eval(), plain.eval()
    eval_bounds = [_bound(dropped, x, lengths) for _ in range(2)]
    torch.testing.assert_close(eval_bounds[0], eval_bounds[1], rtol=0, atol=0)  # same seed, same bound
    torch.testing.assert_close(eval_bounds[0], _bound(plain, x, lengths), rtol=0, atol=0)
    dropped.train(), plain.train()
    assert not torch.equal(_bound(dropped, x, lengths), _bound(plain, x, lengths))  # active in training
    torch.testing.assert_close(_bound(plain, x, lengths), eval_bounds[0], rtol=0, atol=0)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_evaluation_and_sampling_run_without_dropout_whatever_the_mode(name):
    x, lengths = _data()
    torch.manual_seed(0)
    dropped = MODELS[name](0.5)
    plain = MODELS[name](0.0)
    plain.load_state_dict(dropped.state_dict())
    dropped.train()
    results = []
    for model in (dropped, plain):
        torch.manual_seed(2)
        result = evaluate(model, x, lengths=lengths, n_samples=3)
        torch.manual_seed(3)
        samples, _ = sample_sequences(model, 2, length=4)
        results.append((result, samples))
    (a, sa), (b, sb) = results
    assert dropped.training  # the mode is restored
    assert a == b  # {bound: {"per_step": float, "per_sequence": float}}
    assert torch.equal(sa, sb)


def test_bad_dropout_is_named():
    with pytest.raises(ValueError, match=r"VRNN: expected dropout in \[0, 1\), got 1.0"):
        VRNN(obs_dim=3, latent_size=2, dropout=1.0)


@pytest.mark.parametrize("resq", [True, False])
def test_vrnn_residual_proposal_mean(resq):
    # With the proposal's output layer zeroed, its network says 0: the mean is the prior's (res_q,
    # the FIVO reference) or 0.
    torch.manual_seed(0)
    model = VRNN(obs_dim=5, latent_size=3, resq=resq)
    with torch.no_grad():
        last = model.proposal.tail[-1][-1]
        last.weight.zero_(), last.bias.zero_()
    x, lengths = _data()
    encoded = model.encode(x, lengths)
    state = model.init_state(encoded, 2)
    out = model.step(state, encoded[0])
    prior_loc, _ = model.prior.gaussian(state["h"])
    # log q at z = q's mean is the Gaussian's maximum: the mean is where it is
    scale = torch.nn.functional.softplus(torch.tensor(0.25)) + 1e-4
    expected_mean = prior_loc if resq else torch.zeros_like(prior_loc)
    q_at_mean = model.step(state, encoded[0], z=expected_mean).log_q
    peak = -3 * (scale.log() + 0.5 * torch.log(torch.tensor(2 * torch.pi)))
    torch.testing.assert_close(q_at_mean, peak.expand_as(q_at_mean).to(q_at_mean.dtype))
    assert out.z.shape == (3, 2, 3)
