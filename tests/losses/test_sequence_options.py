"""``compile=`` on the sequence losses (FIVO, IWAE, ELBO, and PerStep around them).

The option calls the model's ``compile_step`` (one implementation): after the first call the
model's step is a ``CompiledStep``, and a model compiled already is left as it is. With the
``aot_eager`` backend (dynamo tracing and AOT autograd, seconds; it draws as eager does) the
compiled losses give the eager bound and gradients for a fixed seed, also with checkpointed
chunks. A compiler that is unavailable (``torch.compile`` itself raises) or fails at the first
call warns and the loss runs eager, with the eager numbers. One model is compiled per module.
"""

from __future__ import annotations

import warnings

import pytest
import torch

from bbvae.losses import ELBO, FIVO, IWAE, PerStep
from bbvae.sequential import VRNN
from bbvae.sequential.compiled import CompiledStep, model_step

AOT = {"backend": "aot_eager"}
LENGTHS = torch.tensor([6, 3, 5])


def _vrnn():
    torch.manual_seed(0)
    return VRNN(6, latent_size=3, hidden_size=5, fc_hidden_sizes=(5,), encoded_size=4)


def _x():
    return torch.bernoulli(torch.full((3, 6, 6), 0.3), generator=torch.Generator().manual_seed(1))


LOSSES = {
    "fivo": lambda m, **o: FIVO(m.inf_net, m.gen_model, 3, ess_threshold=0.9, **o),
    "fivo-stop_gradient": lambda m, **o: FIVO(m.inf_net, m.gen_model, 3, gradient="stop_gradient", **o),
    "iwae": lambda m, **o: IWAE(m.inf_net, m.gen_model, 3, **o),
    "iwae-dreg": lambda m, **o: IWAE(m.inf_net, m.gen_model, 3, estimator="dreg", **o),
    "elbo": lambda m, **o: ELBO(m.inf_net, m.gen_model, 2, **o),
    "perstep-iwae": lambda m, **o: PerStep(IWAE(m.inf_net, m.gen_model, 3, **o)),
}


def _value_and_grads(model, loss, x):
    torch.manual_seed(7)
    value = loss(x, lengths=LENGTHS)
    return value.detach(), torch.autograd.grad(value, list(model.parameters()))


@pytest.fixture(scope="module")
def eager_and_compiled():
    """The eager numbers of every loss, then a model compiled by the first loss's option and the
    numbers of every loss (and of FIVO with checkpointed chunks) with ``compile=AOT``."""
    import torch._dynamo

    torch._dynamo.reset()
    model, x = _vrnn(), _x()
    eager = {name: _value_and_grads(model, make(model), x) for name, make in LOSSES.items()}
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no fallback to eager
        first = LOSSES["fivo"](model, compile=AOT)
        assert "_compiled_step" not in vars(model)  # compiled at the first call, not at construction
        compiled = {"fivo": _value_and_grads(model, first, x)}
        step = model_step(model)
        assert isinstance(step, CompiledStep) and not step.failed
        for name, make in LOSSES.items():
            if name != "fivo":
                compiled[name] = _value_and_grads(model, make(model, compile=AOT), x)
        assert model_step(model) is step  # a compiled model is left as it is
        remat = _value_and_grads(model, LOSSES["fivo"](model, compile=AOT, remat_chunk=2), x)
        assert not step.failed
    yield eager, compiled, remat
    torch._dynamo.reset()


@pytest.mark.parametrize("name", list(LOSSES))
def test_compiled_losses_give_the_eager_bound_and_gradients(eager_and_compiled, name):
    eager, compiled, _ = eager_and_compiled
    torch.testing.assert_close(compiled[name][0], eager[name][0], rtol=1e-6, atol=1e-6)
    for a, b in zip(compiled[name][1], eager[name][1]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert any(bool(g.abs().sum() > 0) for g in eager[name][1])


def test_compiled_step_in_checkpointed_chunks(eager_and_compiled):
    eager, _, remat = eager_and_compiled
    torch.testing.assert_close(remat[0], eager["fivo"][0], rtol=1e-6, atol=1e-6)
    for a, b in zip(remat[1], eager["fivo"][1]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("when", ["unavailable", "failing"])
def test_a_compiler_that_fails_warns_and_the_loss_runs_eager(monkeypatch, when):
    model, x = _vrnn(), _x()
    eager = _value_and_grads(model, LOSSES["fivo"](model), x)

    def unavailable(fn, **options):
        raise RuntimeError("torch.compile is not supported here")

    def failing(fn, **options):
        def call(*args, **kwargs):
            raise RuntimeError("no C compiler")

        return call

    monkeypatch.setattr(torch, "compile", unavailable if when == "unavailable" else failing)
    loss = LOSSES["fivo"](model, compile=True)
    message = "not supported here" if when == "unavailable" else "no C compiler"
    with pytest.warns(RuntimeWarning, match=f"compile_step: torch.compile of VRNN.step failed .*{message}"):
        fallback = _value_and_grads(model, loss, x)
    assert model_step(model).failed
    torch.testing.assert_close(fallback[0], eager[0], rtol=0, atol=0)
    for a, b in zip(fallback[1], eager[1]):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_compile_options_reach_torch_compile(monkeypatch):
    seen = []

    def passthrough(fn, **options):
        seen.append(options)
        return fn

    monkeypatch.setattr(torch, "compile", passthrough)
    model, x = _vrnn(), _x()
    IWAE(model.inf_net, model.gen_model, 2, compile={"mode": "reduce-overhead", "dynamic": True})(x)
    ELBO(model.inf_net, model.gen_model, compile=True)(x)  # compiled already: left alone
    assert seen == [{"mode": "reduce-overhead", "dynamic": True}]
    IWAE(model.inf_net, model.gen_model, 2)(x)  # compile=False does not turn it off
    assert isinstance(model_step(model), CompiledStep)
