"""FlowProposal: a per-step conditional flow on the Gaussian proposal of VRNN, SRNN, GaussianHMM (zuko)."""

from __future__ import annotations

import math

import pytest
import torch

pytest.importorskip("zuko")

from bbvae.losses import IWAE  # noqa: E402
from bbvae.losses.fivo import FIVO  # noqa: E402
from bbvae.sequential import RNN, SRNN, VRNN, GaussianHMM  # noqa: E402
from bbvae.sequential.base import run_particles  # noqa: E402
from bbvae.sequential.flow_proposal import FlowProposal  # noqa: E402

D, L = 4, 3


def _inner(cls):
    if cls == "ghmm":  # a network proposal moved off its N(0, I) start, so that q depends on the context
        model = GaussianHMM(L, D, proposal="network", hidden=(6,)).double()
        with torch.no_grad():
            for param in model.proposal_rest.parameters():
                param.add_(0.3 * torch.randn_like(param))
        return model
    sizes = dict(latent_size=L, hidden_size=5, fc_hidden_sizes=(6,), encoded_size=6)
    return cls(D, observation="normal", **sizes).double()


MODELS = [VRNN, SRNN, "ghmm"]


@pytest.mark.parametrize("cls", MODELS)
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


@pytest.mark.parametrize("cls", MODELS)
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
    with pytest.raises(TypeError, match="expected a VRNN, SRNN or GaussianHMM to wrap, got RNN"):
        FlowProposal(RNN(D, hidden_size=4, observation="normal"))


def _ghmm(proposal: str, seed: int, emission_scale: float = 1.0) -> GaussianHMM:
    """z_dim 2, x_dim 1 (x_t = z_1 + z_2 + noise: a correlated posterior), generative part frozen."""
    torch.manual_seed(seed)
    model = GaussianHMM(2, 1, proposal=proposal).double()
    with torch.no_grad():
        model.transition.copy_(torch.tensor([[0.7, 0.2], [-0.1, 0.6]]))
        model.emission.copy_(torch.tensor([[1.0, 1.0]]))
        model.emission_log_scale.fill_(math.log(emission_scale))
    for name, param in model.named_parameters():
        param.requires_grad_(name.startswith("proposal"))
    return model


def test_a_flow_proposal_on_a_ghmm_is_a_normalised_density():
    # E_q[p(x, z) / q(z | x)] = p(x) for a normalised q: the mean weight over 100,000 draws of a
    # non-identity flow (on the locally optimal proposal, so that the weights have a usable
    # variance) matches the Kalman filter's p(x) within 4 standard errors. The same flow with the
    # log |det| subtracted instead of added is 60-110 se off (checked by hand).
    model = _ghmm("optimal", seed=5)
    wrapped = FlowProposal(model, transforms=2, hidden=(8,)).double()
    torch.manual_seed(6)
    with torch.no_grad():
        for layer in wrapped.flow.transform.transforms:
            last = [m for m in layer.hyper.modules() if hasattr(m, "weight")][-1]
            last.weight.normal_(0, 0.1)
            last.bias.normal_(0, 0.1)
        x, _ = model.sample(2, 3)
        n = 100_000
        run = run_particles(wrapped, x, n)
        log_w = run.log_p - run.log_q  # [2, n]
        exact = model.exact_log_prob(x)  # [2]
        w = torch.exp(log_w - exact.unsqueeze(1))  # mean 1 for a normalised q
        base = run_particles(model, x, n)
    mean, se = w.mean(1), w.std(1) / math.sqrt(n)
    assert ((mean - 1).abs() < 4 * se).all(), (mean.tolist(), se.tolist())
    assert (se < 0.01).all()  # the check has power
    # ... and the flow moved q: its ELBO differs from the wrapped Gaussian's by many se.
    log_w_base = base.log_p - base.log_q
    se_d = ((log_w.var(1) + log_w_base.var(1)) / n).sqrt()
    assert ((log_w.mean(1) - log_w_base.mean(1)).abs() > 10 * se_d).all()


def test_training_a_flow_proposal_on_a_fixed_ghmm_tightens_the_elbo():
    # Only q trains (the generative part is frozen): the ELBO rises, stays below the exact log p(x)
    # (within 4 se), and the generative parameters do not move.
    model = _ghmm("network", seed=8)
    wrapped = FlowProposal(model, transforms=2, hidden=(16,)).double()
    generative = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    torch.manual_seed(9)
    x, _ = model.sample(16, 4)
    exact = model.exact_log_prob(x).mean()
    q, p = wrapped.inf_net, wrapped.gen_model

    def elbo(n: int = 2000) -> tuple[float, float]:
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            run = run_particles(wrapped, x, n)
            per = (run.log_p - run.log_q).mean(0)  # [n] the batch's mean, per draw
        return float(per.mean()), float(per.std() / math.sqrt(n))

    before, _ = elbo()
    opt = torch.optim.Adam([t for t in wrapped.parameters() if t.requires_grad], lr=1e-2)
    loss = IWAE(q, p, 1)  # K = 1: the ELBO
    for _ in range(150):
        opt.zero_grad()
        loss(x).backward()
        opt.step()
    after, se = elbo()
    assert after > before + 1.0, (before, after)
    assert after < float(exact) + 4 * se, (after, float(exact), se)
    for name, value in model.named_parameters():
        if name in generative:
            torch.testing.assert_close(value, generative[name], rtol=0, atol=0)
