"""DReG on sequence models: the reweighted gradient must reach q through log p as well as log q.

A sequence model's sampling pass already computes log p from the per-step latents; DReG must
instead differentiate log w = log p(x, z) - log q_sg(z | x) through the stacked z it reweights.
The reference below recomputes both terms teacher-forced from z and differentiates
``sum_k sg(c_k) log w_k`` with respect to the proposal's parameters, where ``c_k = w_k^2`` for
IWAE-DReG and ``w_k - w_k^2`` for RWS-DReG (Tucker et al. 2019).
"""

import pytest
import torch

from bbvae.losses import IWAE, RWS
from bbvae.sequential import GaussianHMM, run_particles


def _proposal_params(model):
    return [p for name, p in model.named_parameters() if name.startswith("proposal")]


def _reference_q_gradient(model, x, k, factor, seed):
    torch.manual_seed(seed)
    z = model.inf_net(x).rsample(k)  # [batch, K, T, z_dim], the loss's draws
    detached = {name: p.detach() for name, p in model.named_parameters()}
    log_q = torch.func.functional_call(model, detached, (x,), {"n_particles": k, "z": z}).log_q
    log_w = run_particles(model, x, k, z=z).log_p - log_q  # [batch, K]
    weights = torch.softmax(log_w.detach(), dim=1)
    surrogate = (factor(weights) * log_w).sum(dim=1).mean()
    return torch.autograd.grad(-surrogate, _proposal_params(model))


@pytest.mark.parametrize(
    "make_loss, factor",
    [
        (lambda m, k: IWAE(m.inf_net, m.gen_model, n_samples=k, estimator="dreg"), lambda w: w**2),
        (
            lambda m, k: RWS(m.inf_net, m.gen_model, n_samples=k, estimator="dreg"),
            lambda w: w - w**2,
        ),
    ],
    ids=["iwae", "rws"],
)
def test_dreg_gradient_of_the_proposal_on_a_gaussian_hmm(make_loss, factor):
    torch.manual_seed(0)
    model = GaussianHMM(2, 2, proposal="network").double()
    x, _ = model.sample(3, 5)  # [3, 5, 2]
    k, seed = 4, 11
    expected = _reference_q_gradient(model, x, k, factor, seed)
    torch.manual_seed(seed)
    model.zero_grad()
    make_loss(model, k)(x).backward()
    for got, want in zip([p.grad for p in _proposal_params(model)], expected):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)
    assert any(bool(g.abs().sum() > 0) for g in expected)  # the check is not vacuous
