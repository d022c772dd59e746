"""``compile``, ``remat_chunk`` and ``tbptt_chunk`` on the Trainer, SequenceModel and ``bbvae train``.

Each sets the option on every sequence model of the loss (the Trainer at the start of ``fit``,
the estimator on the model it builds, the command line through the estimator and its saved
config). Checkpointed chunks replay the same draws, so a run with them takes the same steps as
one without (the same loss history, the parameters equal to float32 rounding); truncation changes
the gradient, so its parameters move differently while its first bound is the same.
``torch.compile`` is replaced by a recording pass-through (no compilation here: that is tested in
tests/losses/test_sequence_options.py)."""

from __future__ import annotations

import json

import pytest
import torch

from bbvae.losses import FIVO, IWAE
from bbvae.models import GaussianInfNet, LinearGaussianGenModel
from bbvae.sequential import VRNN
from bbvae.sequential.compiled import CompiledStep, model_step
from bbvae.training import Trainer


def _sequences():
    g = torch.Generator().manual_seed(3)
    return [(torch.rand(n, 6, generator=g) < 0.3).float() for n in (9, 7, 4, 8)]


def _vrnn():
    torch.manual_seed(0)
    return VRNN(6, latent_size=3, hidden_size=5)


def _fit(make_loss=None, **options):
    model = _vrnn()
    loss = (make_loss or (lambda m: FIVO(m.inf_net, m.gen_model, 3, ess_threshold=0.9)))(model)
    trainer = Trainer(loss, batch_size=2, max_steps=4, log_every=1, progress=False, seed=0, **options)
    trainer.fit(_sequences())
    return model, trainer


@pytest.fixture
def recorded_compile(monkeypatch):
    calls = []

    def passthrough(fn, **options):  # stands in for torch.compile: records, changes nothing
        calls.append(options)
        return fn

    monkeypatch.setattr(torch, "compile", passthrough)
    return calls


def test_trainer_checkpointed_chunks_take_the_same_steps(recorded_compile):
    plain_model, plain = _fit()
    model, chunked = _fit(remat_chunk=2, compile={"dynamic": True})
    assert model.remat_chunk == 2 and model.tbptt_chunk is None
    assert isinstance(model_step(model), CompiledStep) and recorded_compile == [{"dynamic": True}]
    assert chunked.loss_history_ == plain.loss_history_
    for a, b in zip(model.parameters(), plain_model.parameters()):  # (float32 gradients summed per chunk)
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    config = chunked.config()
    assert (config["compile"], config["remat_chunk"], config["tbptt_chunk"]) == ({"dynamic": True}, 2, None)


def test_trainer_truncation_is_another_gradient_from_the_same_first_bound():
    plain_model, plain = _fit()
    model, truncated = _fit(tbptt_chunk=2)
    assert model.tbptt_chunk == 2
    assert truncated.loss_history_[0] == plain.loss_history_[0]  # the same draws before any update
    assert truncated.loss_history_ != plain.loss_history_
    assert any(not torch.allclose(a, b) for a, b in zip(model.parameters(), plain_model.parameters()))


def test_trainer_refuses_bad_options_and_losses_without_a_sequence_model():
    with pytest.raises(ValueError, match=r"Trainer: expected remat_chunk >= 1 \(time steps per chunk\)"):
        _fit(remat_chunk=0)
    with pytest.raises(TypeError, match=r"Trainer: expected compile to be a bool or a dict"):
        _fit(compile="yes")
    torch.manual_seed(0)
    loss = IWAE(GaussianInfNet(4, 2), LinearGaussianGenModel(2, 4), 2)
    trainer = Trainer(loss, batch_size=2, max_steps=1, progress=False, tbptt_chunk=8)
    with pytest.raises(
        ValueError, match=r"Trainer: tbptt_chunk=8 applies to sequence models, but IWAE holds"
    ):
        trainer.fit(torch.randn(6, 4))


def test_sequence_model_and_cli_chunk_options(tmp_path):
    from bbvae.cli import main
    from bbvae.sequential import SequenceModel

    common = dict(latent_size=3, max_steps=3, batch_size=2, random_state=0)
    plain = SequenceModel(**common).fit(_sequences())
    chunked = SequenceModel(**common, remat_chunk=3).fit(_sequences())
    assert chunked.model_.remat_chunk == 3 and chunked.get_params()["remat_chunk"] == 3
    assert chunked.loss_history_ == plain.loss_history_
    truncated = SequenceModel(**common, bound="elbo", tbptt_chunk=2).fit(_sequences())
    assert truncated.model_.tbptt_chunk == 2
    with pytest.raises(TypeError, match=r"SequenceModel: expected tbptt_chunk to be a positive int"):
        SequenceModel(**common, tbptt_chunk=1.5).fit(_sequences())

    logdir = tmp_path / "run"
    args = ["train", "--logdir", str(logdir), "--dataset-type", "synthetic", "--max-steps", "2"]
    assert main([*args, "--latent-size", "2", "--remat-chunk", "4", "--tbptt-chunk", "8"]) == 0
    settings = json.loads((logdir / "config.json").read_text())["settings"]
    assert (settings["remat_chunk"], settings["tbptt_chunk"]) == (4, 8)


def test_resuming_with_another_truncation_is_refused(tmp_path):
    # Truncation is another gradient estimator: a run checkpointed with tbptt_chunk=2 does not go
    # on silently without it (or with another chunk); the same setting resumes.
    from bbvae.checkpoint import CheckpointError

    def trainer(max_steps=4, **options):
        model = _vrnn()
        loss = FIVO(model.inf_net, model.gen_model, 3, ess_threshold=0.9)
        return Trainer(
            loss, batch_size=2, max_steps=max_steps, log_every=1, progress=False, seed=0,
            logdir=str(tmp_path), checkpoint_every=2, **options,
        )  # fmt: skip

    trainer(tbptt_chunk=2).fit(_sequences())
    for other in (None, 3):
        with pytest.raises(CheckpointError, match="tbptt_chunk=2 there"):
            trainer(tbptt_chunk=other, max_steps=6).fit(_sequences(), resume=True)
    trainer(tbptt_chunk=2, max_steps=6).fit(_sequences(), resume=True)


def test_a_compile_dict_with_a_callable_backend_is_checkpointed_by_name(tmp_path, recorded_compile):
    def my_backend(gm, example_inputs):  # (never called: torch.compile is recorded here)
        return gm

    model = _vrnn()
    loss = FIVO(model.inf_net, model.gen_model, 3, ess_threshold=0.9)
    options = dict(batch_size=2, log_every=1, progress=False, seed=0, logdir=str(tmp_path))
    options["checkpoint_every"] = 2
    Trainer(loss, max_steps=2, compile={"backend": my_backend}, **options).fit(_sequences())
    saved = torch.load(tmp_path / "last.pt", weights_only=True)  # plain types only: loads safely
    assert saved["config"]["compile"]["backend"].endswith("my_backend")
    resumed = Trainer(loss, max_steps=4, compile={"backend": my_backend}, **options)
    resumed.fit(_sequences(), resume=True)
    assert resumed.n_iter_ == 4
