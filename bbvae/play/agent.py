"""A policy trained on rollouts imagined by a :class:`~bbvae.play.WorldModel`.

Imagined rollouts run ``B`` episodes at once (one batched model step per time step). Termination is
Rao-Blackwellised: instead of sampling whether an imagined episode ended, the return weights the
reward of step ``t`` by the model's probability ``alive_t = prod_{s < t} (1 - p(d_s = 1))`` that the
episode was still running, so the return is a smooth function of the trajectory:
``J = sum_t gamma^t alive_t r_{t+1}``.

Two gradient estimators of ``E[J]`` with respect to the policy (:func:`policy_loss`):

* ``"score"``: the score-function (REINFORCE) estimator
  ``sum_t grad log pi(a_t | s_t) * alive_t gamma^t (G_t - V(s_t))`` with ``G_t`` the discounted
  reward-to-go given alive at ``t`` and a learned state-value baseline ``V`` (trained by weighted
  least squares on ``G_t``, as NVIL trains its input-dependent baseline). The model runs without
  a gradient path.
* ``"pathwise"``: differentiate ``J`` through the model, as VAE-Seq does: actions are relaxed one-hot
  vectors (Gumbel-softmax, Jang et al. 2017; Maddison et al. 2017), with ``straight_through=True`` hard
  one-hots forward and the relaxed gradient backward, and the model's latent and observation noise
  is reparametrised.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from bbvae.models import mlp
from bbvae.play.world_model import WorldModel

_ESTIMATORS = ("score", "pathwise")


class Policy(nn.Module):
    """A categorical policy ``pi(a | s)``: an MLP on ``s / obs_scale`` giving ``n_actions`` logits.

    Args:
        obs_dim, n_actions: sizes.
        hidden_sizes: hidden layers (tanh).
        obs_scale: ``[obs_dim]`` divisor of the observations (ones by default).
    """

    def __init__(
        self,
        obs_dim: int = 4,
        n_actions: int = 2,
        hidden_sizes=(64, 64),
        obs_scale: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        self.net = mlp([obs_dim, *hidden_sizes, n_actions], nn.Tanh)
        self.register_buffer("obs_scale", torch.ones(obs_dim) if obs_scale is None else obs_scale.clone())

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        """Logits ``[..., n_actions]`` of observations ``[..., obs_dim]``."""
        return self.net(obs / self.obs_scale)

    @torch.no_grad()
    def act(self, obs: torch.Tensor, greedy: bool = False) -> torch.Tensor:
        """Actions ``[n]`` (long) for observations ``[n, obs_dim]``: sampled, or the most likely."""
        logits = self(obs.to(self.obs_scale))
        if greedy:
            return logits.argmax(-1)
        return torch.multinomial(torch.softmax(logits, -1), 1).squeeze(-1)


@dataclass
class Rollout:
    """``B`` imagined episodes of ``H`` steps.

    Attributes:
        states: ``[B, H + 1, obs_dim]`` imagined states (``states[:, 0]`` the real start).
        log_pi: ``[B, H]`` log-probability of the actions taken (score estimator; zeros otherwise).
        entropy: ``[B, H]`` entropy of the policy at each state.
        alive: ``[B, H]`` probability that the episode is running before step ``t``'s transition.
        rewards: ``[B, H]`` predicted reward of each transition.
    """

    states: torch.Tensor
    log_pi: torch.Tensor
    entropy: torch.Tensor
    alive: torch.Tensor
    rewards: torch.Tensor


def imagine(
    world: WorldModel,
    policy: Policy,
    start,
    horizon: int,
    estimator: str = "score",
    temperature: float = 1.0,
    straight_through: bool = True,
) -> Rollout:
    """Roll ``policy`` out in ``world`` from ``start = (model state, s [B, obs_dim])``, all B at once."""
    if estimator not in _ESTIMATORS:
        raise ValueError(f"imagine: expected estimator in {_ESTIMATORS}, got {estimator!r}")
    state, s = start
    states, log_pis, entropies, log_conts, rewards = [s], [], [], [], []
    for _ in range(horizon):
        logits = policy(s)  # [B, n_actions]
        log_probs = torch.log_softmax(logits, -1)
        entropies.append(-(log_probs.exp() * log_probs).sum(-1))
        if estimator == "score":
            with torch.no_grad():
                action = torch.multinomial(log_probs.exp(), 1).squeeze(-1)
                one_hot = F.one_hot(action, logits.shape[-1]).to(logits)
                state, s, r, done_logit, _ = world.imagine_step(state, s, one_hot)
            log_pis.append(log_probs.gather(-1, action[:, None]).squeeze(-1))
        else:
            one_hot = gumbel_softmax(log_probs, temperature, straight_through)
            state, s, r, done_logit, _ = world.imagine_step(state, s, one_hot)
            log_pis.append(torch.zeros_like(r))
        states.append(s)
        log_conts.append(F.logsigmoid(-done_logit))
        rewards.append(r)
    log_cont = torch.stack(log_conts, 1)  # [B, H]
    alive = torch.exp(torch.cumsum(log_cont, 1) - log_cont)  # prod over s < t
    return Rollout(
        torch.stack(states, 1),
        torch.stack(log_pis, 1),
        torch.stack(entropies, 1),
        alive,
        torch.stack(rewards, 1),
    )


def gumbel_softmax(log_probs: torch.Tensor, temperature: float, straight_through: bool) -> torch.Tensor:
    """A relaxed one-hot draw ``softmax((log_probs + Gumbel) / temperature)`` ``[B, n]``.

    With ``straight_through`` the forward value is the hard one-hot of the same draw and the gradient
    that of the relaxed sample.
    """
    uniform = torch.rand_like(log_probs).clamp(1e-10, 1.0 - 1e-7)
    soft = torch.softmax((log_probs - torch.log(-torch.log(uniform))) / temperature, -1)
    if not straight_through:
        return soft
    hard = F.one_hot(soft.argmax(-1), soft.shape[-1]).to(soft)
    return hard + soft - soft.detach()


def discounted_returns(rewards: torch.Tensor, gamma: float) -> torch.Tensor:
    """``G_t = sum_{s >= t} gamma^{s-t} rewards_s`` for ``[B, H]`` rewards (one reversed cumulative sum)."""
    horizon = rewards.shape[1]
    powers = gamma ** torch.arange(horizon, dtype=rewards.dtype, device=rewards.device)  # [H]
    tail = torch.flip(torch.cumsum(torch.flip(rewards * powers, [1]), 1), [1])
    return tail / powers


def policy_loss(
    rollout: Rollout,
    estimator: str,
    gamma: float = 0.99,
    baseline: nn.Module | None = None,
    entropy_weight: float = 0.0,
    normalize: bool = True,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The surrogate loss whose gradient estimates ``-grad E[J]`` (plus the baseline's regression loss).

    Args:
        rollout: from :func:`imagine` with the same ``estimator``.
        baseline: ``V(s)`` (a module ``[..., obs_dim] -> [..., 1]``) for ``"score"``.
        entropy_weight: weight of the mean policy entropy bonus (weighted by ``alive``).
        normalize: divide the score estimator's advantages by their standard deviation over the
            batch (a common variance reduction that rescales the gradient; off: unbiased).

    Returns:
        ``(loss, stats)`` with ``stats["return"]`` the mean imagined return ``[]`` (detached).
    """
    horizon = rollout.rewards.shape[1]
    powers = gamma ** torch.arange(horizon, dtype=rollout.rewards.dtype, device=rollout.rewards.device)
    weighted = rollout.alive * rollout.rewards  # [B, H] expected reward of each transition
    ret = (weighted * powers).sum(1)  # [B]
    stats = {"return": ret.mean().detach()}
    entropy = (rollout.alive.detach() * rollout.entropy).sum(1).mean() / horizon
    if estimator == "pathwise":
        return -ret.mean() / horizon - entropy_weight * entropy, stats
    if baseline is None:
        raise ValueError("policy_loss: the score estimator needs a baseline module")
    with torch.no_grad():
        alive = rollout.alive.clamp_min(1e-6)
        to_go = discounted_returns(weighted, gamma) / alive  # [B, H] reward-to-go given alive at t
    value = baseline(rollout.states[:, :-1].detach()).squeeze(-1)  # [B, H]
    weight = rollout.alive * powers  # [B, H]
    advantage = weight * (to_go - value.detach())
    if normalize:
        advantage = advantage / (advantage.std() + 1e-8)
    surrogate = -(rollout.log_pi * advantage).sum(1).mean() / horizon
    value_loss = (rollout.alive * (value - to_go).square()).sum(1).mean() / horizon
    stats["value_loss"] = value_loss.detach()
    return surrogate + value_loss - entropy_weight * entropy, stats


def value_baseline(
    obs_dim: int = 4, hidden_sizes=(64, 64), obs_scale: torch.Tensor | None = None
) -> nn.Module:
    """A state-value network ``V(s)`` ``[..., obs_dim] -> [..., 1]`` for the score estimator."""
    return Policy(obs_dim, 1, hidden_sizes, obs_scale)
