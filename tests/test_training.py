"""The Trainer: it improves the bound, resumes exactly, stops on NaN and plateaus, logs, and feeds
sequence batches. Small float64 linear-Gaussian models keep every run to a fraction of a second."""

from __future__ import annotations

import csv
import json
import math
import random

import numpy as np
import pytest
import torch
from torch import nn

from bbvae.checkpoint import CheckpointError, load_checkpoint
from bbvae.data import PianoRollData, SequenceBatch, SequenceDataset, collate_sequences
from bbvae.losses import IWAE, Loss, log_mean_exp
from bbvae.models import GaussianInfNet, LinearGaussianGenModel
from bbvae.training import Callback, NonFiniteLossError, Trainer, as_dataset, set_seed

X_DIM, Z_DIM = 4, 2


# --------------------------------------------------------------------------- helpers
class ExactLogLik(Loss):
    """Deterministic objective: the exact log p(x) of the linear-Gaussian model (maximum likelihood).

    ``nan_at``: the call number (1-based) whose bound is NaN, to inject a failure.
    """

    def __init__(self, inf_net, gen_model, nan_at=None):
        super().__init__(inf_net, gen_model)
        self.nan_at, self.calls = nan_at, 0

    def estimate(self, x, **context):
        self.calls += 1
        log_p = self.gen_model.exact_log_prob(x)  # [batch]
        if self.calls == self.nan_at:
            log_p = log_p * float("nan")
        return log_p.detach(), log_p


class FramewiseIWAE(Loss):
    """IWAE on every valid frame of ``x`` ``[batch, T, D]`` (frames independent), summed over time.

    A stochastic, SequentialModel-free loss that takes ``lengths`` (and records what it got).
    """

    def __init__(self, inf_net, gen_model, n_samples=1, exact=False):
        super().__init__(inf_net, gen_model, n_samples)
        self.exact = exact
        self.seen: list[tuple] = []

    def estimate(self, x, lengths=None, inputs=None):
        self.seen.append((tuple(x.shape), None if lengths is None else lengths.tolist(), inputs is not None))
        B, T, D = x.shape
        frames = x.reshape(B * T, D)
        if self.exact:
            per_frame = self.gen_model.exact_log_prob(frames)  # [B * T]
        else:
            q = self.inf_net(frames)
            z = q.rsample(self.n_samples)  # [B * T, K, L]
            log_w = self.gen_model(frames, z).log_prob(frames, z) - q.log_prob(z)  # [B * T, K]
            per_frame = log_mean_exp(log_w)
        mask = torch.arange(T) < lengths.unsqueeze(1)  # [B, T]
        bound = torch.where(mask, per_frame.reshape(B, T), 0.0).sum(1)  # [B]
        return bound.detach(), bound


def _nets(seed=1):
    torch.manual_seed(seed)
    return GaussianInfNet(X_DIM, Z_DIM).double(), LinearGaussianGenModel(Z_DIM, X_DIM).double()


def _iwae(seed=1, k=3):
    return IWAE(*_nets(seed), n_samples=k)


def _data(n, seed=0):
    torch.manual_seed(seed)
    true = LinearGaussianGenModel(Z_DIM, X_DIM).double()
    return true, true.sample(n)[0]  # [n, X_DIM]


def _sequences(n, seed=0, max_len=7):
    _, frames = _data(n * max_len, seed)
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, max_len + 1, (n,), generator=gen).tolist()
    return [frames[i * max_len : i * max_len + t] for i, t in enumerate(lengths)]  # [T_i, X_DIM]


def _params(loss):
    return {k: v.detach().clone() for k, v in loss.state_dict().items()}


QUIET = dict(progress=False)


# --------------------------------------------------------------------------- training works
def test_training_a_linear_gaussian_vae_improves_the_bound():
    true, x = _data(256)
    loss = _iwae(k=4)
    before = loss.gen_model.exact_log_prob(x).mean().item()
    trainer = Trainer(loss, learning_rate=0.05, batch_size=32, max_steps=120, eval_every=40, **QUIET)
    assert trainer.fit(x, valid_data=x[:64]) is trainer
    after = loss.gen_model.exact_log_prob(x).mean().item()
    # An optimisation outcome, not a statistical test: the random initial model is ~1.5 nats per
    # point worse than the truth; the fitted one must recover most of that gap.
    reference = true.exact_log_prob(x).mean().item()
    assert before < reference - 1.0
    assert after > reference - 0.25
    assert trainer.valid_history_[-1] > trainer.valid_history_[0]
    assert trainer.n_iter_ == 120 and len(trainer.loss_history_) == 120
    assert trainer.stop_reason_ == "max_steps" and trainer.valid_steps_ == [40, 80, 120]
    assert trainer.best_valid_ == max(trainer.valid_history_)
    assert trainer.n_epochs_ == 120 // 8  # 256 rows / 32 = 8 steps per epoch


def test_parameters_are_deduplicated_and_loss_owned_ones_trained():
    class WithBaseline(ExactLogLik):
        def __init__(self, inf_net, gen_model):
            super().__init__(inf_net, gen_model)
            self.baseline = nn.Parameter(torch.zeros((), dtype=torch.float64))

        def estimate(self, x, **context):
            bound, objective = super().estimate(x)
            return bound, objective - (self.baseline - 1.0) ** 2  # the baseline is pulled to 1

    q, p = _nets()
    q.shared = p  # gen_model's parameters are reachable twice
    loss = WithBaseline(q, p)
    _, x = _data(64)
    trainer = Trainer(loss, learning_rate=0.1, batch_size=16, max_steps=40, **QUIET).fit(x)
    params = trainer.optimizer_.param_groups[0]["params"]
    assert len(params) == len({id(t) for t in params}) == len(list(loss.parameters()))
    assert 0.5 < loss.baseline.item() < 1.5  # the loss-owned parameter moved from 0 towards 1


# --------------------------------------------------------------------------- exact resumption
@pytest.mark.parametrize("kind", ["tensor", "sequences"])
def test_resume_equals_uninterrupted(tmp_path, kind):
    if kind == "tensor":
        _, x = _data(30)
        train, valid = x, x[:10]

        def make(seed):
            return _iwae(seed)
    else:
        train, valid = _sequences(30), _sequences(6, seed=5)

        def make(seed):
            return FramewiseIWAE(*_nets(seed), n_samples=3)

    common = dict(
        learning_rate=0.02, batch_size=8, log_every=3, eval_every=4, checkpoint_every=5, seed=7, **QUIET
    )
    full = make(1)
    full_trainer = Trainer(full, max_steps=23, logdir=tmp_path / "full", **common).fit(train, valid)

    part = make(1)
    Trainer(part, max_steps=10, logdir=tmp_path / "part", **common).fit(train, valid)
    torch.rand(5), np.random.rand(), random.random()  # another process would have other RNG states
    resumed = make(123)  # other initial values: the checkpoint must supply everything
    trainer = Trainer(resumed, max_steps=23, logdir=tmp_path / "part", **common)
    trainer.fit(train, valid, resume=True)

    for name, value in _params(full).items():
        assert torch.equal(resumed.state_dict()[name], value), name
    assert trainer.loss_history_ == full_trainer.loss_history_
    assert trainer.valid_history_ == full_trainer.valid_history_
    assert trainer.n_iter_ == 23 and trainer.n_epochs_ == full_trainer.n_epochs_ == 5  # 4 batches/epoch

    def rows(directory):
        with open(directory / "log.jsonl") as f:
            return [{k: v for k, v in json.loads(line).items() if k != "time"} for line in f]

    assert rows(tmp_path / "part") == rows(tmp_path / "full")


def test_validation_leaves_the_training_random_stream_alone():
    _, x = _data(32)
    plain, validated = _iwae(), _iwae()
    Trainer(plain, batch_size=8, max_steps=6, **QUIET).fit(x)
    trainer = Trainer(validated, batch_size=8, max_steps=6, eval_every=2, **QUIET).fit(x, valid_data=x[:8])
    assert len(trainer.valid_history_) == 3
    for name, value in plain.state_dict().items():
        assert torch.equal(validated.state_dict()[name], value), name
    # Every evaluation draws the same noise: with unchanged parameters it gives the same value.
    assert trainer.evaluate(x[:8]) == trainer.evaluate(x[:8]) == trainer.valid_history_[-1]


def test_resume_refuses_other_settings(tmp_path):
    _, x = _data(32)
    Trainer(_iwae(), batch_size=8, max_steps=4, logdir=tmp_path, **QUIET).fit(x)
    with pytest.raises(CheckpointError, match="batch_size=8 there, 4 here"):
        Trainer(_iwae(), batch_size=4, max_steps=8, logdir=tmp_path, **QUIET).fit(x, resume=True)
    other = IWAE(GaussianInfNet(X_DIM, 3).double(), LinearGaussianGenModel(3, X_DIM).double())
    with pytest.raises(CheckpointError, match=r"gen_model.weight: \[4, 2\] there, \[4, 3\] here"):
        Trainer(other, batch_size=8, max_steps=8, logdir=tmp_path, **QUIET).fit(x, resume=True)
    # Changing the schedule and the learning rate is allowed, and the new rate applies.
    trainer = Trainer(_iwae(), batch_size=8, max_steps=6, learning_rate=0.5, logdir=tmp_path, **QUIET)
    trainer.fit(x, resume=tmp_path / "last.pt")
    assert trainer.n_iter_ == 6 and trainer.optimizer_.param_groups[0]["lr"] == 0.5


def test_resume_modes(tmp_path):
    _, x = _data(16)
    with pytest.raises(FileNotFoundError, match="last.pt"):
        Trainer(_iwae(), batch_size=8, max_steps=2, logdir=tmp_path, **QUIET).fit(x, resume=True)
    with pytest.raises(ValueError, match="needs logdir"):
        Trainer(_iwae(), batch_size=8, max_steps=2, **QUIET).fit(x, resume=True)
    trainer = Trainer(_iwae(), batch_size=8, max_steps=2, logdir=tmp_path, **QUIET).fit(x, resume="auto")
    assert trainer.n_iter_ == 2  # nothing to resume: a fresh run
    trainer = Trainer(_iwae(), batch_size=8, max_steps=3, logdir=tmp_path, **QUIET).fit(x, resume="auto")
    assert trainer.n_iter_ == 3 and len(trainer.loss_history_) == 3


def test_a_failing_checkpoint_write_keeps_the_previous_one(tmp_path, monkeypatch):
    _, x = _data(32)
    loss = _iwae()
    Trainer(loss, batch_size=8, max_steps=5, logdir=tmp_path, **QUIET).fit(x)
    saved = _params(loss)

    def failing_save(obj, f, *args, **kwargs):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        Trainer(loss, batch_size=8, max_steps=10, logdir=tmp_path, **QUIET).fit(x, resume=True)
    monkeypatch.undo()
    state = load_checkpoint(tmp_path / "last.pt")
    assert state["step"] == 5
    for name, value in saved.items():
        assert torch.equal(state["model_state"][name], value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt", "log.jsonl"]


# --------------------------------------------------------------------------- non-finite losses
@pytest.mark.parametrize("every_step", [None, False])
def test_a_nan_loss_stops_training_and_keeps_the_last_good_checkpoint(tmp_path, every_step):
    _, x = _data(64)
    loss = ExactLogLik(*_nets(), nan_at=8)
    trainer = Trainer(
        loss, batch_size=8, max_steps=50, log_every=5, checkpoint_every=3, logdir=tmp_path, **QUIET
    )
    trainer._check_every_step = every_step  # False: detected at the next logging point (accelerators)
    with pytest.raises(NonFiniteLossError, match="training loss is nan at step 8") as info:
        trainer.fit(x)
    assert isinstance(info.value, FloatingPointError) and isinstance(info.value, RuntimeError)
    assert info.value.step == 8 and info.value.restored_step == 6
    assert "last.pt" in str(info.value)
    state = load_checkpoint(tmp_path / "last.pt")
    assert state["step"] == 6 and len(state["loss_history"]) == 6
    for name, value in state["model_state"].items():
        assert torch.isfinite(value).all(), name
        assert torch.equal(loss.state_dict()[name], value), name  # rolled back in memory too
    assert trainer.n_iter_ == 6 and len(trainer.loss_history_) == 6


def test_an_exploding_learning_rate_is_caught(tmp_path):
    _, x = _data(64)
    loss = _iwae()
    trainer = Trainer(
        loss, learning_rate=1e6, batch_size=8, max_steps=50, checkpoint_every=1, logdir=tmp_path, **QUIET
    )
    with pytest.raises(NonFiniteLossError, match="non-finite|nan|inf"):
        trainer.fit(x)
    state = load_checkpoint(tmp_path / "last.pt")
    assert all(torch.isfinite(v).all() for v in state["model_state"].values())
    assert all(torch.isfinite(p).all() for p in loss.parameters())
    assert all(math.isfinite(v) for v in state["loss_history"])


# --------------------------------------------------------------------------- early stopping
def test_early_stopping_on_a_plateau(tmp_path):
    _, x = _data(64)
    loss = ExactLogLik(*_nets())
    # learning_rate=0: the validation bound is flat, so only the first evaluation is a best.
    trainer = Trainer(
        loss,
        learning_rate=0.0,
        batch_size=8,
        max_steps=100,
        eval_every=2,
        patience=3,
        logdir=tmp_path,
        **QUIET,
    )
    trainer.fit(x, valid_data=x[:16])
    assert trainer.stop_reason_ == "early_stopping"
    assert trainer.n_iter_ == 8 and trainer.valid_steps_ == [2, 4, 6, 8]
    assert trainer.best_step_ == 2 and trainer.best_valid_ == trainer.valid_history_[0]
    expected = loss.gen_model.exact_log_prob(x[:16]).mean().item()  # per data point
    assert trainer.best_valid_ == pytest.approx(expected, rel=1e-12)
    assert load_checkpoint(tmp_path / "best.pt")["step"] == 2
    assert load_checkpoint(tmp_path / "last.pt")["step"] == 8


def test_evaluate_fn_and_restore_best(tmp_path):
    _, x = _data(64)
    loss = ExactLogLik(*_nets())
    scores = iter([1.0, 3.0, 2.0, 2.5, 2.9, 9.0])
    seen = []

    def evaluate_fn(loss_arg, data):
        seen.append((data, loss_arg.training, torch.is_grad_enabled()))
        return next(scores)

    trainer = Trainer(
        loss,
        learning_rate=0.05,
        batch_size=8,
        max_steps=100,
        eval_every=2,
        patience=3,
        evaluate_fn=evaluate_fn,
        restore_best=True,
        logdir=tmp_path,
        **QUIET,
    )
    trainer.fit(x, valid_data="anything")  # evaluate_fn receives valid_data unchanged
    assert seen == [("anything", False, False)] * 5 and trainer.valid_history_ == [1.0, 3.0, 2.0, 2.5, 2.9]
    assert trainer.best_step_ == 4 and trainer.n_iter_ == 10
    best = load_checkpoint(tmp_path / "best.pt")["model_state"]
    last = load_checkpoint(tmp_path / "last.pt")["model_state"]
    for name, value in loss.state_dict().items():
        assert torch.equal(value, best[name]), name
    assert not torch.equal(best["gen_model.weight"], last["gen_model.weight"])


# --------------------------------------------------------------------------- log file
@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_log_file_rows(tmp_path, fmt):
    _, x = _data(40)
    trainer = Trainer(
        _iwae(),
        learning_rate=0.01,
        batch_size=8,
        max_steps=22,
        log_every=5,
        eval_every=10,
        logdir=tmp_path,
        log_format=fmt,
        **QUIET,
    )
    trainer.fit(x, valid_data=x[:8])
    path = tmp_path / f"log.{fmt}"
    with open(path, newline="") as f:
        if fmt == "jsonl":
            rows = [json.loads(line) for line in f]
        else:
            rows = [{k: (None if v == "" else float(v)) for k, v in row.items()} for row in csv.DictReader(f)]
    assert [set(r) for r in rows] == [{"step", "epoch", "loss", "valid_bound", "time", "lr"}] * 5
    assert [int(r["step"]) for r in rows] == [5, 10, 15, 20, 22]
    history = trainer.loss_history_
    bounds = [0, 5, 10, 15, 20, 22]
    for row, lo, hi in zip(rows, bounds[:-1], bounds[1:]):
        assert row["loss"] == pytest.approx(sum(history[lo:hi]) / (hi - lo), rel=1e-12)
        assert row["lr"] == pytest.approx(0.01)
    assert [r["valid_bound"] for r in rows] == pytest.approx(
        [None, trainer.valid_history_[0], None, trainer.valid_history_[1], None]
    )
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4, 5]  # 5 steps per epoch
    times = [float(r["time"]) for r in rows]
    assert times == sorted(times)


# --------------------------------------------------------------------------- sequences
def test_sequence_batches_and_validation_per_time_step():
    seqs = _sequences(12)
    valid = _sequences(5, seed=3)
    loss = FramewiseIWAE(*_nets(), exact=True)
    trainer = Trainer(loss, learning_rate=0.01, batch_size=4, max_epochs=2, eval_every=None, **QUIET)
    trainer.fit(seqs, valid_data=valid)
    train_seen = loss.seen[:3] + loss.seen[4:7]  # epoch 1 (3 batches), one validation, epoch 2
    for shape, lengths, has_inputs in train_seen:
        assert shape[0] == len(lengths) <= 4 and shape[1] == max(lengths) and shape[2] == X_DIM
        assert not has_inputs  # inputs are passed only with use_inputs=True
    assert sorted(t for _, lengths, _ in loss.seen[:3] for t in lengths) == sorted(len(s) for s in seqs)
    assert trainer.n_iter_ == 6 and trainer.n_epochs_ == 2 and trainer.valid_steps_ == [3, 6]
    # The bound per time step: the exact log-likelihood of every valid frame, averaged.
    frames = torch.cat(valid)  # [sum T_i, X_DIM]
    expected = loss.gen_model.exact_log_prob(frames).mean().item()
    assert trainer.evaluate(valid) == pytest.approx(expected, rel=1e-10)
    assert trainer.valid_history_[-1] == pytest.approx(expected, rel=1e-10)


def test_inputs_are_passed_with_use_inputs():
    seqs = _sequences(6)
    inputs = [torch.ones(len(s), 3, dtype=torch.float64) for s in seqs]
    loss = FramewiseIWAE(*_nets(), exact=True)
    Trainer(loss, batch_size=3, max_steps=2, use_inputs=True, **QUIET).fit(SequenceDataset(seqs, inputs))
    assert [has for _, _, has in loss.seen] == [True, True]
    with pytest.raises(ValueError, match="use_inputs=True.*inputs=None"):
        Trainer(loss, batch_size=3, max_steps=2, use_inputs=True, **QUIET).fit(seqs)


def test_pianoroll_data_split():
    rng = np.random.default_rng(0)
    rolls = [rng.random((t, 88)) < 0.1 for t in (3, 5, 2, 4, 6)]
    data = PianoRollData(train=rolls, valid=rolls[:2], test=rolls[:1])

    class PianoLoss(Loss):
        def __init__(self):
            super().__init__(*_nets())
            self.logits = nn.Parameter(torch.zeros(88))
            self.seen = []

        def estimate(self, x, lengths=None, inputs=None):
            self.seen.append((x.shape, lengths.clone(), inputs.shape))
            log_p = torch.distributions.Bernoulli(logits=self.logits).log_prob(x).sum(-1)  # [B, T]
            mask = torch.arange(x.shape[1]) < lengths.unsqueeze(1)
            bound = torch.where(mask, log_p, 0.0).sum(1)
            return bound.detach(), bound

    loss = PianoLoss()
    trainer = Trainer(loss, learning_rate=0.1, batch_size=2, max_epochs=1, use_inputs=True, **QUIET)
    trainer.fit(data.dataset("train"), valid_data=data.dataset("valid"))
    assert trainer.n_iter_ == 3
    assert sorted(int(t) for _, lengths, _ in loss.seen[:3] for t in lengths) == [2, 3, 4, 5, 6]
    for x_shape, lengths, inputs_shape in loss.seen:
        assert x_shape == inputs_shape == (len(lengths), int(lengths.max()), 88)
    with pytest.raises(TypeError, match=r"data.dataset\('train'\)"):
        Trainer(loss, max_steps=1, **QUIET).fit(data)


# --------------------------------------------------------------------------- data adapters
class RowRecorder(ExactLogLik):
    """Records the rows (first coordinate) of every training batch."""

    def __init__(self):
        super().__init__(*_nets())
        self.rows: list[list[float]] = []

    def estimate(self, x, **context):
        if self.training:
            self.rows.append(x[:, 0].tolist())
        return super().estimate(x)


def test_a_tensor_is_shuffled_every_row_once_per_epoch():
    x = torch.arange(10.0, dtype=torch.float64).unsqueeze(1).expand(10, X_DIM)  # row i holds i
    runs = []
    for _ in range(2):
        loss = RowRecorder()
        Trainer(loss, learning_rate=0.0, batch_size=4, max_epochs=2, seed=3, **QUIET).fit(x)
        runs.append(loss.rows)
    epoch1, epoch2 = runs[0][:3], runs[0][3:]
    assert [len(b) for b in epoch1] == [4, 4, 2]
    assert sorted(sum(epoch1, [])) == sorted(sum(epoch2, [])) == list(range(10))
    assert epoch1 != epoch2 and runs[0] == runs[1]  # reshuffled every epoch; the seed repeats it


def test_collate_and_dataset_adapters_pad_and_trim():
    seqs = [torch.full((t, 2), float(t)) for t in (3, 1, 2)]
    batch = collate_sequences(seqs)
    assert isinstance(batch, SequenceBatch) and batch.inputs is None
    assert batch.x.shape == (3, 3, 2) and batch.lengths.tolist() == [3, 1, 2]
    assert batch.x[1, 1:].abs().sum() == 0 and batch.x[2, :2].eq(2.0).all()
    # A whole padded split becomes a Dataset of its rows cut to their lengths.
    rows = as_dataset(batch, "data")
    assert [tuple(rows[i].shape) for i in range(3)] == [(3, 2), (1, 2), (2, 2)]
    assert torch.equal(
        collate_sequences([rows[2], rows[1]]).x, torch.stack([seqs[2], torch.cat([seqs[1], seqs[1] * 0])])
    )
    # (x, inputs) items collate their inputs too.
    pairs = collate_sequences([(s, s[:, :1] + 1) for s in seqs])
    assert pairs.inputs.shape == (3, 3, 1) and pairs.inputs[1, 1:].abs().sum() == 0
    with pytest.raises(
        ValueError, match=r"sequences\[1\] has shape \[2, 3\], but sequences\[0\] has \[2, 2\]"
    ):
        SequenceDataset([torch.zeros(2, 2), torch.zeros(2, 3)])
    with pytest.raises(TypeError, match="torch.as_tensor"):
        as_dataset(np.zeros((3, 2)), "data")
    with pytest.raises(TypeError, match="Dataset or DataLoader"):
        as_dataset(3, "data")


# --------------------------------------------------------------------------- misc
def test_callbacks_are_called_and_can_stop_training():
    events = []

    class Recorder(Callback):
        def on_fit_start(self, trainer):
            events.append("start")

        def on_log(self, trainer, record):
            events.append(("log", record["step"]))

        def on_evaluate(self, trainer, step, value):
            events.append(("eval", step))

        def on_epoch_end(self, trainer, epoch):
            events.append(("epoch", epoch))

        def on_step_end(self, trainer, step):
            if step == 7:
                trainer.stop_training = True

        def on_fit_end(self, trainer):
            events.append("end")

    _, x = _data(24)
    trainer = Trainer(
        _iwae(), batch_size=8, max_steps=100, log_every=2, eval_every=4, callbacks=[Recorder()], **QUIET
    )
    trainer.fit(x, valid_data=x)
    assert trainer.stop_reason_ == "callback" and trainer.n_iter_ == 7
    # 3 batches per epoch; the row of an evaluation is logged before on_evaluate runs.
    expected = ["start", ("log", 2), ("epoch", 1), ("log", 4), ("eval", 4), ("log", 6), ("epoch", 2)]
    assert events == [*expected, ("log", 7), "end"]


def test_settings_are_checked_at_fit():
    _, x = _data(8)
    with pytest.raises(ValueError, match="max_steps or max_epochs"):
        Trainer(_iwae(), **QUIET).fit(x)
    with pytest.raises(ValueError, match="optimizer in"):
        Trainer(_iwae(), optimizer="lbfgs", max_steps=1, **QUIET).fit(x)
    with pytest.raises(ValueError, match="log_format"):
        Trainer(_iwae(), log_format="xml", max_steps=1, **QUIET).fit(x)
    with pytest.raises(ValueError, match="batch_size >= 1, got 0"):
        Trainer(_iwae(), batch_size=0, max_steps=1, **QUIET).fit(x)
    with pytest.raises(TypeError, match="Callback"):
        Trainer(_iwae(), max_steps=1, callbacks=[print], **QUIET).fit(x)
    trainer = Trainer(_iwae(), optimizer=torch.optim.SGD, optimizer_kwargs={"momentum": 0.5}, max_steps=1)
    assert isinstance(trainer.fit(x).optimizer_, torch.optim.SGD)  # progress bar on, too


def test_set_seed_repeats_every_generator():
    set_seed(11)
    first = (torch.rand(3), np.random.rand(3), random.random())
    set_seed(11)
    assert torch.equal(torch.rand(3), first[0])
    assert np.array_equal(np.random.rand(3), first[1])
    assert random.random() == first[2]
    with pytest.raises(TypeError, match="int"):
        set_seed(1.5)


def test_a_checkpoint_older_than_a_loss_buffer_resumes(tmp_path):
    # FIVO gained running-baseline buffers; runs checkpointed before them must still resume.
    from bbvae.losses import FIVO
    from bbvae.sequential import VRNN

    def make():
        torch.manual_seed(0)
        model = VRNN(5, latent_size=3, hidden_size=4)
        return FIVO(model.inf_net, model.gen_model, n_particles=2)

    seqs = [(torch.rand(6, 5) < 0.4).float() for _ in range(8)]
    common = dict(batch_size=4, logdir=tmp_path, ema_decay=0.9, checkpoint_every=2, **QUIET)
    Trainer(make(), max_steps=2, **common).fit(seqs)
    path = tmp_path / "last.pt"
    state = torch.load(path, weights_only=False)
    added = [k for k in state["model_state"] if "score_rate" in k]
    assert added, "FIVO no longer has the buffers this test is about"
    for key in added:  # as a checkpoint written before the buffers existed
        del state["model_state"][key], state["param_shapes"][key]
    torch.save(state, path)
    trainer = Trainer(make(), max_steps=4, **common).fit(seqs, resume=True)
    assert trainer.n_iter_ == 4
    state["param_shapes"]["other"] = [2]  # a truly different model is still refused
    torch.save(state, path)
    with pytest.raises(CheckpointError, match="other: \\[2\\] there, absent here"):
        Trainer(make(), max_steps=6, **common).fit(seqs, resume=True)
