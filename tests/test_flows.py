"""Normalising flows (optional zuko): exact log-densities, the losses with a flow q, the flow prior."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch
from torch.distributions import Independent, Normal

from bbvae.losses import ELBO, IWAE
from bbvae.models import LinearGaussianGenModel


def test_the_core_does_not_need_zuko_and_flows_name_the_extra(monkeypatch):
    code = "import bbvae, bbvae.sequential, bbvae.losses, bbvae.flows, sys; print('zuko' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
    monkeypatch.setitem(sys.modules, "zuko", None)  # import zuko now raises ImportError
    from bbvae.flows import FlowInfNet, RealNVPDensity

    with pytest.raises(ImportError, match=r"pip install 'bbvae\[flows\]'"):
        FlowInfNet(3, 2)
    with pytest.raises(ImportError, match=r"pip install 'bbvae\[flows\]'"):
        RealNVPDensity(2)


zuko = pytest.importorskip("zuko")

from bbvae.flows import FLOWS, FlowInfNet, FlowPriorGenModel, RealNVPDensity, identity_init  # noqa: E402


def _brute_force_log_prob(dist, base, z_one: torch.Tensor) -> torch.Tensor:
    """log q(z) = log base(t(z)) + log |det dt/dz| with the Jacobian from autograd (one z [L])."""
    t = dist.transform
    jac = torch.autograd.functional.jacobian(lambda v: t(v.unsqueeze(0)).squeeze(0), z_one)
    return base.log_prob(t(z_one.unsqueeze(0))).squeeze(0) + torch.linalg.slogdet(jac)[1]


@pytest.mark.parametrize("flow", FLOWS)
def test_flow_posterior_log_prob_is_the_change_of_variables(flow):
    torch.manual_seed(0)
    q = FlowInfNet(4, 3, flow=flow, transforms=2, identity=False).double()
    x = torch.randn(2, 4, dtype=torch.float64)
    z = q(x).rsample(3)  # [2, 3, 3]
    assert z.shape == (2, 3, 3)
    got = q.log_prob(z)  # [2, 3]
    assert got.shape == (2, 3)
    for b in range(2):
        one = q(x[b : b + 1])
        dist = one.distribution()
        base = Independent(Normal(one.params_["loc"], one.params_["scale"]), 1)
        for k in range(3):
            ref = _brute_force_log_prob(dist, base, z[b, k].detach())
            torch.testing.assert_close(got[b, k], ref[0] if ref.dim() else ref, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("flow", FLOWS)
def test_identity_flow_is_exactly_the_gaussian_base(flow):
    torch.manual_seed(1)
    q = FlowInfNet(4, 3, flow=flow, transforms=2).double()  # identity=True: the base exactly
    x = torch.randn(5, 4, dtype=torch.float64)
    z = q(x).rsample(7)
    ref = Independent(Normal(q.params_["loc"], q.params_["scale"]), 1).log_prob(z.movedim(1, 0)).movedim(0, 1)
    torch.testing.assert_close(q.log_prob(z), ref, rtol=1e-12, atol=1e-12)


def test_realnvp_density_is_the_change_of_variables_and_normalised():
    torch.manual_seed(2)
    density = RealNVPDensity(2, transforms=3, hidden=(16,)).double()
    v = torch.randn(4, 2, dtype=torch.float64)
    got = density.log_prob(v)
    dist = density.distribution()
    for i in range(4):
        ref = _brute_force_log_prob(dist, dist.base, v[i])
        torch.testing.assert_close(got[i], ref, rtol=1e-9, atol=1e-9)
    # A density integrates to one: a Riemann sum over a wide grid.
    g = torch.linspace(-12, 12, 601, dtype=torch.float64)
    grid = torch.stack(torch.meshgrid(g, g, indexing="ij"), -1).reshape(-1, 2)
    with torch.no_grad():
        total = density.log_prob(grid).exp().sum() * (g[1] - g[0]) ** 2
    assert abs(float(total) - 1.0) < 1e-3
    assert density.sample(5).shape == (5, 2)
    with pytest.raises(ValueError, match=r"expected v of shape \[\.\.\., 2\], got \[4, 3\]"):
        density.log_prob(torch.zeros(4, 3))


def _exact_q(p: LinearGaussianGenModel, flow: str) -> FlowInfNet:
    """A FlowInfNet equal to p's exact posterior (diagonal here): affine base, identity flow."""
    a, c, cov = (t.detach() for t in p.posterior_params())
    assert torch.allclose(cov, torch.diag(cov.diagonal()), atol=1e-12)
    q = FlowInfNet(p.x_dim, p.z_dim, hidden=(), flow=flow, transforms=2).double()
    linear = q.net[0]
    with torch.no_grad():
        linear.weight.zero_()
        linear.bias.zero_()
        linear.weight[: p.z_dim] = a
        linear.bias[: p.z_dim] = c
        # softplus(raw) + 1e-4 = sqrt(var)
        target = cov.diagonal().sqrt() - 1e-4
        linear.bias[p.z_dim : 2 * p.z_dim] = target + torch.log(-torch.expm1(-target))
    return q


@pytest.mark.parametrize("flow", ["realnvp", "maf"])
def test_stl_and_dreg_gradients_vanish_at_the_exact_posterior(flow):
    """At q = p(z|x) the STL and DReG gradients of q are zero draw by draw: only if the flow's
    weights are detached too (their score term is zero in mean, not per draw)."""
    torch.manual_seed(3)
    p = LinearGaussianGenModel(2, 3).double()
    with torch.no_grad():  # orthogonal columns: W^T W diagonal, so the posterior is diagonal
        p.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 2.0], [0.0, 0.0]], dtype=torch.float64))
    q = _exact_q(p, flow)
    x = torch.randn(6, 3, dtype=torch.float64)
    exact = p.exact_log_prob(x)
    torch.testing.assert_close(IWAE(q, p, 5)(x).neg(), exact.mean(), rtol=1e-9, atol=1e-9)
    for loss in (ELBO(q, p, 4, estimator="stl"), IWAE(q, p, 4, estimator="dreg")):
        q.zero_grad()
        loss(x).backward()
        grads = [g.grad for g in q.parameters() if g.grad is not None]
        assert grads and max(float(g.abs().max()) for g in grads) < 1e-9
    # The plain pathwise ELBO gradient keeps the score term: not zero draw by draw.
    q.zero_grad()
    ELBO(q, p, 4, estimator="reparam")(x).backward()
    assert max(float(g.grad.abs().max()) for g in q.flow.parameters() if g.grad is not None) > 1e-6


def test_params_detached_freezes_the_flow_weights_and_restores_them():
    torch.manual_seed(4)
    q = FlowInfNet(3, 2, flow="maf", identity=False)
    z = q(torch.randn(4, 3)).rsample(2).detach()
    with q.params_detached():
        assert not q.log_prob(z).requires_grad
    assert all(p.requires_grad for p in q.parameters())
    assert q.log_prob(z).requires_grad


@pytest.mark.parametrize("name", ["elbo", "elbo-stl", "iwae", "iwae-dreg"])
def test_losses_train_with_a_flow_q_and_a_flow_prior(name):
    torch.manual_seed(5)
    x = torch.randn(64, 2) @ torch.tensor([[1.0, 0.9], [0.0, 0.4]]) + torch.tensor([1.0, -1.0])
    q = FlowInfNet(2, 2, hidden=(16,), transforms=2, flow_hidden=(16,))
    p = FlowPriorGenModel(2, 2, hidden=(16,), transforms=2, flow_hidden=(16,))
    loss = {
        "elbo": ELBO(q, p, 2),
        "elbo-stl": ELBO(q, p, 2, estimator="stl"),
        "iwae": IWAE(q, p, 4),
        "iwae-dreg": IWAE(q, p, 4, estimator="dreg"),
    }[name]
    score = IWAE(q, p, 32)

    def seeded() -> float:
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            return float(score(x))

    before = seeded()
    opt = torch.optim.Adam([*q.parameters(), *p.parameters()], lr=1e-2)
    for _ in range(60):
        opt.zero_grad()
        value = loss(x)
        value.backward()
        opt.step()
        assert math.isfinite(float(value.detach()))
    assert seeded() < before - 0.5
    xs, zs = p.sample(3)
    assert xs.shape == (3, 2) and zs.shape == (3, 2)


def test_identity_init_and_bad_arguments():
    with pytest.raises(ValueError, match=r"expected flow in \('realnvp', 'maf', 'nsf'\), got 'iaf'"):
        FlowInfNet(3, 2, flow="iaf")
    with pytest.raises(ValueError, match="expected x of shape \\[batch, 3\\], got \\[4, 2\\]"):
        FlowInfNet(3, 2)(torch.zeros(4, 2))
    with pytest.raises(ValueError, match="likelihood"):
        FlowPriorGenModel(2, 3, likelihood="poisson")
    flow = zuko.flows.NSF(3, transforms=2)
    identity_init(flow)
    v = torch.randn(5, 3)
    torch.testing.assert_close(flow().transform(v), v)
