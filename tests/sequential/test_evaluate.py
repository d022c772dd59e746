"""evaluate(): bounds per time step and per sequence."""

from __future__ import annotations

import pytest
import torch

from bbvae.sequential import evaluate


def test_report_structure_and_normalisation(seq):
    model = seq.make_ghmm(2, 3, proposal="optimal")
    torch.manual_seed(0)
    x, _ = model.sample(6, 8)
    lengths = torch.tensor([8, 3, 5, 8, 1, 6])
    model.train()
    report = evaluate(model, x, lengths=lengths, n_samples=200)
    assert set(report) == {"elbo", "iwae", "fivo", "exact"} and model.training
    exact = model.exact_log_prob(x, lengths).detach()
    assert report["exact"]["per_sequence"] == pytest.approx(float(exact.mean()))
    assert report["exact"]["per_step"] == pytest.approx(float(exact.sum() / lengths.sum()))
    for name, values in report.items():
        total = values["per_sequence"] * 6
        assert values["per_step"] * float(lengths.sum()) == pytest.approx(total), name
    # locally optimal proposal, 200 particles: IWAE and FIVO within 0.05 nats per step of the
    # exact value; the ELBO keeps the KL to the smoothing posterior (0.14 nats per step measured)
    assert report["elbo"]["per_step"] <= report["iwae"]["per_step"] < report["exact"]["per_step"] + 0.05
    for name in ("iwae", "fivo"):
        assert abs(report[name]["per_step"] - report["exact"]["per_step"]) < 0.05, name


def test_chunking_and_selection(seq):
    model = seq.make_ghmm(2, 3, proposal="prior")
    x, _ = model.sample(5, 4)
    report = evaluate(model, x, bounds=("fivo",), n_samples=3, batch_size=2)
    assert set(report) == {"fivo", "exact"}
    assert report["fivo"]["per_step"] == pytest.approx(report["fivo"]["per_sequence"] / 4)
    assert report["exact"]["per_sequence"] == pytest.approx(float(model.exact_log_prob(x).detach().mean()))
    assert report["fivo"]["per_sequence"] < report["exact"]["per_sequence"] + 1.0


def test_discrete_model_and_side_inputs(seq):
    dhmm = seq.make_dhmm(3, 4, proposal="optimal")
    x, _ = dhmm.sample(4, 5)
    report = evaluate(dhmm, x, n_samples=500, bounds=("iwae", "fivo"))
    for name in ("iwae", "fivo"):
        assert abs(report[name]["per_step"] - report["exact"]["per_step"]) < 0.05
    toy = seq.InputShiftModel().double()
    inputs = torch.randn(3, 4, 1, dtype=torch.float64)
    xt = inputs + torch.randn(3, 4, 1, dtype=torch.float64)
    report = evaluate(toy, xt, inputs=inputs, bounds=("elbo",), n_samples=2)
    assert toy.seen_inputs is inputs
    exact = toy.exact_log_prob(xt, inputs=inputs).detach()
    assert report["exact"]["per_sequence"] == pytest.approx(float(exact.mean()))


def test_bad_arguments(seq):
    model = seq.make_ghmm(2, 3)
    x, _ = model.sample(2, 3)
    with pytest.raises(ValueError, match="bounds among"):
        evaluate(model, x, bounds=("elbo", "vimco"))
    with pytest.raises(ValueError, match="n_samples >= 1"):
        evaluate(model, x, n_samples=0)
    with pytest.raises(ValueError, match="batch_size >= 1"):
        evaluate(model, x, batch_size=0)
    with pytest.raises(TypeError, match="SequentialModel"):
        evaluate(torch.nn.Linear(2, 2), x)

    class NoExact(seq.InputShiftModel):
        exact_log_prob = None

    with pytest.raises(ValueError, match="no exact_log_prob"):
        evaluate(NoExact(), torch.zeros(2, 3, 1), bounds=("exact",))
    assert set(evaluate(NoExact(), torch.zeros(2, 3, 1))) == {"elbo", "iwae", "fivo"}
