"""bbvae.play: the world model's pieces against exact answers, and the whole Dyna loop on a tiny budget."""

import os

import pytest
import torch
from torch.distributions import Bernoulli, Normal
from torch.nn import functional as F

from bbvae.play import (
    DynaConfig,
    Episode,
    Policy,
    ReinforceConfig,
    TransitionObservation,
    WorldModel,
    discounted_returns,
    imagine,
    open_loop_error,
    policy_loss,
    run_dyna,
    run_reinforce,
    start_states,
)

if not os.environ.get("CI"):  # under CI the dev extra installs gymnasium: missing is a failure
    pytest.importorskip("gymnasium", reason="bbvae[play] (gymnasium) not installed")


def _episode(n: int, terminated: bool, seed: int) -> Episode:
    g = torch.Generator().manual_seed(seed)
    states = 0.05 * torch.randn(n + 1, 4, generator=g).cumsum(0)
    actions = torch.randint(0, 2, (n,), generator=g)
    return Episode(states, actions, torch.ones(n), terminated)


@pytest.mark.parametrize("kind", ["vrnn", "srnn"])
def test_imagine_step_draws_what_generate_step_draws(kind):
    """Same random stream, same draws: imagine_step is generate_step with a gradient path."""
    torch.manual_seed(0)
    world = WorldModel(model=kind, latent_size=3, hidden_size=8, fc_hidden_sizes=(8,), encoded_size=4)
    s_prev = torch.randn(5, 4)
    action = F.one_hot(torch.tensor([0, 1, 1, 0, 1]), 2).float()
    state = world.model.generate_init(5, 1, s_prev)
    torch.manual_seed(1)
    ref_state, ref_x, ref_z = world.model.generate_step(state, world.inputs(s_prev, action)[:, None])
    torch.manual_seed(1)
    new_state, s, reward, done_logit, x = world.imagine_step(state, s_prev, action)
    torch.testing.assert_close(x, ref_x)
    torch.testing.assert_close(s, ref_x[:, 0, :4] * world.state_scale)
    for key in ref_state:
        torch.testing.assert_close(new_state[key], ref_state[key])


@pytest.mark.parametrize("kind", ["vrnn", "srnn"])
def test_residual_decoder_adds_the_previous_state(kind):
    """With a zero network and tiny noise, the imagined next state is the previous one."""
    torch.manual_seed(0)
    world = WorldModel(
        model=kind, latent_size=3, hidden_size=8, fc_hidden_sizes=(8,), encoded_size=4, min_scale=1e-6
    )
    last = world.model.decoder.net[-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.zero_()
        last.bias[5:10] = -30.0  # params [loc (5), raw scale (5), logit]: scales -> min_scale
    s_prev = torch.randn(6, 4)
    state = world.model.generate_init(6, 1, s_prev)
    _, s, _, _, _ = world.imagine_step(state, s_prev, F.one_hot(torch.arange(6) % 2, 2).float())
    torch.testing.assert_close(s, s_prev, atol=1e-5, rtol=0)


def test_transition_log_prob_is_gaussian_plus_bernoulli():
    torch.manual_seed(0)
    obs = TransitionObservation(4)
    params = torch.randn(3, 2, obs.param_size)
    x = torch.cat([torch.randn(3, 2, 5), (torch.rand(3, 2, 1) < 0.5).float()], -1)
    dist = obs.distribution(params)
    loc, raw, logit = params.split([5, 5, 1], -1)
    scale = F.softplus(raw + 0.25) + obs.min_scale
    state = x[..., :4]
    full_logit = logit.squeeze(-1) + obs.termination(torch.cat([state, state.abs()], -1)).squeeze(-1)
    expected = Normal(loc, scale).log_prob(x[..., :5]).sum(-1) + Bernoulli(logits=full_logit).log_prob(
        x[..., 5]
    )
    torch.testing.assert_close(dist.log_prob(x), expected)
    assert dist.sample().shape == (3, 2, 6)


def test_episode_tensors_follow_the_documented_layout():
    world = WorldModel()
    ep = _episode(4, True, 0)
    x, u = world.episode_tensors(ep)
    assert x.shape == (5, 6) and u.shape == (5, 6)
    torch.testing.assert_close(x[:, :4], ep.states)
    assert x[:, 4].tolist() == [0, 1, 1, 1, 1] and x[:, 5].tolist() == [0, 0, 0, 0, 1]
    assert u[0].abs().sum() == 0
    torch.testing.assert_close(u[1:, :2], F.one_hot(ep.actions, 2).float())
    torch.testing.assert_close(u[1:, 2:], ep.states[:-1])


def test_start_states_are_real_non_terminal_states():
    episodes = [_episode(3, True, 0), _episode(5, False, 1)]
    prev, prev_a, s, first = start_states(episodes, 400, torch.Generator().manual_seed(0))
    pool = {tuple(row.tolist()) for row in torch.cat([episodes[0].states[:-1], episodes[1].states])}
    assert {tuple(row.tolist()) for row in s} == pool  # every usable state drawn, terminal s_3 never
    for p, a, x, f in zip(prev, prev_a, s, first):
        for e in episodes:
            hit = (e.states == x).all(1).nonzero()
            if len(hit):
                k = int(hit[0])
                assert bool(f) == (k == 0)
                if k > 0:
                    assert torch.equal(p, e.states[k - 1]) and int(a) == int(e.actions[k - 1])


def test_discounted_returns_match_a_loop():
    torch.manual_seed(0)
    r = torch.rand(3, 7)
    expected = torch.zeros_like(r)
    acc = torch.zeros(3)
    for t in reversed(range(7)):
        acc = r[:, t] + 0.9 * acc
        expected[:, t] = acc
    torch.testing.assert_close(discounted_returns(r, 0.9), expected)


@pytest.mark.parametrize("estimator", ["score", "pathwise"])
def test_imagined_rollouts_are_batched_and_alive_is_a_survival_probability(estimator):
    torch.manual_seed(0)
    world = WorldModel(latent_size=3, hidden_size=8, fc_hidden_sizes=(8,), encoded_size=4)
    policy = Policy(hidden_sizes=(8,))
    s = 0.05 * torch.randn(16, 4)
    state = world.filter_start(s, torch.zeros(16, dtype=torch.long), s, torch.ones(16, dtype=torch.bool))
    rollout = imagine(world, policy, (state, s), 6, estimator)
    assert rollout.states.shape == (16, 7, 4) and rollout.alive.shape == (16, 6)
    assert torch.all(rollout.alive[:, 0] == 1) and torch.all(rollout.alive.diff(dim=1) <= 0)
    baseline = Policy(4, 1, (8,))
    loss, stats = policy_loss(rollout, estimator, 0.9, baseline)
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in policy.parameters())


def test_whole_dyna_loop_runs_on_a_tiny_budget():
    """Collect, fit (ELBO/IWAE/FIVO), imagine, evaluate: everything runs; no claim of solving the game."""
    for loss, estimator in (("elbo", "score"), ("fivo", "pathwise")):
        config = DynaConfig(
            max_real_steps=300,
            initial_steps=150,
            steps_per_iteration=150,
            n_iterations=2,
            latent_size=2,
            hidden_size=8,
            fc_hidden_sizes=(8,),
            window=8,
            model_loss=loss,
            model_samples=2,
            model_steps=3,
            estimator=estimator,
            policy_updates=2,
            batch_size=8,
            horizon=5,
            eval_episodes=2,
            policy_hidden=(8,),
        )
        result = run_dyna(config)
        assert [row["real_steps"] for row in result.history] == [150, 300]
        assert sum(len(e) for e in result.episodes) == 300
        scores = result.world.log_likelihood(result.episodes[:4], n_samples=2)
        assert set(scores) == {"elbo", "iwae", "fivo"} and all(v == v for v in scores.values())
    errors = open_loop_error(result.world, result.episodes, horizons=(2, 5), n_samples=2)
    assert set(errors) <= {2, 5} and all(len(v["rmse"]) == 4 for v in errors.values())


def test_reinforce_respects_the_step_budget():
    result = run_reinforce(
        ReinforceConfig(
            max_real_steps=200,
            steps_per_update=100,
            eval_every_steps=100,
            eval_episodes=2,
            policy_hidden=(8,),
        )
    )
    assert result.history[-1]["real_steps"] == 200


class _Zero(torch.nn.Module):
    def forward(self, s):
        return s.new_zeros(*s.shape[:-1], 1)


def test_score_estimator_is_unbiased_against_enumerated_actions():
    """Constant-logit policy, horizon 2: E[J] = sum over the 4 action pairs of pi(a0) pi(a1) E[J | a0, a1].

    The score-function gradient (through ``policy_loss``'s autograd) must match the gradient of that sum,
    whose conditional expectations are estimated by Monte Carlo, within 4 standard errors.
    """
    torch.manual_seed(0)
    world = WorldModel(latent_size=2, hidden_size=6, fc_hidden_sizes=(6,), encoded_size=3)
    world.requires_grad_(False)
    policy = Policy(hidden_sizes=(4,))
    with torch.no_grad():
        policy.net[-1].weight.zero_()
        policy.net[-1].bias.copy_(torch.tensor([0.3, -0.2]))
    pi = torch.softmax(policy.net[-1].bias.detach(), -1)
    gamma, n = 0.8, 40_000
    s0 = torch.tensor([[0.01, -0.02, 0.03, 0.01]]).expand(n, 4)
    first = torch.ones(n, dtype=torch.bool)
    zeros = torch.zeros(n, dtype=torch.long)

    def start():
        with torch.no_grad():
            return world.filter_start(s0, zeros, s0, first), s0

    # exact gradient from enumerated actions, E[J | a0, a1] by Monte Carlo
    exact, var_exact = torch.zeros(2), torch.zeros(2)
    for a0 in range(2):
        for a1 in range(2):
            with torch.no_grad():
                state, s = start()
                state, s, r0, d0, _ = world.imagine_step(state, s, F.one_hot(torch.full((n,), a0), 2).float())
                state, s, r1, _, _ = world.imagine_step(state, s, F.one_hot(torch.full((n,), a1), 2).float())
                j = r0 + gamma * torch.sigmoid(-d0) * r1
            weight = (
                pi[a0] * pi[a1] * (F.one_hot(torch.tensor(a0), 2) + F.one_hot(torch.tensor(a1), 2) - 2 * pi)
            )
            exact += weight * j.mean()
            var_exact += weight.square() * j.var() / n
    # score-function estimate through imagine + policy_loss
    policy.zero_grad()
    rollout = imagine(world, policy, start(), 2, "score")
    loss, _ = policy_loss(rollout, "score", gamma, baseline=_Zero(), normalize=False)
    loss.backward()
    estimate = -2 * policy.net[-1].bias.grad  # surrogate = -(1/H) mean_b sum_t log pi * advantage
    with torch.no_grad():  # per-rollout gradients, for the standard error
        actions = (rollout.log_pi.exp() - pi[1]).abs() < 1e-6  # True where a_t = 1
        score = F.one_hot(actions.long(), 2).float() - pi  # [n, 2, 2]: d log pi(a_t) / d bias
        weighted = rollout.alive * rollout.rewards * gamma ** torch.arange(2.0)
        tail = weighted.flip(1).cumsum(1).flip(1)  # sum_{s >= t} gamma^s R_s
        per = (score * tail[..., None]).sum(1)  # [n, 2]
    torch.testing.assert_close(estimate, per.mean(0), rtol=1e-4, atol=1e-6)
    se = (per.var(0) / n + var_exact).sqrt()
    assert torch.all((estimate - exact).abs() < 4 * se), (estimate, exact, se)
    assert torch.all(exact.abs() > 4 * se)  # the test has power: the gradient is clearly non-zero
