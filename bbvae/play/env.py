"""Real episodes of a gymnasium environment (CartPole-v1 by default): collection and evaluation.

An :class:`Episode` holds ``states`` ``[T + 1, obs_dim]`` (``s_0 .. s_T``), ``actions`` ``[T]`` (long),
``rewards`` ``[T]`` and ``terminated`` (whether ``s_T`` is terminal; ``False`` for an episode cut by
the time limit or by the step budget). Environments are stepped in lockstep in a Python loop over
the environments (the simulator is pure Python); the policy is called once per step on all of them.

gymnasium is an optional dependency (``pip install 'bbvae[play]'``), imported when an environment
is made.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

#: A policy maps observations ``[n, obs_dim]`` (float32) to actions ``[n]`` (long).
ActFn = Callable[[torch.Tensor], torch.Tensor]


def make_env(env_id: str = "CartPole-v1"):
    """``gymnasium.make(env_id)``, with a clear error when gymnasium is missing."""
    try:
        import gymnasium
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "bbvae.play needs gymnasium for its environments: pip install 'bbvae[play]' "
            "(or pip install gymnasium)"
        ) from err
    return gymnasium.make(env_id)


@dataclass
class Episode:
    """One real episode.

    Attributes:
        states: ``[T + 1, obs_dim]`` float32, ``s_0 .. s_T``.
        actions: ``[T]`` long, ``a_t`` taken in ``s_t``.
        rewards: ``[T]`` float32, ``r_{t+1}`` received after ``a_t``.
        terminated: whether ``s_T`` is a terminal state (not a time-limit or budget cut).
    """

    states: torch.Tensor
    actions: torch.Tensor
    rewards: torch.Tensor
    terminated: bool

    def __len__(self) -> int:
        return int(self.actions.shape[0])

    @property
    def total_reward(self) -> float:
        return float(self.rewards.sum())


def run_episodes(
    act: ActFn,
    n_episodes: int,
    seed: int,
    max_steps: int | None = None,
    n_envs: int = 16,
    env_id: str = "CartPole-v1",
) -> list[Episode]:
    """Run ``act`` for ``n_episodes`` episodes (or until ``max_steps`` steps in total).

    Up to ``n_envs`` environments run in lockstep, so ``act`` sees a batch of observations.
    The ``k``-th episode started is reset with seed ``seed + k``. Episodes still running when
    ``max_steps`` is reached are returned cut (``terminated=False``). The budget is shared by the
    episodes running at once, so to collect whole episodes under a budget use ``n_envs=1`` (only the
    last episode is then cut); ``n_envs > 1`` suits evaluation without a budget.

    Returns:
        the episodes, in the order they were started; ``sum(len(e))`` never exceeds ``max_steps``.
    """
    if n_episodes < 1:
        raise ValueError(f"run_episodes: expected n_episodes >= 1, got {n_episodes}")
    if max_steps is not None and max_steps < 1:
        raise ValueError(f"run_episodes: expected max_steps >= 1 or None, got {max_steps}")
    envs = [make_env(env_id) for _ in range(min(n_envs, n_episodes))]
    done: list[Episode] = []
    steps = 0
    started = 0
    budget_left = True
    while started < n_episodes and budget_left:
        wave = envs[: min(len(envs), n_episodes - started)]
        obs = [env.reset(seed=seed + started + j)[0] for j, env in enumerate(wave)]
        started += len(wave)
        traces = [([o], [], []) for o in obs]
        running = list(range(len(wave)))
        finished: dict[int, Episode] = {}
        while running:
            if max_steps is not None and steps + len(running) > max_steps:
                running = running[: max(0, max_steps - steps)]
                budget_left = False
                if not running:
                    break
            batch = torch.as_tensor(np.stack([traces[j][0][-1] for j in running]), dtype=torch.float32)
            actions = act(batch).tolist()
            still = []
            for j, a in zip(running, actions):
                o, r, terminated, truncated, _ = wave[j].step(int(a))
                traces[j][0].append(o)
                traces[j][1].append(int(a))
                traces[j][2].append(float(r))
                steps += 1
                if terminated or truncated:
                    finished[j] = _episode(traces[j], bool(terminated))
                else:
                    still.append(j)
            running = still
        for j in range(len(wave)):  # budget cuts keep the steps taken so far
            if j not in finished and traces[j][1]:
                finished[j] = _episode(traces[j], False)
        done.extend(finished[j] for j in sorted(finished))
    for env in envs:
        env.close()
    return done


def _episode(trace, terminated: bool) -> Episode:
    states, actions, rewards = trace
    return Episode(
        torch.as_tensor(np.stack(states), dtype=torch.float32),
        torch.as_tensor(actions, dtype=torch.long),
        torch.as_tensor(rewards, dtype=torch.float32),
        terminated,
    )


def random_act(generator: torch.Generator) -> ActFn:
    """A uniformly random policy over two actions (CartPole), drawing from ``generator``."""

    def act(obs: torch.Tensor) -> torch.Tensor:
        return torch.randint(0, 2, (obs.shape[0],), generator=generator)

    return act


def mean_return(episodes: list[Episode]) -> float:
    """The mean total reward of ``episodes``."""
    return float(np.mean([e.total_reward for e in episodes]))
