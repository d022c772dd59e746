"""SRNN: shapes, padding, x-only recurrences once per sequence, smoothing proposal, training."""

import pytest
import torch

from bbvae.losses import IWAE
from bbvae.sequential.base import run_particles
from bbvae.sequential.srnn import SRNN

DTYPES = [torch.float32, torch.float64]
OBSERVATIONS = ["bernoulli", "normal", "categorical"]
CELLS = ["lstm", "gru"]
D, V, L, H = 4, 5, 3, 8


def make_model(observation="bernoulli", cell="lstm", input_size=0, dtype=torch.float64, **kw):
    obs_dim = V if observation == "categorical" else D
    model = SRNN(
        obs_dim,
        latent_size=L,
        hidden_size=H,
        fc_hidden_sizes=(H,),
        encoded_size=6,
        cell=cell,
        observation=observation,
        input_size=input_size,
        embedding_size=3,
        backward_size=7,
        **kw,
    )
    return model.to(dtype)


def make_x(observation, batch, n_steps, dtype=torch.float64):
    if observation == "categorical":
        return torch.randint(0, V, (batch, n_steps))
    if observation == "bernoulli":
        return torch.bernoulli(torch.full((batch, n_steps, D), 0.3, dtype=dtype))
    return torch.randn(batch, n_steps, D, dtype=dtype)


def pad_mask(x, lengths):
    mask = torch.arange(x.shape[1]).unsqueeze(0) < lengths.unsqueeze(1)  # [batch, T]
    return mask.unsqueeze(-1) if x.dim() == 3 else mask


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("observation", OBSERVATIONS)
def test_shapes_ragged_side_inputs_and_gradients(observation, cell, dtype):
    torch.manual_seed(0)
    batch, n_steps, k = 3, 5, 4
    model = make_model(observation, cell, input_size=2, dtype=dtype)
    x = make_x(observation, batch, n_steps, dtype)
    lengths = torch.tensor([2, 5, 4])
    inputs = torch.randn(batch, n_steps, 2, dtype=dtype)
    run = run_particles(model, x, k, lengths=lengths, inputs=inputs)
    assert run.log_p.shape == (batch, k) and run.z.shape == (batch, k, n_steps, L)
    assert run.log_q.dtype == dtype
    loss = IWAE(model.inf_net, model.gen_model, n_samples=k)
    loss(x, lengths=lengths, inputs=inputs).backward()
    assert bool(torch.isfinite(loss.bound_).all())
    assert all(p.grad is not None and bool(torch.isfinite(p.grad).all()) for p in model.parameters())


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("observation", OBSERVATIONS)
def test_garbage_padding_changes_nothing(observation, cell):
    # The backward recurrence starts at each sequence's own end: garbage past it (NaN,
    # out-of-vocabulary symbols) leaves the bound and the gradients bit-identical.
    torch.manual_seed(1)
    model = make_model(observation, cell, dtype=torch.float32)
    lengths = torch.tensor([3, 6, 1])
    x = make_x(observation, 3, 6, torch.float32)
    x = torch.where(pad_mask(x, lengths), x, torch.zeros_like(x))
    garbage = torch.full_like(x, float("nan")) if x.is_floating_point() else torch.full_like(x, -(10**5))
    results = []
    for data in (x, torch.where(pad_mask(x, lengths), x, garbage)):
        model.zero_grad()
        torch.manual_seed(7)
        loss = IWAE(model.inf_net, model.gen_model, n_samples=3)
        loss(data, lengths=lengths).backward()
        results.append((loss.bound_, [p.grad.clone() for p in model.parameters()]))
    assert torch.equal(results[0][0], results[1][0])
    assert all(torch.equal(a, b) for a, b in zip(results[0][1], results[1][1]))


@pytest.mark.parametrize("cell", CELLS)
def test_sequence_alone_equals_sequence_in_padded_batch(cell):
    torch.manual_seed(2)
    model = make_model("normal", cell)
    lengths = torch.tensor([5, 2, 4])
    x = make_x("normal", 3, 5)
    z = torch.randn(3, 2, 5, L, dtype=torch.float64)
    batch_run = run_particles(model, x, 2, lengths=lengths, z=z)
    for b, n in enumerate(lengths.tolist()):
        alone = run_particles(model, x[b : b + 1, :n], 2, z=z[b : b + 1, :, :n])
        torch.testing.assert_close(alone.log_p, batch_run.log_p[b : b + 1])
        torch.testing.assert_close(alone.log_q, batch_run.log_q[b : b + 1])


def test_x_only_recurrences_run_once_per_loss_call():
    torch.manual_seed(3)
    model = make_model("bernoulli", "lstm")
    counts = {"encoder": 0, "forward_rnn": 0, "backward_rnn": 0}
    for name in counts:

        def hook(module, args, output, name=name):
            counts[name] += 1

        getattr(model, name).register_forward_hook(hook)
    x = make_x("bernoulli", 4, 9)
    IWAE(model.inf_net, model.gen_model, n_samples=6)(x, lengths=torch.tensor([9, 4, 6, 2])).backward()
    assert counts == {"encoder": 1, "forward_rnn": 1, "backward_rnn": 1}


def test_proposal_smooths_and_prior_filters():
    # a_t sees the future: changing x at a sequence's last valid step changes the proposal's
    # input at t = 0 but not the prior's (which only sees the past).
    torch.manual_seed(4)
    model = make_model("normal", "gru")
    lengths = torch.tensor([4, 3])
    x = make_x("normal", 2, 4)
    changed = x.clone()
    changed[1, 2] += 1.0  # the last valid step of sequence 1
    with torch.no_grad():
        before, after = model.encode(x, lengths), model.encode(changed, lengths)
    assert not torch.allclose(before[0]["qa"][1], after[0]["qa"][1])
    torch.testing.assert_close(before[0]["pc"], after[0]["pc"])
    torch.testing.assert_close(before[2]["pc"], after[2]["pc"])
    torch.testing.assert_close(before[0]["qa"][0], after[0]["qa"][0])  # other sequences untouched
    assert not torch.allclose(before[3]["pc"][1], after[3]["pc"][1])  # past the end it may change


def test_resq_predicts_a_residual_on_the_prior_mean():
    torch.manual_seed(5)
    model = make_model("bernoulli", resq=True)
    last = model.proposal.tail[-1][-1]  # the proposal's output layer
    with torch.no_grad():
        last.weight.zero_()
        last.bias.zero_()
    # The residual is 0, so q's mean is the prior mean: scoring z = that mean under q gives
    # log q = sum(-log sigma_q) - L/2 log(2 pi); check through a direct step.
    x = make_x("bernoulli", 2, 3)
    encoded = model.encode(x)
    state = model.init_state(encoded, 1)
    p_loc, _ = model.prior.gaussian(state["z"], encoded[0]["ctx"].unsqueeze(1))
    out = model.step(state, encoded[0], z=p_loc)
    sigma = torch.nn.functional.softplus(torch.tensor(0.25, dtype=torch.float64)) + 1e-4
    expected = -L * torch.log(sigma) - 0.5 * L * torch.log(torch.tensor(2 * torch.pi, dtype=torch.float64))
    torch.testing.assert_close(out.log_q, expected.expand(2, 1))


@pytest.mark.parametrize("observation", OBSERVATIONS)
def test_ancestral_samples_shape_and_support(observation):
    torch.manual_seed(6)
    model = make_model(observation, "lstm")
    x, z = model.gen_model.sample(4, 7)
    assert z.shape == (4, 7, L)
    if observation == "categorical":
        assert x.shape == (4, 7) and bool(((x >= 0) & (x < V)).all())
    else:
        assert x.shape == (4, 7, D)
    if observation == "bernoulli":
        assert bool(((x == 0) | (x == 1)).all())


def test_training_improves_the_bound():
    torch.manual_seed(9)
    gen = torch.Generator().manual_seed(10)
    dim, n_steps = 6, 8

    def moving_dot(batch):
        start = torch.randint(0, dim, (batch, 1), generator=gen)
        return torch.nn.functional.one_hot((start + torch.arange(n_steps)) % dim, dim).double()

    test_x = moving_dot(64)
    model = SRNN(dim, latent_size=4, hidden_size=16, fc_hidden_sizes=(16,)).double()
    loss = IWAE(model.inf_net, model.gen_model, n_samples=4)
    with torch.no_grad():
        before = -float(loss(test_x))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(100):
        opt.zero_grad(set_to_none=True)
        loss(moving_dot(32)).backward()
        opt.step()
    with torch.no_grad():
        after = -float(loss(test_x))
    assert after > before + 8.0, (before, after)
