"""The streamlined particle filter and the opt-in compiled step give the numbers of the plain ones.

``smc`` computes its reported quantities (log-Z increments, ancestors' log-probabilities, dead
sequences) after the loop from stacked per-step values. ``reference_smc`` below is the filter
written step by step, every quantity at the step it belongs to (as ``smc`` was before). From the
same seed both draw the same particles and ancestors, so every field and every gradient must agree
to float64 rounding: for VRNN, SRNN, a GaussianHMM and a user-written model with side inputs,
ragged lengths, every resampling scheme and every gradient mode.

``compile_step``: the teacher-forced log-densities and their gradients equal the eager ones, IWAE
and FIVO give the eager values and gradients (the aot_eager backend draws as eager does), lengths
do not recompile, the step has no graph break, and a failing compiler falls back to eager.
"""

from __future__ import annotations

import math
import shutil
import warnings

import pytest
import torch

from bbvae._math import effective_sample_size, log_mean_exp
from bbvae.losses import FIVO, IWAE
from bbvae.sequential import SRNN, VRNN, run_particles, smc
from bbvae.sequential.compiled import model_step
from bbvae.sequential.smc import get_resampling


def reference_smc(model, x, k, resampling, threshold, lengths, inputs, gradient):
    """The particle filter one step at a time: ``(log_z, ess, resampled, ancestors, increments,
    ancestor_lp, log_p, log_q, log_w)``."""
    fn = get_resampling(resampling, "reference")
    batch, n_steps = x.shape[:2]
    valid_all = torch.arange(n_steps) < lengths.unsqueeze(1) if lengths is not None else None
    encoded = model.encode(x, lengths=lengths, inputs=inputs)
    state = model.init_state(encoded, k)
    identity = torch.arange(k).expand(batch, k)
    log_w = log_p = log_q = 0.0
    rows = {name: [] for name in ("ess", "resampled", "ancestors", "increments", "ancestor_lp")}
    for t, encoded_t in enumerate(encoded):
        out = model.step(state, encoded_t)
        state = out.state
        lp, lq = out.log_p, out.log_q
        if valid_all is not None:
            lp = torch.where(valid_all[:, t : t + 1], lp, 0.0)
            lq = torch.where(valid_all[:, t : t + 1], lq, 0.0)
        log_w, log_p, log_q = log_w + lp - lq, log_p + lp, log_q + lq
        ess = effective_sample_size(log_w.detach())
        rows["ess"].append(ess)
        if threshold == 0 or k == 1 or t == n_steps - 1:  # (no uniforms are drawn)
            do, anc = torch.zeros(batch, dtype=torch.bool), identity
        else:
            do = (ess < threshold * k) if threshold < 1 else torch.ones(batch, dtype=torch.bool)
            if valid_all is not None:
                do = do & valid_all[:, t + 1]
            do = do & (ess > 0)
            anc = torch.where(do.unsqueeze(1), fn(log_w.detach()), identity)
        increment = log_mean_exp(log_w)
        source = log_w if gradient == "score" else log_w.detach()
        lp_anc = torch.gather(torch.log_softmax(source, dim=1), 1, anc).sum(dim=1)
        rows["resampled"].append(do)
        rows["ancestors"].append(anc)
        if gradient == "stop_gradient":
            increment = increment.detach()
        rows["increments"].append(torch.where(do, increment, 0.0))
        rows["ancestor_lp"].append(torch.where(do, lp_anc, 0.0))
        if gradient == "stop_gradient":
            gathered = torch.gather(log_w, 1, anc)
            log_w = torch.where(do.unsqueeze(1), gathered - gathered.detach(), log_w)
        else:
            log_w = torch.where(do.unsqueeze(1), 0.0, log_w)
        log_p = torch.where(do.unsqueeze(1), torch.gather(log_p, 1, anc), log_p)
        log_q = torch.where(do.unsqueeze(1), torch.gather(log_q, 1, anc), log_q)
        state = model.reorder(state, anc)
    out = {name: torch.stack(values, dim=1) for name, values in rows.items()}
    out["log_z"] = out["increments"].sum(dim=1) + log_mean_exp(log_w)
    out.update(log_p=log_p, log_q=log_q, log_weights=log_w)
    return out


def _models(seq):
    torch.manual_seed(0)
    return {
        "vrnn": (seq.neural(VRNN), seq.make_x("bernoulli", 3, 7), None),
        "srnn": (
            seq.neural(SRNN, observation="normal", input_size=2),
            seq.make_x("normal", 3, 7),
            torch.randn(3, 7, 2, dtype=torch.float64),
        ),
        "ghmm": (seq.make_ghmm(proposal="network"), torch.randn(3, 7, 3, dtype=torch.float64), None),
        "user": (
            seq.InputShiftModel().double(),
            torch.randn(3, 7, 1, dtype=torch.float64),
            torch.randn(3, 7, 1, dtype=torch.float64),
        ),
    }


@pytest.mark.parametrize("name", ["vrnn", "srnn", "ghmm", "user"])
@pytest.mark.parametrize(
    "resampling,threshold,gradient",
    [
        ("multinomial", 0.97, "none"),
        ("multinomial", 0.99, "score"),
        ("systematic", 1.0, "stop_gradient"),
        ("stratified", 0.98, "none"),
        ("multinomial", 0.0, "none"),
    ],
)
def test_smc_equals_the_step_by_step_filter(seq, name, resampling, threshold, gradient):
    model, x, inputs = _models(seq)[name]
    lengths = torch.tensor([7, 4, 2])
    k = 5
    kwargs = {"lengths": lengths, "inputs": inputs}
    torch.manual_seed(3)
    fast = smc(model, x, k, resampling=resampling, ess_threshold=threshold, gradient=gradient, **kwargs)
    torch.manual_seed(3)
    ref = reference_smc(model, x, k, resampling, threshold, lengths, inputs, gradient)
    assert (fast.ancestors == ref["ancestors"]).all() and (fast.resampled == ref["resampled"]).all()
    if threshold > 0:
        assert fast.resampled.any()  # the comparison exercises resampling
    tol = {"rtol": 1e-12, "atol": 1e-12}
    for field in ("log_z", "ess", "log_z_increments", "ancestor_log_prob", "log_p", "log_q", "log_weights"):
        key = {"log_z_increments": "increments", "ancestor_log_prob": "ancestor_lp"}.get(field, field)
        torch.testing.assert_close(getattr(fast, field), ref[key], **tol, msg=field)
    objective = fast.log_z.sum() + (fast.ancestor_log_prob.sum() if gradient == "score" else 0)
    grads_fast = torch.autograd.grad(objective, list(model.parameters()), allow_unused=True)
    objective = ref["log_z"].sum() + (ref["ancestor_lp"].sum() if gradient == "score" else 0)
    grads_ref = torch.autograd.grad(objective, list(model.parameters()), allow_unused=True)
    for a, b in zip(grads_fast, grads_ref):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, **tol)


def test_dead_sequences_are_still_named_with_their_first_dead_step(seq):
    model, x, _ = _models(seq)["user"]
    x = x.clone()
    with torch.no_grad():
        model.bias.fill_(0.0)
    x[1, 3] = math.inf  # log p(x_3) = -inf for every particle of sequence 1
    with pytest.warns(RuntimeWarning, match="sequence 1 at step 3"):
        result = smc(model, x, 4)
    assert torch.isneginf(result.log_z[1]) and torch.isfinite(result.log_z[[0, 2]]).all()


# ----------------------------------------------------------------------------- compiled step
# Dynamo tracing and AOT autograd are checked with backend="aot_eager" (seconds); inductor, which
# compiles C++ kernels (minutes on a busy CPU), only in the test marked slow.
def _compiler_missing() -> str | None:
    if not any(shutil.which(cc) for cc in ("gcc", "cc", "clang")):
        return "torch.compile's inductor backend needs a C compiler on the CPU, and none is installed"
    return None


@pytest.fixture
def fresh_dynamo():
    import torch._dynamo

    torch._dynamo.reset()
    yield torch._dynamo
    torch._dynamo.reset()


@pytest.fixture
def no_fallback():
    """Fail on the RuntimeWarning of a compiled step that fell back to eager."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        yield


def _vrnn():
    torch.manual_seed(0)
    return VRNN(6, latent_size=3, hidden_size=5, fc_hidden_sizes=(5,), encoded_size=4)


def _scores_and_grads(model, x, lengths, z):
    run = run_particles(model, x, 2, lengths=lengths, z=z)
    grads = torch.autograd.grad((run.log_p - run.log_q).sum(), list(model.parameters()))
    return run, grads


def _check_teacher_forced(backend: str, rtol: float, atol: float) -> None:
    model = _vrnn()
    x = torch.bernoulli(torch.full((3, 6, 6), 0.3))
    lengths = torch.tensor([6, 3, 5])
    z = torch.randn(3, 2, 6, 3)
    eager, g_eager = _scores_and_grads(model, x, lengths, z)
    model.compile_step(backend=backend)
    compiled, g_comp = _scores_and_grads(model, x, lengths, z)
    torch.testing.assert_close(compiled.log_p, eager.log_p, rtol=rtol, atol=atol)
    torch.testing.assert_close(compiled.log_q, eager.log_q, rtol=rtol, atol=atol)
    for a, b in zip(g_comp, g_eager):
        torch.testing.assert_close(a, b, rtol=rtol, atol=atol)


def test_compiled_step_scores_and_differentiates_like_eager(fresh_dynamo, no_fallback):
    _check_teacher_forced("aot_eager", rtol=1e-6, atol=1e-6)


@pytest.mark.slow
@pytest.mark.skipif(_compiler_missing() is not None, reason=str(_compiler_missing()))
def test_inductor_compiled_step_scores_and_differentiates_like_eager(fresh_dynamo, no_fallback):
    # float32 kernels fused by inductor round differently: a few ulps of values ~10 nats
    _check_teacher_forced("inductor", rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("loss", ["iwae", "iwae-stl", "iwae-dreg", "fivo"])
def test_compiled_losses_equal_eager(fresh_dynamo, no_fallback, loss):
    # STL and DReG re-score the draws with detached parameters (torch.func.functional_call)
    model = _vrnn()
    x = torch.bernoulli(torch.full((3, 6, 6), 0.3))
    lengths = torch.tensor([6, 3, 5])

    def value():
        if loss == "fivo":
            objective = FIVO(model.inf_net, model.gen_model, 3)
        else:
            estimator = loss.partition("-")[2] or "reparam"
            objective = IWAE(model.inf_net, model.gen_model, 3, estimator=estimator)
        torch.manual_seed(7)
        out = objective(x, lengths=lengths)
        return out, torch.autograd.grad(out, list(model.parameters()))

    eager, g_eager = value()
    model.compile_step(backend="aot_eager")
    compiled, g_comp = value()
    torch.testing.assert_close(compiled, eager, rtol=1e-6, atol=1e-5)
    for a, b in zip(g_comp, g_eager):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_compiled_step_has_no_graph_break_and_lengths_do_not_recompile(fresh_dynamo, no_fallback):
    from torch._dynamo.utils import counters

    model = _vrnn()
    encoded = model.encode(torch.bernoulli(torch.full((2, 3, 6), 0.3)))
    explained = fresh_dynamo.explain(model.step)(model.init_state(encoded, 2), encoded[0])
    assert explained.graph_break_count == 0 and explained.graph_count == 1
    fresh_dynamo.reset()
    counters.clear()
    model.compile_step(backend="aot_eager")
    # The first step (a state without gradient) and the later ones; a second length changes the
    # strides of the per-step slices once, after which they are dynamic: at most four graphs.
    for n_steps in (4, 9):
        run_particles(model, torch.bernoulli(torch.full((2, n_steps, 6), 0.3)), 3)
    warm = counters["stats"]["unique_graphs"]
    assert warm <= 4
    for n_steps in (2, 7, 13):
        run_particles(model, torch.bernoulli(torch.full((2, n_steps, 6), 0.3)), 3)
    assert counters["stats"]["unique_graphs"] == warm  # no length compiles again


def test_compiled_step_is_dropped_by_pickling_and_can_be_turned_off(fresh_dynamo):
    import pickle

    model = _vrnn().compile_step(backend="aot_eager")
    assert model_step(model) is not model.step
    copy = pickle.loads(pickle.dumps(model))
    assert model_step(copy) == copy.step
    assert model_step(model.compile_step(False)) == model.step


def test_failing_compilation_warns_and_runs_eager(monkeypatch):
    model = _vrnn()
    x = torch.bernoulli(torch.full((2, 4, 6), 0.3))

    def broken(fn, **options):
        def call(*args, **kwargs):
            raise RuntimeError("no compiler here")

        return call

    monkeypatch.setattr(torch, "compile", broken)
    model.compile_step()
    torch.manual_seed(1)
    with pytest.warns(RuntimeWarning, match="no compiler here"):
        compiled = run_particles(model, x, 2)
    model.compile_step(False)
    torch.manual_seed(1)
    eager = run_particles(model, x, 2)
    torch.testing.assert_close(compiled.log_p, eager.log_p, rtol=0, atol=0)


def test_an_error_of_the_step_itself_is_raised_and_compilation_stays_on(monkeypatch):
    model = _vrnn()
    x = torch.bernoulli(torch.full((2, 4, 6), 0.3))

    def passthrough(fn, **options):  # a "compiled" step that behaves exactly as the eager one
        return fn

    def buggy_step(*args, **kwargs):  # a user's step with a bug: eager fails the same way
        raise ValueError("a bug in the user's step")

    monkeypatch.setattr(torch, "compile", passthrough)
    monkeypatch.setattr(model, "step", buggy_step)
    model.compile_step()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # and no "compilation failed" warning
        with pytest.raises(ValueError, match="a bug in the user's step"):
            run_particles(model, x, 2)
    compiled = model_step(model)
    assert compiled is not model.step and not compiled.failed


def test_sequence_model_and_cli_compile_option(monkeypatch, tmp_path):
    import json

    from bbvae.cli import main
    from bbvae.sequential import SequenceModel
    from bbvae.sequential.compiled import CompiledStep

    calls = []

    def passthrough(fn, **options):  # stands in for torch.compile: records, changes nothing
        calls.append(fn)
        return fn

    monkeypatch.setattr(torch, "compile", passthrough)
    g = torch.Generator().manual_seed(3)
    seqs = [(torch.rand(n, 6, generator=g) < 0.3).float() for n in (5, 7, 4, 6)]
    common = dict(latent_size=3, max_steps=3, batch_size=2, random_state=0)
    plain = SequenceModel(**common).fit(seqs)
    compiled = SequenceModel(**common, compile=True).fit(seqs)
    assert isinstance(model_step(compiled.model_), CompiledStep) and len(calls) == 1
    assert model_step(plain.model_) == plain.model_.step
    assert compiled.loss_history_ == plain.loss_history_  # the same steps, run through the wrapper
    with pytest.raises(TypeError, match="expected compile to be a bool, got 'yes'"):
        SequenceModel(**common, compile="yes").fit(seqs)

    logdir = tmp_path / "run"
    args = ["train", "--logdir", str(logdir), "--dataset-type", "synthetic", "--max-steps", "2"]
    assert main([*args, "--latent-size", "2", "--compile"]) == 0
    assert json.loads((logdir / "config.json").read_text())["settings"]["compile"] is True
    assert len(calls) == 2
