"""Concrete / Gumbel-softmax on a generative model that writes only ``log_prob(x, z)`` (no ``prior()``).

The surrogate is then the user's log p(x, z~) at the relaxed sample against q's linear log-mass (Jang
et al. 2017); the reported value stays the discrete ELBO. Checked against enumeration (float64, fixed
seeds, 4 standard errors).
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.distributions import Bernoulli, Independent

from bbvae.base import GenModel
from bbvae.losses import Concrete
from bbvae.models import BernoulliInfNet, SigmoidBeliefNet, all_binary_configurations


class LogProbOnly(GenModel):
    """A sigmoid belief net written as one ``log_prob`` (prior log-mass linear in z): no ``prior()``."""

    def __init__(self, inner: SigmoidBeliefNet) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x, z):
        return {"logits": self.inner.net(z)}

    def log_prob(self, x, z):
        a = self.inner.prior_logits
        log_prior = (z * nn.functional.logsigmoid(a) + (1 - z) * nn.functional.logsigmoid(-a)).sum(-1)
        return log_prior + Independent(Bernoulli(logits=self.params_["logits"]), 1).log_prob(x.unsqueeze(1))


@pytest.fixture
def model():
    torch.manual_seed(0)
    sbn = SigmoidBeliefNet(3, 6).double()
    with torch.no_grad():
        for prm in sbn.parameters():
            prm.add_(0.8 * torch.randn_like(prm))
    x, _ = sbn.sample(4)
    q = BernoulliInfNet(6, 3).double()
    return sbn, LogProbOnly(sbn), q, x


def exact_elbo(sbn, q, x):
    z = all_binary_configurations(3, like=x).unsqueeze(0).expand(x.shape[0], -1, -1)
    log_q = q(x).log_prob(z)
    log_p = sbn(x, z).log_prob(x, z)
    return (log_q.exp() * (log_p - log_q)).sum(1)


@pytest.mark.parametrize("straight_through", [False, True])
def test_reported_value_is_the_discrete_elbo(model, straight_through):
    sbn, black_box, q, x = model
    loss = Concrete(q, black_box, straight_through=straight_through, n_samples=2000)
    torch.manual_seed(1)
    with torch.no_grad():
        loss(x)
    exact = exact_elbo(sbn, q, x)
    per_sample = loss.log_p_ - loss.log_q_  # [batch, K], exact draws of q
    se = per_sample.std(1) / math.sqrt(per_sample.shape[1])
    assert ((loss.bound_ - exact).abs() < 4 * se).all()


@pytest.mark.parametrize("straight_through", [False, True])
def test_black_box_model_gives_q_a_gradient(model, straight_through):
    sbn, black_box, q, x = model
    # The black-box model trains: q gets a finite, non-zero gradient, and the history records the call.
    loss = Concrete(q, black_box, straight_through=straight_through, temperature=0.5)
    torch.manual_seed(2)
    value = loss(x)
    value.backward()
    grads = [p.grad for p in q.parameters()]
    assert all(g is not None and torch.isfinite(g).all() and g.abs().sum() > 0 for g in grads)
    assert len(loss.loss_history_) == 1 and math.isfinite(loss.loss_history_[0])


def test_with_prior_and_black_box_straight_through_agree(model):
    # Straight-through feeds hard latents forward: the black-box log_prob equals the prior() form,
    # so the same noise gives the same value and the same gradient.
    sbn, black_box, q, x = model
    out = []
    for p in (sbn, black_box):
        q.zero_grad()
        torch.manual_seed(3)
        value = Concrete(q, p, straight_through=True, n_samples=3)(x)
        value.backward()
        out.append((value.detach(), [prm.grad.clone() for prm in q.parameters()]))
    assert torch.allclose(out[0][0], out[1][0])
    assert all(torch.allclose(a, b) for a, b in zip(out[0][1], out[1][1]))
