"""The Dyna-style loop: collect real episodes, refit the world model, train the policy in imagination.

One iteration: (1) run the current policy in the real environment for ``steps_per_iteration`` steps
(the first iteration acts at random for ``initial_steps``); (2) refit the world model on every real
episode so far (continuing from its previous parameters); (3) take ``policy_updates`` gradient steps
on the policy, each on ``batch_size`` imagined rollouts of ``horizon`` steps started from real states
drawn uniformly from the episodes collected so far; (4) evaluate the policy on ``eval_episodes`` real
episodes (these steps are not counted: they only draw the learning curve). The loop stops when the
next iteration would exceed ``max_real_steps``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import torch

from bbvae.play.agent import Policy, imagine, policy_loss, value_baseline
from bbvae.play.env import Episode, mean_return, random_act, run_episodes
from bbvae.play.world_model import WorldModel


@dataclass
class DynaConfig:
    """Settings of :func:`run_dyna` (defaults: the CartPole benchmark)."""

    seed: int = 0
    env_id: str = "CartPole-v1"
    max_real_steps: int = 30_000  # real environment steps for training, in total
    initial_steps: int = 1_000  # random-policy steps before the first model fit
    steps_per_iteration: int = 1_000  # real steps collected with the policy per iteration
    n_iterations: int = 8  # at most this many iterations
    # world model
    model: str = "vrnn"
    latent_size: int = 8
    hidden_size: int = 64
    fc_hidden_sizes: tuple = (128,)
    window: int = 32
    model_loss: str = "elbo"
    model_samples: int = 1
    model_steps_first: int = 400  # optimizer steps of the first fit
    model_steps: int = 150  # optimizer steps of each later refit (continuing from the last parameters)
    model_batch_size: int = 64
    model_lr: float = 1e-3
    # agent
    estimator: str = "pathwise"  # "score" or "pathwise"
    policy_updates: int = 30  # per iteration
    batch_size: int = 256  # imagined rollouts per update
    horizon: int = 50
    gamma: float = 0.98
    policy_lr: float = 3e-3
    entropy_weight: float = 0.01
    temperature: float = 1.0  # Gumbel-softmax temperature (pathwise)
    clip_grad_norm: float = 1.0
    eval_episodes: int = 10
    policy_hidden: tuple = field(default=(64, 64))


@dataclass
class DynaResult:
    """What :func:`run_dyna` returns.

    Attributes:
        history: one dict per iteration: ``iteration``, ``real_steps`` (cumulative training steps),
            ``eval_return`` (mean return of the evaluation episodes), ``collected_return`` (mean
            return of the episodes collected that iteration), ``imagined_return``, ``seconds``.
        policy, world: the trained policy and world model.
        episodes: every real training episode.
    """

    history: list
    policy: Policy
    world: WorldModel
    episodes: list
    config: dict


def start_states(episodes: Sequence[Episode], n: int, generator: torch.Generator):
    """``n`` real non-terminal states drawn uniformly: ``(prev_state, prev_action, state, first)``."""
    lengths = torch.tensor([len(e) + (0 if e.terminated else 1) for e in episodes])  # usable states
    offsets = torch.cumsum(lengths, 0) - lengths
    flat = torch.randint(0, int(lengths.sum()), (n,), generator=generator)
    which = torch.searchsorted(offsets, flat, right=True) - 1
    k = flat - offsets[which]
    states = torch.cat([e.states for e in episodes])  # concatenated s_0..s_T of every episode
    actions = torch.cat([torch.cat([e.actions, e.actions.new_zeros(1)]) for e in episodes])
    base = torch.cumsum(torch.tensor([len(e) + 1 for e in episodes]), 0) - torch.tensor(
        [len(e) + 1 for e in episodes]
    )
    index = base[which] + k
    first = k == 0
    prev = torch.where(first, index, index - 1)
    return states[prev], actions[prev], states[index], first


def train_policy(
    world: WorldModel,
    policy: Policy,
    baseline,
    optimizer: torch.optim.Optimizer,
    episodes: Sequence[Episode],
    config: DynaConfig,
    generator: torch.Generator,
) -> float:
    """``config.policy_updates`` policy-gradient steps on imagined rollouts; returns the last return."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    world.requires_grad_(False)
    stats = {"return": torch.tensor(float("nan"))}
    for _ in range(config.policy_updates):
        prev, prev_a, s, first = start_states(episodes, config.batch_size, generator)
        with torch.no_grad():
            state = world.filter_start(prev, prev_a, s, first)
        rollout = imagine(world, policy, (state, s), config.horizon, config.estimator, config.temperature)
        loss, stats = policy_loss(rollout, config.estimator, config.gamma, baseline, config.entropy_weight)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, config.clip_grad_norm)
        optimizer.step()
    world.requires_grad_(True)
    return float(stats["return"])


def run_dyna(config: DynaConfig, log: Callable[[dict], None] | None = None) -> DynaResult:
    """Run the Dyna loop of the module docstring; ``log`` receives each iteration's history row."""
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    t0 = time.perf_counter()
    episodes = run_episodes(
        random_act(generator),
        10_000,
        seed=config.seed * 100_000,
        max_steps=config.initial_steps,
        n_envs=1,
        env_id=config.env_id,
    )
    real_steps = sum(len(e) for e in episodes)
    obs_dim = episodes[0].states.shape[1]
    world = WorldModel(
        obs_dim,
        2,
        config.model,
        config.latent_size,
        config.hidden_size,
        config.fc_hidden_sizes,
        window=config.window,
    )
    world.set_scales(episodes)
    policy = Policy(obs_dim, 2, config.policy_hidden, obs_scale=world.state_scale)
    baseline = value_baseline(obs_dim, config.policy_hidden, obs_scale=world.state_scale)
    optimizer = torch.optim.Adam([*policy.parameters(), *baseline.parameters()], lr=config.policy_lr)
    history = []
    collected = mean_return(episodes)
    for iteration in range(config.n_iterations):
        world.fit(
            episodes,
            config.model_loss,
            config.model_samples,
            config.model_steps_first if iteration == 0 else config.model_steps,
            config.model_batch_size,
            config.model_lr,
            seed=config.seed * 1000 + iteration,
        )
        imagined = train_policy(world, policy, baseline, optimizer, episodes, config, generator)
        evaluation = run_episodes(
            policy.act,
            config.eval_episodes,
            seed=10**9 + config.seed * 10_000 + iteration * 100,
            env_id=config.env_id,
        )
        row = {
            "iteration": iteration,
            "real_steps": real_steps,
            "eval_return": mean_return(evaluation),
            "collected_return": collected,
            "imagined_return": imagined,
            "seconds": time.perf_counter() - t0,
        }
        history.append(row)
        if log is not None:
            log(row)
        budget = min(config.steps_per_iteration, config.max_real_steps - real_steps)
        if iteration == config.n_iterations - 1 or budget <= 0:
            break
        new = run_episodes(
            policy.act,
            10_000,
            seed=config.seed * 100_000 + real_steps + 1,
            max_steps=budget,
            n_envs=1,
            env_id=config.env_id,
        )
        episodes.extend(new)
        real_steps += sum(len(e) for e in new)
        collected = mean_return(new)
    return DynaResult(history, policy, world, episodes, asdict(config))
