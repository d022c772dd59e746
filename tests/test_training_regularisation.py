"""Learning-rate schedules, weight averaging and model selection in the Trainer (issue 16).

Each option must change what it should and nothing else: schedules follow torch's schedulers and
survive resumption bit-exactly, the moving average equals a hand-computed one, validation and
best-checkpoint selection see the averaged weights, and restore_best gives the best step's model.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from bbvae.losses import IWAE
from bbvae.models import GaussianInfNet, LinearGaussianGenModel
from bbvae.training import Callback, Trainer
from bbvae.training.averaging import ParameterAverage

X_DIM, Z_DIM = 4, 2
QUIET = dict(progress=False)


def _iwae(seed=1, k=3):
    torch.manual_seed(seed)
    return IWAE(GaussianInfNet(X_DIM, Z_DIM).double(), LinearGaussianGenModel(Z_DIM, X_DIM).double(), k)


def _data(n, seed=0):
    torch.manual_seed(seed)
    return LinearGaussianGenModel(Z_DIM, X_DIM).double().sample(n)[0]


def _lrs(tmp_path) -> list[float]:
    with open(tmp_path / "log.jsonl") as f:
        return [json.loads(line)["lr"] for line in f]


# ------------------------------------------------------------------------------ schedules
def test_cosine_with_warmup_follows_torch_and_is_logged(tmp_path):
    x = _data(32)
    trainer = Trainer(
        _iwae(), learning_rate=0.1, batch_size=8, max_steps=12, log_every=1, lr_schedule="cosine",
        warmup_steps=4, warmup_start_factor=0.25, logdir=tmp_path, **QUIET,
    ).fit(x)
    # The reference: the same torch schedulers driven by hand on a dummy optimizer.
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.Adam([param], lr=0.1)
    warm = torch.optim.lr_scheduler.LinearLR(opt, start_factor=0.25, total_iters=4)
    cos = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=8)
    sched = torch.optim.lr_scheduler.SequentialLR(opt, [warm, cos], milestones=[4])
    expected = []
    for _ in range(12):
        opt.step()
        sched.step()
        expected.append(opt.param_groups[0]["lr"])
    assert _lrs(tmp_path) == pytest.approx(expected, rel=1e-12)
    assert expected[3] == pytest.approx(0.1) and expected[-1] == pytest.approx(0.0, abs=1e-12)
    assert trainer.optimizer_.param_groups[0]["lr"] == pytest.approx(expected[-1], abs=1e-12)


def test_plateau_lowers_the_rate_when_validation_stalls():
    x = _data(32)
    bounds = iter([-5.0, -4.0, -4.5, -4.4, -4.3, -3.0, -3.5, -3.4, -3.3])

    trainer = Trainer(
        _iwae(), learning_rate=0.1, batch_size=8, max_steps=9, eval_every=1, lr_schedule="plateau",
        lr_schedule_kwargs={"factor": 0.5, "patience": 2}, evaluate_fn=lambda loss, data: next(bounds),
        **QUIET,
    )
    seen = []


    class LR(Callback):
        def on_evaluate(self, trainer, step, value):
            seen.append(trainer.optimizer_.param_groups[0]["lr"])

    trainer.callbacks = [LR()]
    trainer.fit(x, valid_data=x[:8])
    # (callbacks see each validation before the plateau rule does) bounds -5, -4 (best), then 3
    # without gain: after the third (patience 2 exceeded) the rate halves; -3.0 is a new best; three
    # more without gain halve it again.
    assert seen[:5] == [0.1] * 5 and seen[5:] == pytest.approx([0.05] * 4)
    assert trainer.optimizer_.param_groups[0]["lr"] == pytest.approx(0.025)


def test_bad_schedule_settings_are_named():
    x = _data(16)
    with pytest.raises(ValueError, match="expected lr_schedule in"):
        Trainer(_iwae(), max_steps=2, lr_schedule="linear", **QUIET).fit(x)
    with pytest.raises(ValueError, match="lr_schedule='cosine' anneals over max_steps"):
        Trainer(_iwae(), max_epochs=2, lr_schedule="cosine", **QUIET).fit(x)
    with pytest.raises(ValueError, match="lr_schedule='step' needs"):
        Trainer(_iwae(), max_steps=2, lr_schedule="step", **QUIET).fit(x)
    with pytest.raises(ValueError, match=r"expected ema_decay in \(0, 1\)"):
        Trainer(_iwae(), max_steps=2, ema_decay=1.0, **QUIET).fit(x)
    with pytest.raises(ValueError, match="expected warmup_steps"):
        Trainer(_iwae(), max_steps=2, warmup_steps=-1, **QUIET).fit(x)


@pytest.mark.parametrize("schedule", ["cosine", "plateau", "step"])
def test_schedules_and_averages_survive_resumption_bit_exactly(tmp_path, schedule):
    x, valid = _data(24), _data(8, seed=3)
    kwargs = {"step": {"step_size": 3, "gamma": 0.7}, "plateau": {"patience": 0, "factor": 0.5}}.get(schedule)
    common = dict(
        learning_rate=0.05, batch_size=8, eval_every=2, checkpoint_every=5, log_every=1, seed=3,
        lr_schedule=schedule, lr_schedule_kwargs=kwargs, warmup_steps=2, ema_decay=0.8, **QUIET,
    )
    full = _iwae()
    full_trainer = Trainer(full, max_steps=17, logdir=tmp_path / "full", **common).fit(x, valid)

    class Interrupt(Callback):  # a run killed after step 10 (its last.pt is from step 10)
        def on_step_end(self, trainer, step):
            trainer.stop_training = step == 10

    part = _iwae()
    Trainer(part, max_steps=17, logdir=tmp_path / "part", callbacks=[Interrupt()], **common).fit(x, valid)
    resumed = _iwae(seed=99)
    trainer = Trainer(resumed, max_steps=17, logdir=tmp_path / "part", **common).fit(x, valid, resume=True)
    for name, value in full.state_dict().items():
        assert torch.equal(resumed.state_dict()[name], value), name
    assert trainer.valid_history_ == full_trainer.valid_history_
    assert _lrs(tmp_path / "part") == _lrs(tmp_path / "full")
    assert len(set(_lrs(tmp_path / "full"))) > 2  # the schedule did move the rate


# ----------------------------------------------------------------------- weight averaging
def test_moving_average_equals_the_hand_computed_one():
    x = _data(16)
    loss = _iwae()
    params = [p for p in loss.parameters()]
    snapshots = [[p.detach().clone() for p in params]]


    class Snap(Callback):
        def on_step_end(self, trainer, step):
            snapshots.append([p.detach().clone() for p in params])

    decay = 0.9
    trainer = Trainer(
        loss, learning_rate=0.05, batch_size=4, max_steps=30, ema_decay=decay, callbacks=[Snap()], **QUIET
    )
    trainer.optimizer = "adam"
    # fit leaves the average in the parameters: compare against the average computed by hand
    trainer.fit(x)
    expected = [s.clone() for s in snapshots[0]]
    for t, snap in enumerate(snapshots[1:]):
        d = min(decay, (1 + t) / (10 + t))
        expected = [d * e + (1 - d) * s for e, s in zip(expected, snap)]
    for p, e in zip(params, expected):
        torch.testing.assert_close(p.detach(), e, rtol=1e-12, atol=1e-12)
    assert not torch.equal(params[0].detach(), snapshots[-1][0])  # not the raw last iterate


def test_validation_scores_the_average_and_training_continues_from_the_raw_weights():
    x = _data(32)
    avg_loss, raw_loss = _iwae(), _iwae()
    Trainer(raw_loss, learning_rate=0.05, batch_size=8, max_steps=8, seed=1, **QUIET).fit(x)
    trainer = Trainer(
        avg_loss, learning_rate=0.05, batch_size=8, max_steps=8, eval_every=4, seed=1, ema_decay=0.5, **QUIET
    )
    raw_after = {}


    class Raw(Callback):
        def on_step_end(self, trainer, step):
            raw_after.update({k: v.detach().clone() for k, v in trainer.loss.state_dict().items()})

    trainer.callbacks = [Raw()]
    trainer.fit(x, valid_data=x[:8])
    # the raw iterates follow the same path as without averaging (validation swaps back exactly)
    for name, value in raw_loss.state_dict().items():
        assert torch.equal(raw_after[name], value), name
    # the last validation scored the average, which fit leaves in place
    assert trainer.evaluate(x[:8]) == trainer.valid_history_[-1]


def test_parameter_average_swaps_in_and_out():
    p = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    avg = ParameterAverage([p], decay=0.5)
    with torch.no_grad():
        p.add_(10.0)
    avg.update()  # d_0 = min(0.5, 1/10) = 0.1 -> avg = 0.1 * [1, 2] + 0.9 * [11, 12]
    torch.testing.assert_close(avg.averages[0], torch.tensor([10.0, 11.0]))
    with avg.swapped_in():
        torch.testing.assert_close(p.detach(), torch.tensor([10.0, 11.0]))
    torch.testing.assert_close(p.detach(), torch.tensor([11.0, 12.0]))


# ----------------------------------------------------------------------- model selection
def test_restore_best_returns_the_best_validation_steps_parameters(tmp_path):
    x = _data(32)
    bounds = iter([-5.0, -2.0, -3.0, -4.0])
    states = {}


    class Keep(Callback):
        def on_evaluate(self, trainer, step, value):
            states[step] = {k: v.detach().clone() for k, v in trainer.loss.state_dict().items()}

    loss = _iwae()
    trainer = Trainer(
        loss, learning_rate=0.05, batch_size=8, max_steps=8, eval_every=2, restore_best=True,
        evaluate_fn=lambda loss, data: next(bounds), callbacks=[Keep()], logdir=tmp_path, ema_decay=0.7,
        **QUIET,
    ).fit(x, valid_data=x[:8])
    assert trainer.best_step_ == 4 and trainer.best_valid_ == -2.0
    for name, value in states[4].items():  # (the averaged weights, as validated)
        assert torch.equal(loss.state_dict()[name], value), name
    assert math.isfinite(trainer.best_valid_)


def test_checkpoints_name_the_loss_class_and_older_names_still_resume(tmp_path):
    import os
    import stat

    from bbvae.checkpoint import load_checkpoint, save_checkpoint

    x = _data(16)
    Trainer(_iwae(), batch_size=8, max_steps=2, logdir=tmp_path, seed=0, **QUIET).fit(x)
    state = load_checkpoint(tmp_path / "last.pt")
    assert state["loss_class"] == "bbvae.losses.iwae.IWAE"
    mode = stat.S_IMODE(os.stat(tmp_path / "last.pt").st_mode)
    assert mode & 0o044 == 0o044 & ~_umask()  # group/other read as the umask allows, not 0600
    # a checkpoint from before the name was fixed (and before schedules existed)
    state["loss_class"] = "bbvae.losses.iwae.type"
    for key in ("lr_schedule_kwargs", "warmup_steps", "warmup_start_factor"):
        state["config"].pop(key)
    save_checkpoint(state, tmp_path / "last.pt")
    trainer = Trainer(_iwae(), batch_size=8, max_steps=4, logdir=tmp_path, seed=0, **QUIET)
    assert trainer.fit(x, resume=True).n_iter_ == 4
    state["loss_class"] = "bbvae.losses.elbo.ELBO"
    save_checkpoint(state, tmp_path / "last.pt")
    with pytest.raises(Exception, match="loss bbvae.losses.elbo.ELBO there, bbvae.losses.iwae.IWAE here"):
        Trainer(_iwae(), batch_size=8, max_steps=6, logdir=tmp_path, seed=0, **QUIET).fit(x, resume=True)


def _umask() -> int:
    import os

    mask = os.umask(0)
    os.umask(mask)
    return mask
