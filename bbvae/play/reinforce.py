"""Model-free REINFORCE on the real environment: the baseline the world-model agent must beat.

Each update collects ``steps_per_update`` real steps with the current policy (whole episodes, the last
one cut at the budget), and takes one gradient step of the score-function estimator
``sum_t grad log pi(a_t | s_t) (G_t - V(s_t))`` with discounted reward-to-go ``G_t``, a learned
state-value baseline ``V`` (least squares on ``G_t``) and advantages normalised over the batch;
plus an entropy bonus. Episodes cut by the time limit or by the budget are treated like terminated
ones (no bootstrapping), as plain REINFORCE does.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch

from bbvae.play.agent import Policy, discounted_returns, value_baseline
from bbvae.play.env import mean_return, run_episodes


@dataclass
class ReinforceConfig:
    """Settings of :func:`run_reinforce`."""

    seed: int = 0
    env_id: str = "CartPole-v1"
    max_real_steps: int = 30_000
    steps_per_update: int = 2_000
    gamma: float = 0.99
    learning_rate: float = 1e-2
    entropy_weight: float = 0.01
    eval_every_steps: int = 1_000
    eval_episodes: int = 10
    snapshot_steps: tuple = ()  # also evaluate on snapshot_episodes when first reaching these step counts
    snapshot_episodes: int = 100
    policy_hidden: tuple = field(default=(64, 64))


@dataclass
class ReinforceResult:
    """``history`` rows: ``real_steps``, ``eval_return``, ``collected_return``, ``seconds``; the policy;
    ``snapshots``: ``{requested steps: (steps reached, mean return over snapshot_episodes)}``."""

    history: list
    policy: Policy
    config: dict
    snapshots: dict


def run_reinforce(config: ReinforceConfig, log: Callable[[dict], None] | None = None) -> ReinforceResult:
    """Train a policy with REINFORCE for ``max_real_steps`` real steps."""
    torch.manual_seed(config.seed)
    t0 = time.perf_counter()
    obs_scale = torch.tensor([0.1, 0.5, 0.1, 0.8])  # rough CartPole state scales (as the world model's)
    policy = Policy(4, 2, config.policy_hidden, obs_scale=obs_scale)
    baseline = value_baseline(4, config.policy_hidden, obs_scale=obs_scale)
    optimizer = torch.optim.Adam([*policy.parameters(), *baseline.parameters()], lr=config.learning_rate)
    real_steps, next_eval, history, update, snapshots = 0, 0, [], 0, {}
    pending = sorted(config.snapshot_steps)
    while real_steps < config.max_real_steps:
        budget = min(config.steps_per_update, config.max_real_steps - real_steps)
        episodes = run_episodes(
            policy.act,
            10_000,
            seed=config.seed * 1_000_003 + real_steps,
            max_steps=budget,
            n_envs=1,
            env_id=config.env_id,
        )
        real_steps += sum(len(e) for e in episodes)
        states = torch.cat([e.states[:-1] for e in episodes])  # [N, obs_dim]
        actions = torch.cat([e.actions for e in episodes])
        to_go = torch.cat([discounted_returns(e.rewards[None], config.gamma)[0] for e in episodes])
        logits = policy(states)
        log_probs = torch.log_softmax(logits, -1)
        value = baseline(states).squeeze(-1)
        advantage = to_go - value.detach()
        advantage = (advantage - advantage.mean()) / (advantage.std() + 1e-8)
        entropy = -(log_probs.exp() * log_probs).sum(-1).mean()
        surrogate = -(log_probs.gather(-1, actions[:, None]).squeeze(-1) * advantage).mean()
        value_loss = (value - to_go).square().mean() / to_go.square().mean().clamp_min(1.0)
        loss = surrogate + value_loss - config.entropy_weight * entropy
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        update += 1
        while pending and real_steps >= pending[0]:
            seed = 2 * 10**9 + config.seed * 10_000
            snapshot = run_episodes(policy.act, config.snapshot_episodes, seed=seed, env_id=config.env_id)
            snapshots[pending.pop(0)] = (real_steps, mean_return(snapshot))
        if real_steps >= next_eval or real_steps >= config.max_real_steps:
            next_eval += config.eval_every_steps
            evaluation = run_episodes(
                policy.act,
                config.eval_episodes,
                seed=10**9 + config.seed * 10_000 + update,
                env_id=config.env_id,
            )
            row = {
                "real_steps": real_steps,
                "eval_return": mean_return(evaluation),
                "collected_return": mean_return(episodes),
                "seconds": time.perf_counter() - t0,
            }
            history.append(row)
            if log is not None:
                log(row)
    return ReinforceResult(history, policy, asdict(config), snapshots)
