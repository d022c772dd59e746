"""How good a world model is against the real simulator: open-loop multi-step prediction error."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.nn import functional as F

from bbvae.play.env import Episode
from bbvae.play.world_model import WorldModel


@torch.no_grad()
def open_loop_error(
    world: WorldModel, episodes: Sequence[Episode], horizons: Sequence[int] = (10, 25, 50), n_samples: int = 8
) -> dict[int, dict[str, object]]:
    """Prediction error of ``s_h`` from ``s_0`` and the real actions ``a_0 .. a_{h-1}``, open loop.

    The model filters the real ``s_0``, then imagines ``h`` steps fed with the recorded actions and its
    own predicted states (never the real ones), ``n_samples`` rollouts per episode, all episodes
    batched. The prediction is the mean of the rollouts.

    Returns:
        ``{h: {"rmse": [obs_dim] per-dimension RMSE in physical units, "nrmse": RMSE of the errors
        divided by the per-dimension standard deviation of all states of ``episodes``,
        "n_episodes": int}}``
        for each horizon with at least one episode of ``>= h`` steps (episodes that ended earlier
        are left out of that horizon).
    """
    longest = max(horizons)
    usable = [e for e in episodes if len(e) >= min(horizons)]
    if not usable:
        raise ValueError(f"open_loop_error: no episode has >= {min(horizons)} steps")
    steps = min(longest, max(len(e) for e in usable))
    lengths = torch.tensor([len(e) for e in usable])
    real = torch.stack([_pad(e.states, steps + 1) for e in usable])  # [N, steps + 1, obs_dim]
    actions = torch.stack([_pad(e.actions, steps) for e in usable])  # [N, steps]
    real = real.to(world.state_scale)
    n = real.shape[0]
    s0 = real[:, 0].repeat_interleave(n_samples, 0)  # [N * S, obs_dim]
    first = torch.ones(n * n_samples, dtype=torch.bool, device=s0.device)
    zeros = torch.zeros(n * n_samples, dtype=torch.long, device=s0.device)
    state = world.filter_start(torch.zeros_like(s0), zeros, s0, first)
    s = s0
    predicted = []
    for a in actions.repeat_interleave(n_samples, 0).unbind(1):
        state, s, _, _, _ = world.imagine_step(state, s, F.one_hot(a, world.n_actions))
        predicted.append(s)
    mean = torch.stack(predicted, 1).reshape(n, n_samples, steps, -1).mean(1)  # [N, steps, obs_dim]
    std = torch.cat([e.states for e in usable]).to(real).std(0).clamp_min(1e-6)  # [obs_dim]
    out: dict[int, dict[str, object]] = {}
    for h in horizons:
        keep = lengths >= h
        if h > steps or not bool(keep.any()):
            continue
        err = mean[keep, h - 1] - real[keep, h]  # [n_h, obs_dim]
        out[h] = {
            "rmse": err.square().mean(0).sqrt().tolist(),
            "nrmse": float((err / std).square().mean().sqrt()),
            "n_episodes": int(keep.sum()),
        }
    return out


def _pad(t: torch.Tensor, n: int) -> torch.Tensor:
    if t.shape[0] >= n:
        return t[:n]
    return torch.cat([t, t[-1:].expand(n - t.shape[0], *t.shape[1:])])
