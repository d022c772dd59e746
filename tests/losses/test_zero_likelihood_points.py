"""One behaviour for every loss when a data point has zero likelihood under every sample.

The point's bound is -inf, the loss value is inf, every gradient stays finite and the point
contributes nothing to it; while validation is on (the default) a RuntimeWarning names the points.
Such a point can be bad luck (a model of bounded support, few samples) as well as bad data, so it
is not an error; the Trainer stops on the infinite loss with its own message.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from torch import nn

import bbvae
from bbvae.losses import ELBO, FIVO, IWAE, NVIL, RWS, VIMCO, Concrete, WakeSleep
from bbvae.models import BernoulliInfNet, GaussianInfNet, LinearGaussianGenModel, SigmoidBeliefNet
from bbvae.sequential import VRNN

DEAD = 1  # the data point of zero likelihood


def _dead_rows(model, log_p: torch.Tensor) -> torch.Tensor:
    """``log_p`` ``[batch, K]`` with row ``DEAD`` set to -inf when ``model.dead`` is on."""
    if not model.dead:
        return log_p
    rows = torch.arange(log_p.shape[0], device=log_p.device) == DEAD
    return log_p.masked_fill(rows.unsqueeze(1), -math.inf)


class DeadGaussian(LinearGaussianGenModel):
    dead = False

    def log_prob(self, x, z):
        return _dead_rows(self, super().log_prob(x, z))


class DeadSBN(SigmoidBeliefNet):
    dead = False

    def log_likelihood(self, x, z):  # log_prob = log_prior + this; Concrete calls it directly
        return _dead_rows(self, super().log_likelihood(x, z))


def _gaussian():
    torch.manual_seed(0)
    p, q = DeadGaussian(2, 3).double(), GaussianInfNet(3, 2).double()
    x = torch.randn(4, 3, dtype=torch.float64)
    return p, q, x


def _sbn():
    torch.manual_seed(0)
    p, q = DeadSBN(3, 6).double(), BernoulliInfNet(6, 3).double()
    x = torch.bernoulli(torch.full((4, 6), 0.5, dtype=torch.float64))
    return p, q, x


LOSSES = {
    "elbo-reparam": (lambda q, p: ELBO(q, p, n_samples=2, estimator="reparam"), _gaussian),
    "elbo-stl": (lambda q, p: ELBO(q, p, n_samples=2, estimator="stl"), _gaussian),
    "elbo-score": (lambda q, p: ELBO(q, p, n_samples=2, estimator="score"), _sbn),
    "iwae-reparam": (lambda q, p: IWAE(q, p, n_samples=3), _gaussian),
    "iwae-stl": (lambda q, p: IWAE(q, p, n_samples=3, estimator="stl"), _gaussian),
    "iwae-dreg": (lambda q, p: IWAE(q, p, n_samples=3, estimator="dreg"), _gaussian),
    "vimco": (lambda q, p: VIMCO(q, p, n_samples=3), _sbn),
    "nvil": (lambda q, p: NVIL(q, p, n_samples=2), _sbn),
    "rws": (lambda q, p: RWS(q, p, n_samples=3), _sbn),
    "wake-sleep": (lambda q, p: WakeSleep(q, p), _sbn),
    "concrete": (lambda q, p: Concrete(q, p, n_samples=2), _sbn),
}


def _moved(x: torch.Tensor) -> torch.Tensor:
    """``x`` with the dead point's values changed (binary data flipped)."""
    x = x.clone()
    x[DEAD] = 1.0 - x[DEAD] if bool(((x == 0) | (x == 1)).all()) else x[DEAD] + 7.0
    return x


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_zero_likelihood_point_is_named_by_every_loss(name):
    make, data = LOSSES[name]
    p, q, x = data()
    loss = make(q, p)
    loss.prepare(x)
    p.dead = True
    with pytest.warns(RuntimeWarning, match=rf"data point\(s\) \[{DEAD}\] of the batch .* = -inf for all"):
        value = loss(x)
    assert value == math.inf


@pytest.mark.parametrize("validate", [True, False])
@pytest.mark.parametrize("name", sorted(LOSSES))
def test_a_zero_likelihood_point_contributes_nothing(name, validate):
    make, data = LOSSES[name]
    p, q, x = data()
    loss = make(q, p)
    loss.prepare(x)
    params = [prm for prm in loss.parameters() if prm.requires_grad]

    def grads(x_in):
        torch.manual_seed(1)
        value = loss(x_in)
        return value, torch.autograd.grad(value, params, allow_unused=True)

    p.dead = True
    bbvae.set_validation(validate)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            value, first = grads(x)
            # The dead point's own values do not matter: moving it changes no gradient.
            _, second = grads(_moved(x))
    finally:
        bbvae.set_validation(True)
    assert value == math.inf and torch.isneginf(loss.bound_[DEAD])
    assert torch.isfinite(loss.bound_[torch.arange(x.shape[0]) != DEAD]).all()
    assert all(g is None or torch.isfinite(g).all() for g in first)
    assert any(g is not None and g.abs().sum() > 0 for g in first)  # the live points still train
    for g1, g2 in zip(first, second):
        assert (g1 is None) == (g2 is None)
        if g1 is not None:
            torch.testing.assert_close(g1, g2, rtol=0, atol=0)


class _UniformEmission(nn.Module):
    """Emission x_t ~ U(0, 1)^D whatever the decoder says: zero likelihood outside [0, 1]."""

    def forward(self, params):
        zeros = params.new_zeros(*params.shape[:-1], 2)
        return torch.distributions.Independent(
            torch.distributions.Uniform(zeros, zeros + 1.0 + 0.0 * params[..., :2], validate_args=False), 1
        )


def _vrnn_data():
    torch.manual_seed(0)
    model = VRNN(obs_dim=2, latent_size=3, observation=_UniformEmission(), decoder=nn.Linear(3 + 3, 2))
    x = torch.rand(3, 5, 2)
    x[DEAD, 2] = 4.0  # outside the support at step 2
    return model, x, torch.tensor([5, 4, 5])


@pytest.mark.parametrize("bound", ["iwae", "fivo"])
def test_sequence_models_name_the_zero_likelihood_sequence(bound):
    model, x, lengths = _vrnn_data()
    if bound == "iwae":
        loss = IWAE(model.inf_net, model.gen_model, n_samples=3)
        match = rf"data point\(s\) \[{DEAD}\]"
    else:
        loss = FIVO(model.inf_net, model.gen_model, n_particles=3)
        match = rf"sequence {DEAD} at step 2"
    with pytest.warns(RuntimeWarning, match=match):
        value = loss(x, lengths=lengths)
    assert value == math.inf and torch.isneginf(loss.bound_[DEAD])
    value.backward()
    grads = [prm.grad for prm in model.parameters() if prm.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
