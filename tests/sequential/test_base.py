"""The step contract: run_particles, the InfNet / GenModel views, pytrees, generation, errors."""

from __future__ import annotations

import copy
import math
import pickle

import pytest
import torch

from bbvae import NotFittedError
from bbvae.losses import ELBO, IWAE
from bbvae.sequential import SequentialModel, StepOutput, generate, run_particles, tree_map
from bbvae.sequential.base import gather_particles


def count_encodes(model):
    calls = [0]
    original = model.encode

    def counted(*args, **kwargs):
        calls[0] += 1
        return original(*args, **kwargs)

    model.encode = counted
    return calls


# ------------------------------------------------------------------------------ run_particles
@pytest.mark.parametrize("proposal", ["prior", "network", "optimal"])
def test_run_particles_shapes_and_teacher_forcing(seq, proposal):
    model = seq.make_ghmm(2, 3, proposal=proposal)
    x, _ = model.sample(4, 5)
    lengths = torch.tensor([5, 3, 1, 4])
    run = run_particles(model, x, 6, lengths=lengths)
    assert run.log_p.shape == (4, 6) and run.log_q.shape == (4, 6) and run.z.shape == (4, 6, 5, 2)
    again = run_particles(model, x, 6, lengths=lengths, z=run.z)
    torch.testing.assert_close(again.log_p, run.log_p)
    torch.testing.assert_close(again.log_q, run.log_q)
    assert torch.equal(again.z, run.z)


def test_run_particles_masks_padded_steps(seq):
    model = seq.make_ghmm(2, 3)
    x, _ = model.sample(2, 4)
    torch.manual_seed(0)
    full = run_particles(model, x, 3)
    torch.manual_seed(0)
    short = run_particles(model, x, 3, lengths=torch.tensor([4, 2]))
    torch.testing.assert_close(short.log_p[0], full.log_p[0])
    # the second sequence only scores its first two steps
    rescored = run_particles(model, x[1:, :2].contiguous(), 3, z=full.z[1:, :, :2].contiguous())
    torch.testing.assert_close(short.log_p[1:], rescored.log_p)


def test_run_particles_discrete_latents(seq):
    model = seq.make_dhmm(3, 4)
    x, _ = model.sample(2, 5)
    run = run_particles(model, x, 7, reparametrize=False)
    assert run.z.shape == (2, 7, 5) and run.z.dtype == torch.long
    torch.testing.assert_close(run_particles(model, x, 7, z=run.z).log_q, run.log_q)


class _BrokenModel(SequentialModel):
    latent_shape = (1,)

    def __init__(self, n_encoded=None, log_p_shape=None):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(()))
        self.n_encoded, self.log_p_shape = n_encoded, log_p_shape

    def encode(self, x, lengths=None, inputs=None):
        steps = list(x.unbind(1))
        return steps[: self.n_encoded] if self.n_encoded is not None else steps

    def init_state(self, encoded, n_particles):
        return encoded[0].new_zeros(encoded[0].shape[0], n_particles, 1)

    def step(self, state, encoded_t, z=None, reparametrize=True):
        z = state + self.w if z is None else z
        log_p = z.sum(-1) if self.log_p_shape is None else z.new_zeros(self.log_p_shape)
        return StepOutput(state, z, log_p, z.sum(-1))


def test_contract_violations_raise_clear_errors():
    x = torch.zeros(2, 3, 1)
    with pytest.raises(ValueError, match="encode returned 2 steps for x with T = 3"):
        run_particles(_BrokenModel(n_encoded=2), x, 4)
    with pytest.raises(ValueError, match=r"log_p of shape \[2\].*expected \[2, 4\]"):
        run_particles(_BrokenModel(log_p_shape=(2,)), x, 4)
    with pytest.raises(ValueError, match=r"expected z of shape \[2, 4, 3, 1\]"):
        run_particles(_BrokenModel(), x, 4, z=torch.zeros(2, 4, 3))
    with pytest.raises(TypeError, match="SequentialModel"):
        run_particles(torch.nn.GRU(1, 1), x, 4)
    with pytest.raises(ValueError, match=r"\[batch, T, \*obs_shape\], got \[3\]"):
        run_particles(_BrokenModel(), torch.zeros(3), 4)
    with pytest.raises(NotImplementedError, match="must implement encode"):
        run_particles(SequentialModel(), x, 2)


# ----------------------------------------------------------------------------------- pytrees
def test_default_reorder_gathers_every_leaf():
    ancestors = torch.tensor([[2, 2, 0], [1, 0, 1]])
    state = {"h": torch.arange(6.0).reshape(2, 3), "pair": (torch.arange(12).reshape(2, 3, 2), None), "n": 3}
    out = SequentialModel().reorder(state, ancestors)
    assert torch.equal(out["h"], torch.tensor([[2.0, 2.0, 0.0], [4.0, 3.0, 4.0]]))
    assert (
        torch.equal(out["pair"][0][1, 1], torch.tensor([6, 7])) and out["pair"][1] is None and out["n"] == 3
    )
    assert torch.equal(tree_map(lambda t: t * 2, [torch.ones(1)])[0], torch.tensor([2.0]))
    leaf = torch.randn(2, 3, 4, 5)
    assert torch.equal(gather_particles(leaf, ancestors)[1, 0], leaf[1, 1])


# ------------------------------------------------------------------------------------- views
def test_iwae_on_the_views_runs_the_recurrence_once(seq):
    model = seq.make_ghmm(2, 3, proposal="network")
    x, _ = model.sample(3, 6)
    lengths = torch.tensor([6, 4, 2])
    calls = count_encodes(model)
    loss = IWAE(model.inf_net, model.gen_model, n_samples=5)
    torch.manual_seed(1)
    value = loss(x, lengths=lengths)
    assert calls[0] == 1
    torch.manual_seed(1)
    run = run_particles(model, x, 5, lengths=lengths)
    expected = -(torch.logsumexp(run.log_p - run.log_q, 1) - math.log(5)).mean()
    torch.testing.assert_close(value, expected)
    value.backward()
    assert model.proposal_x.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_iwae_with_one_sample_is_the_elbo(seq, dtype):
    model = seq.make_ghmm(2, 3, proposal="network", dtype=dtype)
    x, _ = model.sample(3, 5)
    lengths = torch.tensor([5, 3, 4])
    grads = []
    for loss_cls in (IWAE, ELBO):
        model.zero_grad()
        torch.manual_seed(2)
        value = loss_cls(model.inf_net, model.gen_model, n_samples=1)(x, lengths=lengths)
        value.backward()
        grads.append((value.detach(), [p.grad.clone() for p in model.parameters()]))
    torch.testing.assert_close(grads[0][0], grads[1][0])
    for a, b in zip(grads[0][1], grads[1][1]):
        torch.testing.assert_close(a, b)


def test_cached_and_rescored_log_probs_agree(seq):
    model = seq.make_ghmm(2, 3, proposal="network")
    x, _ = model.sample(3, 4)
    q = model.inf_net(x, lengths=torch.tensor([4, 2, 3]))
    z = q.rsample(4)
    assert z.shape == (3, 4, 4, 2) and z.requires_grad
    log_q = q.log_prob(z)
    log_p = model.gen_model(x, z).log_prob(x, z)
    calls = count_encodes(model)
    assert q.log_prob(z) is log_q and calls[0] == 0  # cached
    other = z.detach().clone()
    torch.testing.assert_close(q.log_prob(other), log_q)  # teacher-forced, same values
    torch.testing.assert_close(model.gen_model(x, other).log_prob(x, other), log_p)
    assert calls[0] == 1  # the rescoring is cached for the generative view too
    # an in-place change of the cached z invalidates the cache
    z_s = q.sample(4)
    cached = q.log_prob(z_s)
    assert q.log_prob(z_s.detach()) is cached  # an unmodified detached alias is recognised
    z_s += 1.0
    assert q.log_prob(z_s) is not cached


def test_sample_keeps_the_score_path(seq):
    model = seq.make_ghmm(2, 3, proposal="network")
    x, _ = model.sample(2, 3)
    q = model.inf_net(x)
    z = q.sample(3)
    assert not z.requires_grad
    log_q = q.log_prob(z)
    log_q.sum().backward()
    assert model.proposal_x.bias.grad.abs().sum() > 0


@pytest.mark.filterwarnings("ignore:IWAE. the effective sample size collapsed")
def test_params_detached_rescoring_for_stl_and_dreg(seq):
    model = seq.make_ghmm(2, 3, proposal="network")
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    x, _ = model.sample(2, 4)
    q = model.inf_net(x)
    z = q.rsample(3)
    leaf = z.detach().requires_grad_()
    with q.params_detached():
        detached = q.log_prob(leaf)
    torch.testing.assert_close(detached, q.log_prob(z))
    grads = torch.autograd.grad(detached.sum(), [leaf, model.proposal_x.weight], allow_unused=True)
    assert grads[0] is not None and grads[0].abs().sum() > 0  # the path through z remains
    assert grads[1] is None  # q's parameters are detached
    for estimator in ("stl", "dreg"):
        loss = IWAE(model.inf_net, model.gen_model, n_samples=4, estimator=estimator)
        model.zero_grad()
        loss(x).backward()
        assert torch.isfinite(model.proposal_x.weight.grad).all()
    ELBO(model.inf_net, model.gen_model, n_samples=2, estimator="stl")(x).backward()


def test_views_share_parameters_without_a_module_cycle(seq):
    model = seq.make_ghmm(2, 3, proposal="network")
    keys = set(model.state_dict())
    loss = IWAE(model.inf_net, model.gen_model, n_samples=2)
    assert model.inf_net is model.inf_net and model.inf_net.model is model
    assert set(model.state_dict()) == keys
    assert {id(p) for p in loss.parameters()} == {id(p) for p in model.parameters()}
    assert len(list(model.modules())) == len(list(model.children())) + 1 + sum(
        len(list(c.modules())) - 1 for c in model.children()
    )
    x, _ = model.sample(2, 3)
    loss(x)
    clone = copy.deepcopy(model)
    restored = pickle.loads(pickle.dumps(model))
    for other in (clone, restored):
        torch.testing.assert_close(other.exact_log_prob(x), model.exact_log_prob(x))
        assert other.inf_net.model is other
    loss.eval()
    assert not model.training


def test_view_errors(seq):
    model = seq.make_ghmm(2, 3)
    fresh = seq.make_ghmm(2, 3, seed=1)
    with pytest.raises(NotFittedError):
        fresh.inf_net.log_prob(torch.zeros(1, 1, 2, 2))
    q = model.inf_net(torch.zeros(2, 3, 3))
    with pytest.raises(NotImplementedError, match="not a single torch Distribution"):
        q.distribution()
    with pytest.raises(ValueError, match=r"expected z of shape \[2, 3, 3, 2\]"):
        q.log_prob(torch.zeros(2, 3, 2))
    with pytest.raises(ValueError, match=r"lengths of shape \[2\]"):
        model.inf_net(torch.zeros(2, 3, 3), lengths=torch.tensor([1]))
    with pytest.raises(NotImplementedError, match="joint"):
        model.gen_model(torch.zeros(2, 3, 3), torch.zeros(2, 1, 3, 2)).log_prior(torch.zeros(2, 1, 3, 2))


def test_context_reaches_the_views_and_losses(seq):
    toy = seq.InputShiftModel().double()
    torch.manual_seed(0)
    inputs = 3 * torch.randn(4, 5, 1, dtype=torch.float64)
    x = inputs + 0.3 + 2**0.5 * torch.randn(4, 5, 1, dtype=torch.float64)
    lengths = torch.tensor([5, 2, 3, 1])
    loss = IWAE(toy.inf_net, toy.gen_model, n_samples=2000)
    loss(x, lengths=lengths, inputs=inputs)
    assert toy.seen_inputs is inputs
    exact = toy.exact_log_prob(x, lengths=lengths, inputs=inputs).detach()
    assert (loss.bound_ - exact).abs().max() < 0.3
    loss(x, lengths=lengths)  # without the inputs the bound is far below
    assert (loss.bound_ < exact - 1).sum() >= 3
    # the generative view scores a given z with the inference view's lengths and inputs
    z = toy.inf_net(x, lengths=lengths, inputs=inputs).sample(3)
    run = run_particles(toy, x, 3, lengths=lengths, inputs=inputs, z=z)
    torch.testing.assert_close(toy.gen_model(x, z.clone()).log_prob(x, z.clone()), run.log_p)


# -------------------------------------------------------------------------------- generation
def test_generation(seq):
    model = seq.make_ghmm(2, 3)
    x, z = generate(model, 5, 7)
    assert x.shape == (5, 7, 3) and z.shape == (5, 7, 2)
    x, z = model.gen_model.sample(2, 4)
    assert x.shape == (2, 4, 3)
    model.inf_net(torch.zeros(1, 6, 3))
    x, _ = model.gen_model.sample(3)  # T from the views' last batch (RWS's sleep phase)
    assert x.shape == (3, 6, 3)
    toy = seq.InputShiftModel()
    with pytest.raises(NotImplementedError, match="generation"):
        generate(toy, 2, 3)
    with pytest.raises(ValueError, match="length"):
        generate(seq.make_ghmm(), 2)
