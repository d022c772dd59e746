"""The VRNN written as plainly as possible in PyTorch: a loop over samples and over time.

This is the baseline ``bench_sequential.py`` compares bbvae against. It has the same layer sizes
as ``bbvae.sequential.VRNN`` with its defaults and computes the same IWAE bound, the way a first
implementation usually does: one pass per sample, ``x[:, t]`` sliced inside the time loop.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.distributions import Bernoulli, Normal


def _mlp(n_in: int, hidden: int, n_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(n_in, hidden), nn.ReLU(), nn.Linear(hidden, n_out))


class PlainVRNN(nn.Module):
    def __init__(self, obs_dim: int = 88, latent: int = 64) -> None:
        super().__init__()
        self.latent = latent
        self.phi_x = _mlp(obs_dim, latent, latent)
        self.phi_z = _mlp(latent, latent, latent)
        self.prior = _mlp(latent, latent, 2 * latent)
        self.proposal = _mlp(2 * latent, latent, 2 * latent)
        self.decoder = _mlp(2 * latent, latent, obs_dim)
        self.cell = nn.LSTMCell(2 * latent, latent)

    def log_weight(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """One sample's log p(x, z) - log q(z | x): ``[batch]``."""
        batch, n_steps, _ = x.shape
        h = x.new_zeros(batch, self.latent)
        c = x.new_zeros(batch, self.latent)
        total = x.new_zeros(batch)
        for t in range(n_steps):
            x_t = x[:, t]
            xf = self.phi_x(x_t)
            p_loc, p_raw = self.prior(h).chunk(2, -1)
            q_loc, q_raw = self.proposal(torch.cat([h, xf], -1)).chunk(2, -1)
            prior = Normal(p_loc, nn.functional.softplus(p_raw) + 1e-4)
            proposal = Normal(q_loc, nn.functional.softplus(q_raw) + 1e-4)
            z = proposal.rsample()
            zf = self.phi_z(z)
            logits = self.decoder(torch.cat([h, zf], -1))
            step = (
                prior.log_prob(z).sum(-1)
                + Bernoulli(logits=logits).log_prob(x_t).sum(-1)
                - proposal.log_prob(z).sum(-1)
            )
            total = total + step * (t < lengths).to(x.dtype)
            h, c = self.cell(torch.cat([xf, zf], -1), (h, c))
        return total

    def forward(self, x: torch.Tensor, lengths: torch.Tensor, n_samples: int) -> torch.Tensor:
        """Negative IWAE bound averaged over the batch, one pass per sample."""
        log_w = torch.stack([self.log_weight(x, lengths) for _ in range(n_samples)], dim=1)
        return -(torch.logsumexp(log_w, dim=1) - math.log(n_samples)).mean()
