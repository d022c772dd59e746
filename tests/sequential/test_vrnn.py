"""VRNN: shapes, padding, one recurrence run per step, generation, training, source hygiene."""

import re
from pathlib import Path

import pytest
import torch

from bbvae.losses import ELBO, IWAE, RWS, VIMCO
from bbvae.losses.fivo import FIVO
from bbvae.sequential.base import run_particles
from bbvae.sequential.vrnn import VRNN

DTYPES = [torch.float32, torch.float64]
OBSERVATIONS = ["bernoulli", "normal", "categorical", "gmm"]
CELLS = ["lstm", "gru"]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("observation", OBSERVATIONS)
def test_shapes_ragged_side_inputs_and_gradients(seq, observation, cell, dtype):
    torch.manual_seed(0)
    batch, n_steps, k = 3, 5, 4
    model = seq.neural(VRNN, observation, cell, input_size=2, dtype=dtype)
    x = seq.make_x(observation, batch, n_steps, dtype)
    lengths = torch.tensor([5, 3, 1])
    inputs = torch.randn(batch, n_steps, 2, dtype=dtype)
    run = run_particles(model, x, k, lengths=lengths, inputs=inputs)
    assert run.log_p.shape == (batch, k) and run.log_q.shape == (batch, k)
    assert run.z.shape == (batch, k, n_steps, seq.L)
    assert run.log_p.dtype == dtype and run.z.dtype == dtype
    seq.assert_finite_iwae_gradients(model, x, k, lengths=lengths, inputs=inputs)


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("observation", OBSERVATIONS)
def test_garbage_padding_changes_nothing(seq, observation, cell):
    # Same seed, same shapes: the bound and every gradient are bit-identical whatever lies
    # past the lengths (NaN, out-of-vocabulary symbols).
    torch.manual_seed(1)
    model = seq.neural(VRNN, observation, cell, dtype=torch.float32)
    lengths = torch.tensor([6, 2, 4])
    x = seq.make_x(observation, 3, 6, torch.float32)
    seq.assert_padding_ignored(model, x, lengths)


@pytest.mark.parametrize("observation", OBSERVATIONS)
def test_sequence_alone_equals_sequence_in_padded_batch(seq, observation):
    # Deterministic: score the same latents teacher-forced, each sequence cut to its own length
    # and alone, versus inside the padded batch.
    torch.manual_seed(2)
    model = seq.neural(VRNN, observation, "lstm")
    lengths = torch.tensor([5, 2, 4])
    x = seq.make_x(observation, 3, 5)
    k = 2
    z = torch.randn(3, k, 5, seq.L, dtype=torch.float64)
    batch_run = run_particles(model, x, k, lengths=lengths, z=z)
    for b, n in enumerate(lengths.tolist()):
        alone = run_particles(model, x[b : b + 1, :n], k, z=z[b : b + 1, :, :n])
        torch.testing.assert_close(alone.log_p, batch_run.log_p[b : b + 1])
        torch.testing.assert_close(alone.log_q, batch_run.log_q[b : b + 1])


@pytest.mark.parametrize("cell", CELLS)
def test_recurrence_runs_once_per_step_and_x_features_once(seq, cell):
    torch.manual_seed(3)
    n_steps = 7
    model = seq.neural(VRNN, "bernoulli", cell)
    model.fuse = False  # the general step calls the cell and the MLPs as modules (the fused one inlines them)
    counts = {"cell": 0, "encoder": 0, "z_encoder": 0}

    def counter(name):
        def hook(module, args, output):
            counts[name] += 1

        return hook

    model.cell.register_forward_hook(counter("cell"))
    model.encoder.register_forward_hook(counter("encoder"))
    model.z_encoder.register_forward_hook(counter("z_encoder"))
    x = seq.make_x("bernoulli", 4, n_steps)
    loss = IWAE(model.inf_net, model.gen_model, n_samples=5)
    loss(x, lengths=torch.tensor([7, 3, 5, 1])).backward()
    # q and p share one recurrence run per step; phi_x(x) runs once per sequence batch.
    assert counts == {"cell": n_steps, "encoder": 1, "z_encoder": n_steps}
    counts.update(cell=0, encoder=0, z_encoder=0)
    ELBO(model.inf_net, model.gen_model, n_samples=3)(x)
    assert counts["cell"] == n_steps and counts["encoder"] == 1


@pytest.mark.parametrize("resampling", ["multinomial", "systematic"])
def test_fivo_on_ragged_garbage_padded_batches(seq, resampling):
    # FIVO resamples the recurrent state: still one cell call per step, and padding garbage
    # changes neither the bound nor the gradients (same seed).
    torch.manual_seed(11)
    n_steps = 6
    model = seq.neural(VRNN, "bernoulli", "lstm", dtype=torch.float32)
    model.fuse = False  # counts the cell's calls (test_fused_step_* cover the fused step)
    calls = []
    model.cell.register_forward_hook(lambda module, args, output: calls.append(1))
    lengths = torch.tensor([6, 3, 1, 4])
    x = seq.clean_padding(seq.make_x("bernoulli", 4, n_steps, torch.float32), lengths)
    results = []
    for data in (x, seq.with_garbage(x, lengths)):
        model.zero_grad()
        calls.clear()
        torch.manual_seed(12)
        loss = FIVO(model.inf_net, model.gen_model, n_particles=5, resampling=resampling, ess_threshold=1.0)
        loss(data, lengths=lengths).backward()
        assert len(calls) == n_steps
        results.append((loss.bound_, [p.grad.clone() for p in model.parameters()]))
    assert bool(torch.isfinite(results[0][0]).all())
    assert torch.equal(results[0][0], results[1][0])
    assert all(torch.equal(a, b) for a, b in zip(results[0][1], results[1][1]))


@pytest.mark.parametrize("name", ["dreg", "stl", "score", "vimco", "rws"])
def test_every_estimator_runs_through_the_views(seq, name):
    # Pathwise estimators that re-score with detached parameters (STL, DReG) and score-function
    # ones (which draw with sample() and differentiate log q) all reach every parameter.
    torch.manual_seed(13)
    model = seq.neural(VRNN, "normal", "gru")
    x, lengths = seq.make_x("normal", 3, 4), torch.tensor([4, 2, 3])
    loss = {
        "dreg": lambda: IWAE(model.inf_net, model.gen_model, n_samples=3, estimator="dreg"),
        "stl": lambda: IWAE(model.inf_net, model.gen_model, n_samples=3, estimator="stl"),
        "score": lambda: ELBO(model.inf_net, model.gen_model, n_samples=3, estimator="score"),
        "vimco": lambda: VIMCO(model.inf_net, model.gen_model, n_samples=3),
        "rws": lambda: RWS(model.inf_net, model.gen_model, n_samples=3),
    }[name]()
    loss(x, lengths=lengths).backward()
    assert bool(torch.isfinite(loss.bound_).all())
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and bool(torch.isfinite(g).all()) for g in grads)
    assert any(bool(g.abs().sum() > 0) for g in grads)


def test_step_scores_given_z_and_score_function_draws(seq):
    torch.manual_seed(4)
    model = seq.neural(VRNN, "normal")
    x = seq.make_x("normal", 2, 4)
    torch.manual_seed(5)
    drawn = run_particles(model, x, 3)
    rescored = run_particles(model, x, 3, z=drawn.z.detach())
    torch.testing.assert_close(rescored.log_p, drawn.log_p)
    torch.testing.assert_close(rescored.log_q, drawn.log_q)
    assert drawn.z.requires_grad
    no_path = run_particles(model, x, 3, reparametrize=False)
    assert not no_path.z.requires_grad and no_path.log_q.requires_grad


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("observation", OBSERVATIONS)
def test_ancestral_samples_shape_and_support(seq, observation, dtype):
    torch.manual_seed(6)
    model = seq.neural(VRNN, observation, "gru", input_size=2, dtype=dtype)
    inputs = torch.randn(5, 6, 2, dtype=dtype)
    x, z = model.gen_model.sample(5, inputs=inputs)
    assert z.shape == (5, 6, seq.L) and z.dtype == dtype
    if observation == "categorical":
        assert x.shape == (5, 6) and x.dtype == torch.long and bool(((x >= 0) & (x < seq.V)).all())
    else:
        assert x.shape == (5, 6, seq.D) and x.dtype == dtype
    if observation == "bernoulli":
        assert bool(((x == 0) | (x == 1)).all())
    # the samples can be scored by the model itself
    run = run_particles(model, x, 2, inputs=inputs)
    assert bool(torch.isfinite(run.log_p).all())


def test_x_mean_centres_the_features(seq):
    torch.manual_seed(8)
    mean = torch.full((seq.D,), 0.3, dtype=torch.float64)
    centred = seq.neural(VRNN, "bernoulli", x_mean=mean)
    plain = seq.neural(VRNN, "bernoulli")
    plain.load_state_dict({k: v for k, v in centred.state_dict().items() if k != "x_mean"})
    x = seq.make_x("bernoulli", 2, 3)
    torch.testing.assert_close(centred.x_features(x), plain.x_features(x - 0.3))
    assert "x_mean" in centred.state_dict()


def test_training_improves_the_bound(seq):
    torch.manual_seed(9)
    gen = torch.Generator().manual_seed(10)
    model = VRNN(6, latent_size=4, hidden_size=16, fc_hidden_sizes=(16,)).double()
    before, after = seq.training_gain(
        model,
        gen,
        n_steps=8,
        dim=6,
        eval_samples=8,
        prepare=lambda x: model.init_output_bias(x.mean(dim=(0, 1))),
    )
    # Untrained: about T * log p of a 1-in-6 frame under independent units (~ -20 nats);
    # a model that learned the motion needs ~log 6 = 1.8 nats for the start.
    assert after > before + 8.0, (before, after)


def test_no_time_slicing_in_source():
    # Per-step tensors are taken with unbind(1); x[:, t] inside a loop makes backward O(T^2).
    root = Path(__file__).resolve().parents[2] / "bbvae" / "sequential"
    pattern = re.compile(r"\[\s*:\s*,\s*[a-z_]\w*\s*\]")
    modules = ("vrnn.py", "srnn.py", "rnn.py", "independent.py", "nets.py", "sampling.py", "recurrences.py")
    for name in (*modules, "observations.py", "gaussian.py", "views.py"):
        source = (root / name).read_text()
        assert not pattern.search(source), f"{name}: {pattern.search(source).group(0)}"
        assert ".item()" not in source, name
