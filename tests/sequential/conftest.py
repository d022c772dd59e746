"""Shared models and brute-force oracles for the sequential tests.

The fixture ``seq`` gives them as a namespace (tests run with --import-mode=importlib, so test
modules do not import conftest):

* ``make_ghmm(z_dim, x_dim, proposal, dtype, seed)``: a GaussianHMM with fixed random parameters.
* ``dense_ghmm_log_prob(model, x)``: log p(x) from the explicit joint Gaussian of x_{1:T}.
* ``make_dhmm(n_states, n_obs, proposal, dtype, seed)``: a DiscreteHMM with categorical symbols.
* ``enumerate_dhmm_log_prob(model, x)``: log p(x) summed over every state path.
* ``InputShiftModel``: a toy model that reads side inputs (exact likelihood known).

For the neural models (VRNN, SRNN, RNN, IndependentVAE), with the small sizes ``D`` (observation
size), ``V`` (vocabulary), ``L`` (latent) and ``H`` (hidden):

* ``neural(cls, observation, cell, input_size, dtype, **kw)``: a model of class ``cls``.
* ``make_x(observation, batch, n_steps, dtype)``: random data of that observation family.
* ``pad_mask(x, lengths)`` (broadcastable to ``x``), ``clean_padding(x, lengths)`` (zeros past each
  length) and ``with_garbage(x, lengths)`` (NaN, or huge symbol indices, past each length).
* ``assert_padding_ignored(model, x, lengths, symbol)``: IWAE's bound and every gradient are
  bit-identical whether ``x`` holds zeros or garbage past the lengths.
* ``assert_finite_iwae_gradients(model, x, k, **context)``: IWAE's bound ``[batch]`` and every
  parameter's gradient are finite.
* ``moving_dot(batch, n_steps, dim, generator)``: one-hot dots moving one place per step.
* ``training_gain(model, gen, n_steps, dim)``: the IWAE bound on moving dots before and after
  100 Adam steps.
"""

from __future__ import annotations

import itertools
from types import SimpleNamespace

import pytest
import torch
from torch.distributions import Independent, MultivariateNormal, Normal

from bbvae.losses import IWAE
from bbvae.sequential import RNN, DiscreteHMM, GaussianHMM, SequentialModel, StepOutput

D, V, L, H = 4, 5, 3, 8  # observation size, vocabulary, latent size, hidden size


def make_ghmm(z_dim=2, x_dim=3, proposal="prior", dtype=torch.float64, seed=0, **kwargs) -> GaussianHMM:
    """A GaussianHMM with fixed, well-conditioned, non-trivial parameters."""
    torch.manual_seed(seed)
    model = GaussianHMM(z_dim, x_dim, proposal=proposal, **kwargs).to(dtype)
    with torch.no_grad():
        a = 0.3 * torch.randn(z_dim, z_dim, dtype=dtype) + 0.6 * torch.eye(z_dim, dtype=dtype)
        model.transition.copy_(a)
        model.emission.copy_(torch.randn(x_dim, z_dim, dtype=dtype))
        model.init_loc.copy_(0.5 * torch.randn(z_dim, dtype=dtype))
        model.init_log_scale.copy_(0.2 * torch.randn(z_dim, dtype=dtype))
        model.transition_log_scale.copy_(-0.3 + 0.2 * torch.randn(z_dim, dtype=dtype))
        model.emission_log_scale.copy_(-0.2 + 0.2 * torch.randn(x_dim, dtype=dtype))
    return model


def dense_ghmm_log_prob(model: GaussianHMM, x: torch.Tensor) -> torch.Tensor:
    """log p(x_{1:T}) from the explicit joint Gaussian of x_{1:T} (``x`` ``[batch, T, x_dim]``)."""
    n_steps, zd = x.shape[1], model.z_dim
    a, c = model.transition.detach(), model.emission.detach()
    s0, sq, sr = (s.detach() for s in model._noise())
    means = [model.init_loc.detach()]
    marginal_covs = [torch.diag(s0**2)]
    for _ in range(1, n_steps):
        means.append(a @ means[-1])
        marginal_covs.append(a @ marginal_covs[-1] @ a.T + torch.diag(sq**2))
    joint = torch.zeros(n_steps * zd, n_steps * zd, dtype=x.dtype)
    for t in range(n_steps):
        for s in range(t + 1):
            block = torch.linalg.matrix_power(a, t - s) @ marginal_covs[s]  # Cov(z_t, z_s)
            joint[t * zd : (t + 1) * zd, s * zd : (s + 1) * zd] = block
            joint[s * zd : (s + 1) * zd, t * zd : (t + 1) * zd] = block.T
    big_c = torch.block_diag(*[c] * n_steps)
    cov = big_c @ joint @ big_c.T + torch.diag((sr**2).repeat(n_steps))
    mean = big_c @ torch.cat(means)
    return MultivariateNormal(mean, cov).log_prob(x.reshape(x.shape[0], -1))


def enumerate_dhmm_log_prob(model: DiscreteHMM, x: torch.Tensor) -> torch.Tensor:
    """log p(x_{1:T}) of a DiscreteHMM by summing over all S^T state paths."""
    n_steps, n_states = x.shape[1], model.n_states
    log_init = torch.log_softmax(model.init_logits.detach(), 0)
    log_trans = torch.log_softmax(model.transition_logits.detach(), 1)
    emission = model.emission_log_probs(x).detach()  # [batch, T, S]
    terms = []
    for path in itertools.product(range(n_states), repeat=n_steps):
        lp = log_init[path[0]] + emission[:, 0, path[0]]
        for t in range(1, n_steps):
            lp = lp + log_trans[path[t - 1], path[t]] + emission[:, t, path[t]]
        terms.append(lp)
    return torch.logsumexp(torch.stack(terms, 1), 1)


def make_dhmm(n_states=3, n_obs=4, proposal="network", dtype=torch.float64, seed=0, **kwargs) -> DiscreteHMM:
    torch.manual_seed(seed)
    model = DiscreteHMM(n_states, n_obs=n_obs, proposal=proposal, **kwargs).to(dtype)
    with torch.no_grad():
        model.init_logits.copy_(torch.randn(n_states, dtype=dtype))
        model.transition_logits.copy_(2.0 * torch.randn(n_states, n_states, dtype=dtype))
        if hasattr(model, "emission_logits"):
            model.emission_logits.copy_(2.0 * torch.randn(n_states, n_obs, dtype=dtype))
        if proposal == "network":
            model.proposal_transition.copy_(torch.randn(n_states + 1, n_states, dtype=dtype))
            if model.discrete_obs:
                model.proposal_obs.weight.copy_(torch.randn(n_obs, n_states, dtype=dtype))
    return model


class InputShiftModel(SequentialModel):
    """Toy model with side inputs: z_t ~ N(u_t + b, 1), x_t ~ N(z_t, 1), bootstrap proposal.

    Exact: x_t ~ N(u_t + b, 2) independently. ``state`` is a dict (to exercise pytree reorder).
    """

    latent_shape = (1,)

    def __init__(self) -> None:
        super().__init__()
        self.bias = torch.nn.Parameter(torch.tensor(0.3))
        self.seen_inputs = None

    def encode(self, x, lengths=None, inputs=None):
        self.seen_inputs = inputs
        u = inputs if inputs is not None else torch.zeros_like(x)
        return [{"x": x_t, "u": u_t} for x_t, u_t in zip(x.unbind(1), u.unbind(1))]

    def init_state(self, encoded, n_particles):
        x0 = encoded[0]["x"]
        return {
            "count": x0.new_zeros(x0.shape[0], n_particles),
            "pair": (x0.new_zeros(x0.shape[0], n_particles, 1),),
        }

    def step(self, state, encoded_t, z=None, reparametrize=True):
        loc = (encoded_t["u"] + self.bias).unsqueeze(1).expand(-1, state["count"].shape[1], -1)
        prior = Independent(Normal(loc, torch.ones_like(loc)), 1)
        if z is None:
            z = prior.rsample() if reparametrize else prior.sample()
        log_q = prior.log_prob(z)
        x_t = encoded_t["x"].unsqueeze(1)
        log_p = log_q + Independent(Normal(z, torch.ones_like(z)), 1).log_prob(x_t)
        return StepOutput({"count": state["count"] + 1, "pair": (z,)}, z, log_p, log_q)

    def exact_log_prob(self, x, lengths=None, inputs=None):
        u = inputs if inputs is not None else torch.zeros_like(x)
        lp = Normal(u + self.bias, 2**0.5).log_prob(x).sum(-1)  # [batch, T]
        if lengths is not None:
            lp = torch.where(torch.arange(x.shape[1]) < lengths.unsqueeze(1), lp, 0.0)
        return lp.sum(1)


# ----------------------------------------------------------------------------- neural models
def neural(cls, observation="bernoulli", cell="lstm", input_size=0, dtype=torch.float64, **kw):
    """A small ``cls`` model (VRNN, SRNN, RNN or IndependentVAE) for ``observation`` data."""
    obs_dim = V if observation == "categorical" else D
    common = dict(cell=cell, observation=observation, input_size=input_size, embedding_size=3)
    if cls is RNN:
        return cls(obs_dim, hidden_size=H, encoded_size=6, **common, **kw).to(dtype)
    sizes = dict(latent_size=L, hidden_size=H, fc_hidden_sizes=(H,), encoded_size=6)
    return cls(obs_dim, **sizes, **common, **kw).to(dtype)


def make_x(observation, batch, n_steps, dtype=torch.float64):
    if observation == "categorical":
        return torch.randint(0, V, (batch, n_steps))
    if observation == "bernoulli":
        return torch.bernoulli(torch.full((batch, n_steps, D), 0.3, dtype=dtype))
    return torch.randn(batch, n_steps, D, dtype=dtype)


def pad_mask(x, lengths):
    """``[batch, T]`` (symbols) or ``[batch, T, 1]``: True where ``t < lengths[b]``."""
    mask = torch.arange(x.shape[1]).unsqueeze(0) < lengths.unsqueeze(1)  # [batch, T]
    return mask.unsqueeze(-1) if x.dim() == 3 else mask


def clean_padding(x, lengths):
    return torch.where(pad_mask(x, lengths), x, torch.zeros_like(x))


def with_garbage(x, lengths, symbol=10**6):
    """Entries past each length replaced by garbage: NaN for real data, ``symbol`` (an index out of
    the vocabulary) for symbols."""
    garbage = torch.full_like(x, float("nan")) if x.is_floating_point() else torch.full_like(x, symbol)
    return torch.where(pad_mask(x, lengths), x, garbage)


def assert_padding_ignored(model, x, lengths, symbol=10**6):
    """``x`` with zeros past the lengths and with garbage there give bit-identical results."""
    x = clean_padding(x, lengths)
    results = []
    for data in (x, with_garbage(x, lengths, symbol)):
        model.zero_grad()
        torch.manual_seed(7)
        loss = IWAE(model.inf_net, model.gen_model, n_samples=3)
        loss(data, lengths=lengths).backward()
        results.append((loss.bound_, [p.grad.clone() for p in model.parameters()]))
    assert torch.equal(results[0][0], results[1][0])
    assert all(torch.equal(a, b) for a, b in zip(results[0][1], results[1][1]))


def assert_finite_iwae_gradients(model, x, k, **context):
    loss = IWAE(model.inf_net, model.gen_model, n_samples=k)
    loss(x, **context).backward()
    assert loss.bound_.shape == (x.shape[0],) and bool(torch.isfinite(loss.bound_).all())
    assert all(p.grad is not None and bool(torch.isfinite(p.grad).all()) for p in model.parameters())


def moving_dot(batch, n_steps, dim, generator):
    start = torch.randint(0, dim, (batch, 1), generator=generator)
    return torch.nn.functional.one_hot((start + torch.arange(n_steps)) % dim, dim).double()


def training_gain(model, generator, n_steps, dim, eval_samples=4, prepare=None):
    """``(before, after)``: the IWAE bound (``eval_samples`` samples) of 64 moving-dot sequences
    before and after 100 Adam steps (lr 1e-2) of IWAE with 4 samples on fresh batches of 32.

    ``prepare(test_x)`` runs first, if given (e.g. to initialise the output bias).
    """
    test_x = moving_dot(64, n_steps, dim, generator)
    if prepare is not None:
        prepare(test_x)
    loss = IWAE(model.inf_net, model.gen_model, n_samples=4)
    evaluate = IWAE(model.inf_net, model.gen_model, n_samples=eval_samples)
    with torch.no_grad():
        before = -float(evaluate(test_x))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(100):
        opt.zero_grad(set_to_none=True)
        loss(moving_dot(32, n_steps, dim, generator)).backward()
        opt.step()
    with torch.no_grad():
        after = -float(evaluate(test_x))
    return before, after


@pytest.fixture
def seq():
    return SimpleNamespace(
        make_ghmm=make_ghmm,
        dense_ghmm_log_prob=dense_ghmm_log_prob,
        make_dhmm=make_dhmm,
        enumerate_dhmm_log_prob=enumerate_dhmm_log_prob,
        InputShiftModel=InputShiftModel,
        D=D,
        V=V,
        L=L,
        H=H,
        neural=neural,
        make_x=make_x,
        pad_mask=pad_mask,
        clean_padding=clean_padding,
        with_garbage=with_garbage,
        assert_padding_ignored=assert_padding_ignored,
        assert_finite_iwae_gradients=assert_finite_iwae_gradients,
        moving_dot=moving_dot,
        training_gain=training_gain,
    )
