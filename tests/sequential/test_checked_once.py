"""Sequence arguments are checked once per call: FIVO leaves them to smc, the views keep their masks."""

from __future__ import annotations

import sys

import pytest
import torch

import bbvae.sequential.base as seq_base
from bbvae.losses import FIVO, IWAE
from bbvae.sequential import VRNN


@pytest.fixture
def checks(monkeypatch):
    """The ``where`` of every call of check_sequence_args, wherever a module imported it."""
    calls: list[str] = []
    original = seq_base.check_sequence_args

    def counting(x, lengths, inputs, where):
        calls.append(where)
        return original(x, lengths, inputs, where)

    for module in list(sys.modules.values()):
        if getattr(module, "check_sequence_args", None) is original:
            monkeypatch.setattr(module, "check_sequence_args", counting)
    return calls


def _model_and_data():
    torch.manual_seed(0)
    model = VRNN(5, latent_size=3, hidden_size=4)
    x = torch.bernoulli(torch.full((3, 6, 5), 0.4))
    return model, x, torch.tensor([6, 2, 4])


@pytest.mark.parametrize("make_loss", [FIVO, IWAE], ids=["fivo", "iwae"])
def test_one_check_per_call(checks, make_loss):
    model, x, lengths = _model_and_data()
    loss = make_loss(model.inf_net, model.gen_model, 3)
    loss(x, lengths=lengths).backward()
    assert len(checks) == 1, checks
    checks.clear()
    loss(x, lengths=lengths)
    assert len(checks) == 1, checks


def test_fivo_still_refuses_bad_lengths():
    model, x, _ = _model_and_data()
    loss = FIVO(model.inf_net, model.gen_model, 3)
    with pytest.raises(ValueError, match=r"1 <= lengths <= T = 6, got lengths\[1\] = 7"):
        loss(x, lengths=torch.tensor([6, 7, 1]))
    with pytest.raises(ValueError, match=r"expected lengths of shape \[3\]"):
        loss(x, lengths=torch.tensor([6, 2]))


def test_views_rescore_a_foreign_x_with_a_check(checks):
    # A z scored against an x the inference view never saw is checked when it is run.
    model, x, lengths = _model_and_data()
    q = model.inf_net(x, lengths=lengths)
    z = q.rsample(2)
    other = x.clone()
    model.gen_model(other, z).log_prob(other, z)
    assert checks == [f"{type(model).__name__}.inf_net", "run_particles"]
