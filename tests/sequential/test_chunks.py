"""Long sequences in chunks of time steps: activation checkpointing and truncated backpropagation.

``remat_chunk`` (checkpointing) must give the bound and every gradient of the plain loop, for a
fixed seed, to float64 rounding: VRNN (fused step and, with dropout, the general step), SRNN, the
GaussianHMM and the DiscreteHMM (score-function gradients), ragged lengths, ELBO / IWAE (reparam,
STL, DReG) / FIVO with every gradient mode (and both proposal gradients of latents without
rsample). It must really recompute (the model's step runs again in the backward) and really keep
less (the bytes autograd saves drop), and an explicit resampling generator must be replayed.

``tbptt_chunk`` (truncated BPTT) keeps every value and changes the gradient only through the cut
paths: with a chunk >= T it is the full gradient; with a shorter chunk it equals a hand-written
loop that detaches the state at the boundaries (plain particles and a filter that resamples at
every step), and it differs from the full gradient only for a model whose state carries gradient.
"""

from __future__ import annotations

import math
import weakref

import pytest
import torch

from bbvae.losses import ELBO, FIVO, IWAE, VIMCO, PerStep
from bbvae.sequential import SRNN, VRNN, StepOutput, multinomial_resampling, run_particles, smc
from bbvae.sequential.pytree import tree_map

T, K, CHUNK = 10, 4, 3  # 3 does not divide 10: the last chunk is shorter
LENGTHS = torch.tensor([10, 7, 3])


class StepCounter:
    """Counts the calls of ``model.step`` (a recomputed chunk calls it again)."""

    def __init__(self, model) -> None:
        self.calls = 0
        inner = model.step

        def step(*args, **kwargs):
            self.calls += 1
            return inner(*args, **kwargs)

        model.step = step


def _model(seq, name):
    torch.manual_seed(0)
    if name == "vrnn":
        return seq.neural(VRNN), seq.make_x("bernoulli", 3, T)
    if name == "vrnn-dropout":  # dropout active: the fused step, drawing its masks
        return seq.neural(VRNN, dropout=0.3).train(), seq.make_x("bernoulli", 3, T)
    if name == "vrnn-dropout-general":  # dropout active in the general step (nn.Dropout modules)
        model = seq.neural(VRNN, dropout=0.3).train()
        model.fuse = False
        return model, seq.make_x("bernoulli", 3, T)
    if name == "srnn":
        return seq.neural(SRNN, observation="normal"), seq.make_x("normal", 3, T)
    if name == "ghmm":
        return seq.make_ghmm(proposal="network"), torch.randn(3, T, 3, dtype=torch.float64)
    if name == "dhmm":
        model = seq.make_dhmm(n_states=3, n_obs=4, proposal="network", seed=1)
        return model, torch.randint(0, 4, (3, T))
    raise AssertionError(name)


def _loss(name, model, **options):
    q, p = model.inf_net, model.gen_model
    kind, _, mode = name.partition("-")
    if kind == "elbo":
        return ELBO(q, p, K, estimator="auto" if model.has_rsample else "score", **options)
    if kind == "iwae":
        return IWAE(q, p, K, estimator=mode or "reparam", **options)
    if kind == "perstep":
        return PerStep(IWAE(q, p, K, **options))
    if kind == "fivo":
        gradient, _, proposal = mode.partition("+")
        return FIVO(
            q, p, K, ess_threshold=0.9, gradient=gradient, proposal_gradient=proposal or "unbiased", **options
        )
    raise AssertionError(name)


def _value_and_grads(model, loss, x, seed=7):
    torch.manual_seed(seed)
    value = loss(x, lengths=LENGTHS)
    params = list(model.parameters())
    grads = torch.autograd.grad(value, params, allow_unused=True)
    return value.detach(), [g if g is not None else torch.zeros_like(p) for g, p in zip(grads, params)]


def _assert_same(a, b, rtol=1e-12, atol=1e-12):
    torch.testing.assert_close(a[0], b[0], rtol=rtol, atol=atol)
    for ga, gb in zip(a[1], b[1]):
        torch.testing.assert_close(ga, gb, rtol=rtol, atol=atol)


CASES = [
    ("vrnn", "elbo"),
    ("vrnn", "iwae"),
    ("vrnn", "iwae-stl"),
    ("vrnn", "iwae-dreg"),
    ("vrnn", "perstep"),
    ("vrnn", "fivo-none"),
    ("vrnn", "fivo-score"),
    ("vrnn", "fivo-stop_gradient"),
    ("vrnn-dropout", "fivo-none"),
    ("vrnn-dropout-general", "fivo-none"),
    ("srnn", "iwae"),
    ("srnn", "fivo-score"),
    ("srnn", "fivo-stop_gradient"),
    ("ghmm", "iwae"),
    ("ghmm", "fivo-none"),
    ("ghmm", "fivo-stop_gradient"),
    ("dhmm", "elbo"),
    ("dhmm", "fivo-none"),
    ("dhmm", "fivo-score"),
    ("dhmm", "fivo-none+segment"),
]


@pytest.mark.filterwarnings("ignore:IWAE. the effective sample size collapsed")
@pytest.mark.parametrize("model_name,loss_name", CASES)
def test_checkpointed_chunks_give_the_same_bound_and_gradients(seq, model_name, loss_name):
    model, x = _model(seq, model_name)
    plain = _value_and_grads(model, _loss(loss_name, model), x)
    counter = StepCounter(model)
    loss = _loss(loss_name, model, remat_chunk=CHUNK)
    chunked = _value_and_grads(model, loss, x)
    _assert_same(chunked, plain)
    assert any(bool(g.abs().sum() > 0) for g in plain[1])
    # Every pass (two for STL and DReG, which re-score) ran its steps again in the backward.
    passes = counter.calls // (2 * T)
    assert passes >= 1 and counter.calls == 2 * T * passes
    if loss_name.startswith("fivo"):
        assert float(loss.resampling_rate_) > 0  # resampling was exercised
    assert "remat_chunk" not in vars(model)  # the loss's option lasted for its call only


def test_float32_checkpointed_chunks(seq):
    model, x = _model(seq, "vrnn")
    model, x = model.float(), x.float()
    plain = _value_and_grads(model, _loss("fivo-none", model), x)
    chunked = _value_and_grads(model, _loss("fivo-none", model, remat_chunk=CHUNK), x)
    assert chunked[0].dtype == torch.float32
    _assert_same(chunked, plain, rtol=1e-5, atol=1e-6)


def _saved_bytes(fn) -> int:
    """Bytes of the distinct storages of the tensors autograd saved while ``fn()`` ran and still
    holds for the backward once it returned (a chunk's own graph, dropped within, does not count)."""
    saved = []

    def pack(t):
        packed = t.detach()  # (packing t itself would tie it to its graph in a reference cycle)
        saved.append(weakref.ref(packed))
        return packed

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        result = fn()
    alive = {}
    for ref in saved:
        t = ref()
        if t is not None:
            alive[(t.untyped_storage().data_ptr(), t.device)] = t.untyped_storage().nbytes()
    del result
    return sum(alive.values())


@pytest.mark.parametrize("driver", ["run_particles", "smc"])
def test_checkpointing_keeps_a_fraction_of_the_activations(driver):
    torch.manual_seed(0)
    model = VRNN(8, latent_size=8, hidden_size=32)
    x = torch.bernoulli(torch.full((2, 96, 8), 0.3))

    def run(remat_chunk):
        if driver == "smc":
            return lambda: smc(model, x, 4, remat_chunk=remat_chunk).log_z.sum()
        return lambda: run_particles(model, x, 4, remat_chunk=remat_chunk).log_p.sum()

    plain, chunked = _saved_bytes(run(None)), _saved_bytes(run(8))
    # Per step the plain loop keeps the LSTM's and MLPs' activations (tens of floats per particle
    # per unit); chunks keep the chunk-boundary state and the per-step outputs.
    assert chunked < 0.25 * plain, (chunked, plain)
    # A chunk as long as the sequence is one chunk: nothing to gain, so the plain loop runs.
    assert _saved_bytes(run(96)) == plain


def test_no_recomputation_without_gradients(seq):
    model, x = _model(seq, "vrnn")
    counter = StepCounter(model)
    with torch.no_grad():
        smc(model, x, K, lengths=LENGTHS, remat_chunk=CHUNK)
    assert counter.calls == T


def test_an_explicit_resampling_generator_is_replayed_and_restored(seq):
    model, x = _model(seq, "vrnn")

    def run(remat_chunk):
        generator = torch.Generator().manual_seed(11)
        torch.manual_seed(5)
        result = smc(
            model,
            x,
            K,
            ess_threshold=1.0,
            lengths=LENGTHS,
            generator=generator,
            remat_chunk=remat_chunk,
            return_latents=True,
            return_state=True,
        )
        after_forward = generator.get_state()
        grads = torch.autograd.grad(result.log_z.sum(), list(model.parameters()))
        return result, grads, after_forward, generator.get_state(), torch.get_rng_state()

    plain, chunked = run(None), run(CHUNK)
    assert torch.equal(chunked[0].ancestors, plain[0].ancestors)
    assert torch.equal(chunked[0].z, plain[0].z) and torch.equal(chunked[0].state["h"], plain[0].state["h"])
    assert bool(plain[0].resampled.any())
    for a, b in zip(chunked[1], plain[1]):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    # The recomputation in the backward left the generator and the global RNG where they were.
    assert torch.equal(chunked[3], chunked[2]) and torch.equal(chunked[3], plain[3])
    assert torch.equal(chunked[4], plain[4])


def test_recomputing_with_another_generator_state_would_change_the_gradients(seq):
    # What the replay guards against: the ancestors of the backward's recomputation must be the
    # forward's. Uniforms drawn afresh give other ancestors, hence other gradients.
    model, x = _model(seq, "vrnn")

    def grads(seed):
        torch.manual_seed(5)
        result = smc(model, x, K, ess_threshold=1.0, generator=torch.Generator().manual_seed(seed))
        return torch.autograd.grad(result.log_z.sum(), list(model.parameters()))

    assert any(not torch.allclose(a, b) for a, b in zip(grads(11), grads(12)))


def test_model_attributes_reach_every_loss_and_driver_arguments_override_them(seq):
    model, x = _model(seq, "vrnn")
    plain = _value_and_grads(model, VIMCO(model.inf_net, model.gen_model, K), x)
    model.remat_chunk = CHUNK
    counter = StepCounter(model)
    chunked = _value_and_grads(model, VIMCO(model.inf_net, model.gen_model, K), x)
    _assert_same(chunked, plain)
    assert counter.calls == 2 * T
    counter.calls = 0
    run_particles(model, x, K, remat_chunk=T).log_p.sum().backward()  # one chunk: plain
    assert counter.calls == T


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        (
            {"remat_chunk": 0},
            ValueError,
            r"smc: expected remat_chunk >= 1 \(time steps per chunk\) or None, got 0",
        ),
        ({"tbptt_chunk": 2.5}, TypeError, r"smc: expected tbptt_chunk to be a positive int .* got float 2.5"),
        ({"remat_chunk": True}, TypeError, r"expected remat_chunk to be a positive int"),
    ],
)
def test_bad_chunk_sizes_are_named(seq, kwargs, error, match):
    model, x = _model(seq, "ghmm")
    with pytest.raises(error, match=match):
        smc(model, x, K, **kwargs)


def test_bad_chunk_options_of_models_and_losses_are_named(seq):
    from bbvae.models import GaussianInfNet, LinearGaussianGenModel

    model, x = _model(seq, "ghmm")
    model.tbptt_chunk = -1
    with pytest.raises(ValueError, match=r"run_particles: expected GaussianHMM.tbptt_chunk >= 1 .* got -1"):
        run_particles(model, x, K)
    with pytest.raises(ValueError, match=r"IWAE: expected remat_chunk >= 1 .* got 0"):
        IWAE(model.inf_net, model.gen_model, K, remat_chunk=0)
    with pytest.raises(TypeError, match=r"FIVO: expected compile to be a bool or a dict .* got str 'yes'"):
        FIVO(model.inf_net, model.gen_model, K, compile="yes")
    q, p = GaussianInfNet(6, 2), LinearGaussianGenModel(2, 6)
    with pytest.raises(
        ValueError, match=r"IWAE: remat_chunk=8 applies to sequence models; .* GaussianInfNet"
    ):
        IWAE(q, p, K, remat_chunk=8)
    with pytest.raises(ValueError, match=r"ELBO: compile=True applies to sequence models"):
        ELBO(q, p, K, compile=True)


# ------------------------------------------------------------------------------ truncated BPTT
@pytest.mark.parametrize(
    "model_name,loss_name", [("vrnn", "iwae"), ("srnn", "fivo-none"), ("ghmm", "fivo-score")]
)
def test_truncation_keeps_the_values_and_is_full_bptt_for_a_chunk_as_long_as_the_sequence(
    seq, model_name, loss_name
):
    model, x = _model(seq, model_name)
    full = _value_and_grads(model, _loss(loss_name, model), x)
    _assert_same(_value_and_grads(model, _loss(loss_name, model, tbptt_chunk=T), x), full)
    truncated = _value_and_grads(model, _loss(loss_name, model, tbptt_chunk=CHUNK), x)
    assert torch.equal(truncated[0], full[0])  # the same draws, the same bound
    assert any(not torch.allclose(a, b) for a, b in zip(truncated[1], full[1]))  # cut paths
    # With checkpointing too: the same truncated gradient.
    _assert_same(
        _value_and_grads(model, _loss(loss_name, model, remat_chunk=4, tbptt_chunk=CHUNK), x), truncated
    )


def _detach(state):
    return tree_map(torch.Tensor.detach, state)


def hand_truncated_iwae(model, x, k, chunk):
    """IWAE ``[batch]`` with the state detached before steps ``chunk, 2 chunk, ...`` (no lengths)."""
    encoded = model.encode(x)
    state = model.init_state(encoded, k)
    log_w = 0.0
    for t, item in enumerate(encoded):
        if t > 0 and t % chunk == 0:
            state = _detach(state)
        out = model.step(state, item)
        state, log_w = out.state, log_w + out.log_p - out.log_q
    return torch.logsumexp(log_w, dim=1) - math.log(k)


def hand_truncated_filter(model, x, k, chunk, generator):
    """log Z-hat ``[batch]`` of a filter resampling (multinomially) after every step but the last, the
    state detached before steps ``chunk, 2 chunk, ...`` (no lengths)."""
    encoded = model.encode(x)
    state = model.init_state(encoded, k)
    log_z = 0.0
    for t, item in enumerate(encoded):
        if t > 0 and t % chunk == 0:
            state = _detach(state)
        out = model.step(state, item)
        log_w = out.log_p - out.log_q
        log_z = log_z + torch.logsumexp(log_w, dim=1) - math.log(k)
        state = out.state
        if t < len(encoded) - 1:
            state = model.reorder(state, multinomial_resampling(log_w.detach(), generator=generator))
    return log_z


@pytest.mark.parametrize("name", ["vrnn", "srnn", "ghmm"])
def test_truncated_gradients_equal_a_hand_written_truncated_loop(seq, name):
    model, x = _model(seq, name)
    params = list(model.parameters())

    def grads(value):
        return torch.autograd.grad(value.sum(), params, allow_unused=True)

    torch.manual_seed(3)
    run = run_particles(model, x, K, tbptt_chunk=CHUNK)
    ours = torch.logsumexp(run.log_p - run.log_q, dim=1) - math.log(K)
    torch.manual_seed(3)
    ref = hand_truncated_iwae(model, x, K, CHUNK)
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)
    for a, b in zip(grads(ours), grads(ref)):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)

    torch.manual_seed(3)
    result = smc(
        model, x, K, ess_threshold=1.0, generator=torch.Generator().manual_seed(4), tbptt_chunk=CHUNK
    )
    torch.manual_seed(3)
    ref = hand_truncated_filter(model, x, K, CHUNK, torch.Generator().manual_seed(4))
    torch.testing.assert_close(result.log_z, ref, rtol=1e-12, atol=1e-12)
    for a, b in zip(grads(result.log_z), grads(ref)):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("ess_threshold", [1.0, 0.5, 0.0])
def test_truncation_changes_nothing_where_no_gradient_crosses_the_boundaries(seq, ess_threshold):
    # The toy model's state never feeds the next step, and truncation cuts the state only: the
    # log-weights accumulated since the last resampling (all of them when the filter never
    # resamples) keep their gradient across the boundaries. Nothing crosses a boundary through the
    # state, so nothing is cut. (A version that also detached the accumulated log-weights loses
    # every step's own gradient before the last boundary at thresholds 0.5 and 0.)
    model = seq.InputShiftModel().double()
    x, u = torch.randn(3, T, 1, dtype=torch.float64), torch.randn(3, T, 1, dtype=torch.float64)

    def grad(tbptt_chunk):
        torch.manual_seed(3)
        result = smc(
            model, x, K, ess_threshold=ess_threshold, inputs=u, lengths=LENGTHS, tbptt_chunk=tbptt_chunk
        )
        return torch.autograd.grad(result.log_z.sum(), [model.bias])[0]

    torch.testing.assert_close(grad(1), grad(None), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", ["vrnn", "ghmm"])
def test_truncated_filter_that_never_resamples_is_truncated_iwae(seq, name):
    # Without resampling the filter's log Z-hat is the IWAE bound, and truncation of either cuts
    # the same paths (those through the state): the same values and the same gradients.
    model, x = _model(seq, name)
    params = list(model.parameters())

    def grads(value):
        return torch.autograd.grad(value.sum(), params, allow_unused=True)

    torch.manual_seed(3)
    run = run_particles(model, x, K, tbptt_chunk=CHUNK)
    iwae = torch.logsumexp(run.log_p - run.log_q, dim=1) - math.log(K)
    torch.manual_seed(3)
    log_z = smc(model, x, K, ess_threshold=0.0, tbptt_chunk=CHUNK).log_z
    torch.testing.assert_close(log_z, iwae, rtol=1e-12, atol=1e-12)
    for a, b in zip(grads(log_z), grads(iwae)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_a_retained_graph_recomputes_again_with_the_same_draws(seq):
    model, x = _model(seq, "vrnn")
    params = list(model.parameters())

    def grads(remat_chunk, twice):
        torch.manual_seed(5)
        generator = torch.Generator().manual_seed(11)
        value = smc(model, x, K, ess_threshold=1.0, generator=generator, remat_chunk=remat_chunk).log_z.sum()
        first = torch.autograd.grad(value, params, retain_graph=twice)
        return [a + b for a, b in zip(first, torch.autograd.grad(value, params))] if twice else first

    for a, b in zip(grads(CHUNK, True), grads(None, False)):
        torch.testing.assert_close(a, 2 * b, rtol=1e-12, atol=1e-12)


def test_double_backward_through_checkpointed_steps_is_refused(seq):
    # The recomputation differentiates detached copies of a chunk's inputs: second-order gradients
    # through it would silently lose their dependence on earlier chunks, so they are refused.
    model, x = _model(seq, "vrnn")
    params = list(model.parameters())
    torch.manual_seed(0)
    value = run_particles(model, x, K, remat_chunk=CHUNK).log_p.sum()
    with pytest.raises(RuntimeError, match="remat_chunk: double backward"):
        torch.autograd.grad(value, params, create_graph=True)
    torch.manual_seed(0)
    first = torch.autograd.grad(run_particles(model, x, K, remat_chunk=CHUNK).log_p.sum(), params)
    assert all(torch.isfinite(g).all() for g in first)  # first order still works


def test_a_step_reading_a_hidden_differentiable_tensor_is_refused(seq):
    # A model that keeps a summary of x on itself in encode() and reads it in step(): the chunk's
    # recomputation cannot pass that tensor's gradient on (it is no input of the chunk), so the
    # checkpointed run refuses instead of returning a gradient without that path.
    class HiddenContext(seq.InputShiftModel):
        def encode(self, x, lengths=None, inputs=None):
            self.context = x.mean(1)  # [batch, 1], differentiable in x
            return super().encode(x, lengths, inputs)

        def step(self, state, encoded_t, z=None, reparametrize=True):
            out = super().step(state, encoded_t, z, reparametrize)
            return StepOutput(out.state, out.z, out.log_p - self.context**2, out.log_q)

    model = HiddenContext().double()
    w = torch.tensor(2.0, dtype=torch.float64, requires_grad=True)
    x = w * torch.randn(3, T, 1, dtype=torch.float64)
    run_particles(model, x, K)  # (fine without checkpointing)
    with pytest.raises(RuntimeError, match="remat_chunk: the step at time 0 reads a tensor"):
        run_particles(model, x, K, remat_chunk=CHUNK)
