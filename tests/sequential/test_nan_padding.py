"""NaN past each sequence's length (a common padding convention) changes no bound and no gradient.

Every built-in model must zero the padding before any computation uses it: a value used and then
masked with ``torch.where`` still sends a NaN gradient through the unused branch.
"""

from __future__ import annotations

import math

import pytest
import torch

from bbvae.losses import FIVO, IWAE, VIMCO
from bbvae.sequential import RNN, SRNN, VRNN, DiscreteHMM, GaussianHMM, IndependentVAE

LENGTHS = torch.tensor([5, 3, 4])


def _models():
    torch.manual_seed(0)
    return {
        "vrnn": VRNN(obs_dim=3, latent_size=2, observation="normal").double(),
        "srnn": SRNN(obs_dim=3, latent_size=2, observation="normal").double(),
        "rnn": RNN(obs_dim=3, hidden_size=4, observation="normal").double(),
        "independent": IndependentVAE(obs_dim=3, latent_size=2, observation="normal").double(),
        "ghmm-prior": GaussianHMM(2, 3, proposal="prior").double(),
        "ghmm-network": GaussianHMM(2, 3, proposal="network", hidden=(4,)).double(),
        "ghmm-optimal": GaussianHMM(2, 3, proposal="optimal").double(),
        "dhmm-gaussian": DiscreteHMM(3, obs_dim=3, emission="normal").double(),
    }


def _padded(fill: float) -> torch.Tensor:
    torch.manual_seed(1)
    x = torch.randn(3, 5, 3, dtype=torch.float64)
    past = torch.arange(5) >= LENGTHS.unsqueeze(1)  # [batch, T]
    return x.masked_fill(past.unsqueeze(-1), fill)


def _bound_and_grads(model, x):
    loss_cls = IWAE if model.has_rsample else VIMCO
    results = []
    losses = [loss_cls(model.inf_net, model.gen_model, n_samples=3)]
    if model.has_rsample:
        losses.append(FIVO(model.inf_net, model.gen_model, n_particles=3))
    for loss in losses:
        torch.manual_seed(2)
        value = loss(x, lengths=LENGTHS)
        params = [p for p in model.parameters() if p.requires_grad]
        grads = torch.autograd.grad(value, params, allow_unused=True)
        results.append((loss.bound_, grads))
    return results


@pytest.mark.parametrize("name", sorted(_models()))
def test_nan_padding_gives_the_zero_padding_bound_and_finite_gradients(name):
    model = _models()[name]
    for (bound_nan, grads_nan), (bound_zero, grads_zero) in zip(
        _bound_and_grads(model, _padded(math.nan)), _bound_and_grads(model, _padded(0.0))
    ):
        torch.testing.assert_close(bound_nan, bound_zero, rtol=0, atol=0)
        for g_nan, g_zero in zip(grads_nan, grads_zero):
            if g_zero is None:
                assert g_nan is None
                continue
            assert torch.isfinite(g_nan).all()
            torch.testing.assert_close(g_nan, g_zero, rtol=0, atol=0)


@pytest.mark.parametrize("name", [n for n in sorted(_models()) if n.startswith(("ghmm", "dhmm"))])
def test_exact_log_prob_ignores_nan_padding(name):
    model = _models()[name]
    exact_nan = model.exact_log_prob(_padded(math.nan), lengths=LENGTHS)
    exact_zero = model.exact_log_prob(_padded(0.0), lengths=LENGTHS)
    torch.testing.assert_close(exact_nan, exact_zero, rtol=0, atol=0)
    params = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(exact_nan.sum(), params, allow_unused=True)
    assert all(g is None or torch.isfinite(g).all() for g in grads)
