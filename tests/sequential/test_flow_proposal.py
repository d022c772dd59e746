"""FlowProposal: a per-step conditional flow on top of VRNN's / SRNN's Gaussian proposal (optional zuko)."""

from __future__ import annotations

import math

import pytest
import torch

pytest.importorskip("zuko")

from bbvae.losses import IWAE  # noqa: E402
from bbvae.losses.fivo import FIVO  # noqa: E402
from bbvae.sequential import RNN, SRNN, VRNN  # noqa: E402
from bbvae.sequential.base import run_particles  # noqa: E402
from bbvae.sequential.flow_proposal import FlowProposal  # noqa: E402

D, L = 4, 3


def _inner(cls):
    sizes = dict(latent_size=L, hidden_size=5, fc_hidden_sizes=(6,), encoded_size=6)
    return cls(D, observation="normal", **sizes).double()


@pytest.mark.parametrize("cls", [VRNN, SRNN])
def test_identity_flow_is_exactly_the_wrapped_model(cls):
    torch.manual_seed(0)
    inner = _inner(cls)
    wrapped = FlowProposal(inner, transforms=2, hidden=(8,)).double()
    x = torch.randn(3, 5, D, dtype=torch.float64)
    lengths = torch.tensor([5, 2, 4])
    torch.manual_seed(1)
    a = run_particles(wrapped, x, 4, lengths=lengths)
    torch.manual_seed(1)
    b = run_particles(inner, x, 4, lengths=lengths)
    torch.testing.assert_close(a.z, b.z, rtol=0, atol=0)
    torch.testing.assert_close(a.log_p, b.log_p, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(a.log_q, b.log_q, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("cls", [VRNN, SRNN])
@pytest.mark.parametrize("flow", ["realnvp", "maf"])
def test_log_q_is_the_change_of_variables(cls, flow):
    torch.manual_seed(2)
    inner = _inner(cls)
    wrapped = FlowProposal(inner, flow=flow, transforms=2, hidden=(8,), identity=False).double()
    x = torch.randn(2, 4, D, dtype=torch.float64)
    lengths = torch.tensor([4, 3])
    run = run_particles(wrapped, x, 3, lengths=lengths)  # sampled: the pathwise formula
    again = run_particles(wrapped, x, 3, lengths=lengths, z=run.z.detach())  # scored: via T(z)
    torch.testing.assert_close(again.log_q, run.log_q, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(again.log_p, run.log_p, rtol=1e-9, atol=1e-9)
    # One step by hand: log q(z) - log q_gauss(T(z)) = log |det dT/dz| (autograd Jacobian).
    encoded = wrapped.encode(x, lengths)
    state = wrapped.init_state(encoded, 3)
    z = torch.randn(2, 3, L, dtype=torch.float64)
    log_q = wrapped.step(state, encoded[0], z=z).log_q  # [2, 3]
    t = wrapped._transform(state, encoded[0])
    u = t(z)
    log_q_gauss = inner.step(state, encoded[0], z=u).log_q
    for b in range(2):
        for k in range(3):
            def one(v, b=b, k=k):
                full = z.clone()
                full[b, k] = v
                return t(full)[b, k]

            jac = torch.autograd.functional.jacobian(one, z[b, k])
            expected = log_q_gauss[b, k] + torch.linalg.slogdet(jac)[1]
            torch.testing.assert_close(log_q[b, k], expected, rtol=1e-9, atol=1e-9)


def test_training_with_fivo_and_dreg():
    torch.manual_seed(3)
    inner = VRNN(D, latent_size=L, hidden_size=8, observation="normal")
    model = FlowProposal(inner, transforms=2, hidden=(16,), identity=False)
    x = torch.randn(4, 6, D)
    lengths = torch.tensor([6, 4, 5, 2])
    score = IWAE(model.inf_net, model.gen_model, 16)

    def seeded() -> float:
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            return float(score(x, lengths=lengths))

    before = seeded()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    q, p = model.inf_net, model.gen_model
    for loss in (FIVO(q, p, 4), IWAE(q, p, 4, estimator="dreg")):
        for _ in range(15):
            opt.zero_grad()
            value = loss(x, lengths=lengths)
            value.backward()
            opt.step()
            assert math.isfinite(float(value.detach()))
    assert seeded() < before - 1.0
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.flow.parameters())


def test_sequence_model_takes_a_flow_proposal_and_rnn_is_refused():
    from bbvae.sequential import SequenceModel

    torch.manual_seed(4)
    seqs = [torch.randn(n, D) for n in (7, 5, 6)]
    model = FlowProposal(VRNN(D, latent_size=L, hidden_size=6, observation="normal"), hidden=(8,))
    est = SequenceModel(model=model, bound="fivo", max_steps=3, batch_size=2, random_state=0).fit(seqs)
    assert math.isfinite(est.score(seqs))
    x, z = est.sample(2, 4)
    assert x.shape == (2, 4, D) and z.shape == (2, 4, L)
    with pytest.raises(TypeError, match="expected a VRNN or SRNN to wrap, got RNN"):
        FlowProposal(RNN(D, hidden_size=4, observation="normal"))
