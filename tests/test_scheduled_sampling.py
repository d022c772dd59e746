"""Scheduled sampling (bbvae.sequential.scheduled): exactness at eps = 1, free running at eps = 0,
the schedules' formulas, the mixing frequency, the Trainer / SequenceModel / CLI settings, resume."""

from __future__ import annotations

import json
import math

import pytest
import torch

from bbvae.cli import main
from bbvae.losses import IWAE
from bbvae.losses.fivo import FIVO
from bbvae.sequential import RNN, SRNN, VRNN, IndependentVAE, SequenceModel, run_particles
from bbvae.sequential.scheduled import (
    ScheduledSampling,
    parse_scheduled_sampling,
    set_scheduled_sampling,
)
from bbvae.training import Trainer

MODELS = (RNN, VRNN, SRNN, IndependentVAE)
D, B, T, K = 5, 6, 7, 3


def make(cls, seed=0, observation="bernoulli", input_size=0, **kw):
    torch.manual_seed(seed)
    size = {"hidden_size": 8} if cls is RNN else {"latent_size": 4, "hidden_size": 6}
    obs_dim = 4 if observation == "categorical" else D
    return cls(obs_dim, observation=observation, input_size=input_size, **size, **kw)


def data(seed=1, observation="bernoulli"):
    g = torch.Generator().manual_seed(seed)
    if observation == "categorical":
        x = torch.randint(0, 4, (B, T), generator=g)
    else:
        x = (torch.rand(B, T, D, generator=g) < 0.4).float()
    return x, torch.tensor([7, 3, 5, 1, 7, 6])


def loss_and_grads(model, loss_cls, x, lengths, seed=2):
    torch.manual_seed(seed)
    loss = loss_cls(model.inf_net, model.gen_model, K)
    value = loss(x, lengths=lengths)
    value.backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    return value.detach(), grads


# ------------------------------------------------------------------------------ exactness
@pytest.mark.parametrize("cls", MODELS)
@pytest.mark.parametrize("loss_cls", [IWAE, FIVO])
def test_teacher_forcing_eps_one_gives_todays_numbers_bitwise(cls, loss_cls):
    x, lengths = data()
    plain = make(cls)
    scheduled = make(cls).set_scheduled_sampling("linear:k=0.01")  # eps_0 = 1
    assert scheduled.scheduled_sampling.eps() == 1.0
    v0, g0 = loss_and_grads(plain, loss_cls, x, lengths)
    v1, g1 = loss_and_grads(scheduled, loss_cls, x, lengths)
    assert torch.equal(v0, v1)
    assert all(torch.equal(a, b) for a, b in zip(g0, g1))
    # one step later eps < 1: the fed-back samples change the numbers
    scheduled.scheduled_sampling.set_training_step(50)
    v2, _ = loss_and_grads(scheduled, loss_cls, x, lengths)
    assert not torch.equal(v0, v2)


def test_trainer_with_eps_one_reproduces_a_plain_run_bitwise():
    x, lengths = data()
    from bbvae.data.batching import SequenceBatch

    batch = SequenceBatch(x, lengths)
    runs = []
    for spec in (None, "constant:eps=1"):
        model = make(VRNN)
        trainer = Trainer(
            FIVO(model.inf_net, model.gen_model, K), max_steps=4, batch_size=3, progress=False,
            log_every=1, seed=3, scheduled_sampling=spec,
        )  # fmt: skip
        trainer.fit(batch)
        runs.append((trainer.loss_history_, [p.detach().clone() for p in model.parameters()]))
    assert runs[0][0] == runs[1][0]
    assert all(torch.equal(a, b) for a, b in zip(runs[0][1], runs[1][1]))


@pytest.mark.parametrize("cls", MODELS)
@pytest.mark.parametrize("observation,input_size", [("bernoulli", 0), ("categorical", 2)])
def test_the_per_step_path_with_all_truth_equals_teacher_forcing(cls, observation, input_size):
    """The scheduled path, forced on with eps = 1, scores the same latents as teacher forcing does."""
    x, lengths = data(observation=observation)
    inputs = torch.randn(B, T, input_size) if input_size else None
    model = make(cls, observation=observation, input_size=input_size)
    torch.manual_seed(4)
    tf = run_particles(model, x, K, lengths=lengths, inputs=inputs)
    model.set_scheduled_sampling("constant:eps=1")
    model.scheduled_sampling._force = True
    ss = run_particles(model, x, K, lengths=lengths, inputs=inputs, z=tf.z)
    assert model.feedback_truth_.all()
    torch.testing.assert_close(ss.log_p, tf.log_p, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ss.log_q, tf.log_q, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------- feedback
def _record(model):
    """Record the model's own draws (observation.sample) and what the recurrence is fed (encoder)."""
    drawn, fed = [], []
    sample = model.observation.sample

    def recording_sample(params):
        out = sample(params)
        drawn.append(out.clone())
        return out

    model.observation.sample = recording_sample
    model.encoder.register_forward_hook(lambda mod, args, out: fed.append(args[0].detach().clone()))
    return drawn, fed


@pytest.mark.parametrize("cls", MODELS)
def test_eps_zero_feeds_back_the_model_own_samples(cls):
    x, lengths = data()
    model = make(cls).set_scheduled_sampling("constant:eps=0")
    drawn, fed = _record(model)
    run_particles(model, x, K, lengths=lengths)
    per_step = [f for f in fed if f.dim() == 3 and f.shape[:2] == (B, K)]  # one per step; the rest: encode
    assert len(per_step) == T and len(drawn) == T
    assert not model.feedback_truth_.any()
    for fed_t, drawn_t in zip(per_step, drawn):
        assert drawn_t.shape == (B, K, D)
        assert torch.equal(fed_t, drawn_t)  # Bernoulli features are the 0/1 values themselves
    # the draws are the model's own: different particles draw differently
    assert not all(torch.equal(d[:, 0], d[:, 1]) for d in drawn)


def test_mixed_feedback_takes_the_truth_exactly_where_decided():
    x, lengths = data()
    model = make(VRNN).set_scheduled_sampling("constant:eps=0.5")
    drawn, fed = _record(model)
    run_particles(model, x, K, lengths=lengths)
    per_step = [f for f in fed if f.dim() == 3 and f.shape[:2] == (B, K)]
    truth = model.feedback_truth_  # [B, T]
    x = x * (torch.arange(T) < lengths.unsqueeze(1)).unsqueeze(-1)  # the model zeroes the padding
    for t, (fed_t, drawn_t) in enumerate(zip(per_step, drawn)):
        expected = torch.where(truth[:, t, None, None], x[:, t].unsqueeze(1), drawn_t)
        assert torch.equal(fed_t, expected)
    assert truth.any() and not truth.all()


def test_decisions_per_sequence_and_step_match_eps_within_the_standard_error():
    eps, batch, n_steps = 0.3, 200, 40
    g = torch.Generator().manual_seed(5)
    x = (torch.rand(batch, n_steps, D, generator=g) < 0.4).float()
    model = make(RNN).set_scheduled_sampling(f"constant:eps={eps}")
    torch.manual_seed(6)
    run_particles(model, x, 1)
    truth = model.feedback_truth_.float()  # [batch, T]
    n = truth.numel()
    se = math.sqrt(eps * (1 - eps) / n)
    assert abs(float(truth.mean()) - eps) < 4 * se
    # decided per sequence and per step: neither whole columns nor whole rows are shared
    assert float(truth.std(dim=0).min()) > 0 and float(truth.std(dim=1).min()) > 0


def test_evaluation_is_teacher_forced():
    x, lengths = data()
    plain, scheduled = make(SRNN), make(SRNN).set_scheduled_sampling("constant:eps=0")
    for mode in ("eval", "no_grad"):
        outs = []
        for model in (plain, scheduled):
            torch.manual_seed(7)
            if mode == "eval":
                model.eval()
                outs.append(run_particles(model, x, K, lengths=lengths).log_p)
                model.train()
            else:
                with torch.no_grad():
                    outs.append(run_particles(model, x, K, lengths=lengths).log_p)
        assert torch.equal(outs[0], outs[1])


def test_estimators_that_rescore_the_latents_are_refused():
    x, lengths = data()
    model = make(VRNN).set_scheduled_sampling("constant:eps=0.5")
    with pytest.raises(ValueError, match="re-scored"):
        IWAE(model.inf_net, model.gen_model, K, estimator="dreg")(x, lengths=lengths)
    IWAE(model.inf_net, model.gen_model, K)(x, lengths=lengths).backward()  # reparam: fine


# ------------------------------------------------------------------------------ schedules
@pytest.mark.parametrize("step", [0, 1, 7, 100, 5000, 10**7])
def test_schedules_follow_the_formulas(step):
    i = step
    assert ScheduledSampling("linear", k=1e-3).eps(i) == max(0.0, 1 - 1e-3 * i)
    assert ScheduledSampling("linear", k=1e-3, c=0.9, eps_min=0.2).eps(i) == max(0.2, 0.9 - 1e-3 * i)
    assert ScheduledSampling("exponential", k=0.99).eps(i) == pytest.approx(0.99**i, rel=1e-12, abs=0)
    expected = 50 / (50 + math.exp(i / 50)) if i / 50 < 700 else 0.0
    assert ScheduledSampling("inverse_sigmoid", k=50).eps(i) == pytest.approx(expected, rel=1e-12, abs=1e-300)
    assert ScheduledSampling("constant", eps=0.25).eps(i) == 0.25
    schedule = ScheduledSampling("inverse_sigmoid", k=50)
    schedule.set_training_step(i)
    assert schedule.eps() == schedule.eps(i)


def test_specs_from_strings_dicts_and_instances():
    s = parse_scheduled_sampling("inverse_sigmoid:k=1000", "here")
    assert (s.schedule, s.params) == ("inverse_sigmoid", {"k": 1000.0, "eps_min": 0.0})
    s = parse_scheduled_sampling({"schedule": "linear", "k": 1e-4, "eps_min": 0.1}, "here")
    assert s.params == {"k": 1e-4, "c": 1.0, "eps_min": 0.1}
    assert parse_scheduled_sampling(s, "here") is s and parse_scheduled_sampling(None, "here") is None
    assert parse_scheduled_sampling(s.spec(), "here").params == s.params


@pytest.mark.parametrize(
    "spec,message",
    [
        ("sigmoid:k=3", "expected scheduled_sampling schedule in"),
        ("linear", "'linear' needs k"),
        ("inverse_sigmoid:k=0.5", "needs k >= 1"),
        ("exponential:k=1.5", "needs 0 < k <= 1"),
        ("constant:eps=2", "needs 0 <= eps <= 1"),
        ("linear:k=1,slope=2", "unknown keyword(s) ['slope']"),
        ("linear:k=abc", "key=number"),
        ("linear:k=nan", "finite number"),
        ("Linear k", "expected scheduled_sampling like"),
        ({"k": 3}, "name its 'schedule'"),
        (0.5, "expected scheduled_sampling to be None, a spec string"),
    ],
)
def test_bad_specs_raise_naming_the_argument(spec, message):
    error = TypeError if isinstance(spec, float) else ValueError
    with pytest.raises(error, match="scheduled_sampling") as info:
        parse_scheduled_sampling(spec, "here")
    assert message in str(info.value)


def test_bad_settings_are_refused_by_model_trainer_and_estimator():
    model = make(VRNN)
    with pytest.raises(ValueError, match="VRNN.set_scheduled_sampling: .*scheduled_sampling"):
        model.set_scheduled_sampling("linear")
    x, lengths = data()
    trainer = Trainer(FIVO(model.inf_net, model.gen_model, K), max_steps=1, scheduled_sampling="nope:k=1")
    with pytest.raises(ValueError, match="Trainer: expected scheduled_sampling schedule"):
        trainer.fit(x)
    with pytest.raises(ValueError, match="SequenceModel: scheduled_sampling .linear. needs k > 0"):
        SequenceModel(scheduled_sampling="linear:k=-1", max_steps=1).fit([x[0]])
    with pytest.raises(ValueError, match="scheduled_sampling needs a model that feeds"):
        SequenceModel(model="ghmm", scheduled_sampling="linear:k=1", max_steps=1).fit([torch.randn(5, 2)])
    with pytest.raises(ValueError, match="holds none"):
        set_scheduled_sampling(torch.nn.Linear(2, 2), "linear:k=1")


# --------------------------------------------------------------------- trainer and resume
def _fit(model, logdir, max_steps, resume=False):
    x, lengths = data()
    from bbvae.data.batching import SequenceBatch

    trainer = Trainer(
        IWAE(model.inf_net, model.gen_model, K), max_steps=max_steps, batch_size=3, progress=False,
        log_every=1, checkpoint_every=2, seed=8, logdir=logdir, scheduled_sampling="linear:k=0.2",
    )  # fmt: skip
    return trainer.fit(SequenceBatch(x, lengths), resume=resume)


def test_the_schedule_follows_the_trainer_step_and_resumes_exactly(tmp_path):
    whole = make(VRNN)
    straight = _fit(whole, tmp_path / "a", 5)
    assert whole.scheduled_sampling.step == 4  # the last step ran at i = 4 (eps = 0.2)
    assert json.dumps(straight.config()["scheduled_sampling"]) == '"linear:k=0.2"'

    first = make(VRNN)
    _fit(first, tmp_path / "b", 2)
    assert first.scheduled_sampling.step == 1
    state = torch.load(tmp_path / "b" / "last.pt", weights_only=False)["model_state"]
    key = [k for k in state if k.endswith("scheduled_sampling._extra_state")]
    assert key and int(state[key[0]]) == 1

    again = make(VRNN, seed=99)  # other initial weights: the checkpoint restores everything
    resumed = _fit(again, tmp_path / "b", 5, resume=True)
    assert again.scheduled_sampling.step == 4
    assert resumed.loss_history_ == straight.loss_history_
    assert all(torch.equal(a, b) for a, b in zip(whole.parameters(), again.parameters()))


def test_sequence_model_trains_with_scheduled_sampling():
    g = torch.Generator().manual_seed(9)
    seqs = [(torch.rand(n, D, generator=g) < 0.3).float() for n in (6, 4, 7, 5)]
    est = SequenceModel(
        model="srnn", latent_size=3, hidden_size=4, max_steps=3, batch_size=2, random_state=0,
        scheduled_sampling={"schedule": "exponential", "k": 0.5},
    ).fit(seqs)  # fmt: skip
    assert est.model_.scheduled_sampling.step == 2 and est.model_.scheduled_sampling.eps() == 0.25
    assert math.isfinite(est.score(seqs))
    assert est.get_params()["scheduled_sampling"] == {"schedule": "exponential", "k": 0.5}


def test_cli_flag_trains_and_bad_flags_report_the_option(tmp_path, capsys):
    logdir = tmp_path / "run"
    tiny = ["--latent-size", "3", "--hidden-size", "4", "--max-steps", "2", "--max-length", "5"]
    argv = ["train", "--logdir", str(logdir), *tiny, "--seed", "0", "--threads", "1"]
    assert main([*argv, "--scheduled-sampling", "inverse_sigmoid:k=10"]) == 0
    settings = json.loads((logdir / "config.json").read_text())["settings"]
    assert settings["scheduled_sampling"] == "inverse_sigmoid:k=10"
    state = torch.load(logdir / "last.pt", weights_only=False)["model_state"]
    assert any(k.endswith("scheduled_sampling._extra_state") for k in state)
    assert main(["eval", "--logdir", str(logdir), "--split", "valid"]) == 0
    capsys.readouterr()
    bad = ["train", "--logdir", str(tmp_path / "bad"), "--scheduled-sampling", "inverse_sigmoid:k=0"]
    assert main(bad) == 2
    err = capsys.readouterr().err
    assert err.startswith("bbvae: error: argument --scheduled-sampling:") and "k >= 1" in err
