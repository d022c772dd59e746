"""The VRNN as a good engineer writes it by hand in plain PyTorch: the peer of ``bench_peers.py``.

No library, no validation, closed-form log-densities, ``phi_x(x)`` computed once per sequence,
per-step tensors taken with ``unbind`` and one recurrence on the flattened ``[B * K]`` particles
(particle ``k`` of sequence ``b`` at row ``b * K + k``, the layout of bbvae's ``[B, K]``). It computes
the same IWAE and FIVO bounds as ``bbvae.sequential.VRNN`` (with ``resq``, an LSTM cell and Bernoulli
emissions), and :meth:`HandVRNN.load_from` copies a bbvae VRNN's weights, so both compute the same
numbers from the same seed (``tests/test_bench_peers.py`` checks it).

Layers (``D`` observations, ``Z`` latents, ``H`` recurrent state, ``F`` hidden units, ``E`` features):
``phi_x: D -> F -> E``, ``phi_z: Z -> F -> E``, ``prior: H -> F -> 2Z``, ``proposal: H + E -> F -> 2Z``,
``decoder: H + E -> F -> D``, ``cell: LSTMCell(2E, H)``.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

_LOG_2PI = math.log(2.0 * math.pi)


def _mlp(n_in: int, hidden: int, n_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(n_in, hidden), nn.ReLU(), nn.Linear(hidden, n_out))


def _normal_lp(z: torch.Tensor, loc: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return (-0.5 * ((z - loc) / scale).square() - scale.log()).sum(-1) - 0.5 * _LOG_2PI * z.shape[-1]


def _scale(raw: torch.Tensor) -> torch.Tensor:
    return F.softplus(raw + 0.25) + 1e-4


class HandVRNN(nn.Module):
    """Hand-written VRNN; :meth:`iwae_loss` / :meth:`fivo_loss` return the negative bound (batch mean)."""

    def __init__(self, obs_dim: int, latent: int, hidden: int, fc: int, encoded: int) -> None:
        super().__init__()
        self.latent, self.hidden = latent, hidden
        self.phi_x = _mlp(obs_dim, fc, encoded)
        self.phi_z = _mlp(latent, fc, encoded)
        self.prior = _mlp(hidden, fc, 2 * latent)
        self.proposal = _mlp(hidden + encoded, fc, 2 * latent)
        self.decoder = _mlp(hidden + encoded, fc, obs_dim)
        self.cell = nn.LSTMCell(2 * encoded, hidden)

    @torch.no_grad()
    def load_from(self, vrnn) -> HandVRNN:
        """Copy the weights of a ``bbvae.sequential.VRNN`` (one hidden layer per MLP, LSTM, resq)."""

        def copy_mlp(dst: nn.Sequential, src: nn.Sequential) -> None:
            dst[0].load_state_dict(src[0].state_dict())
            dst[2].load_state_dict(src[2].state_dict())

        def copy_head(dst: nn.Sequential, head) -> None:
            dst[0].weight.copy_(torch.cat([lin.weight for lin in head.inputs], dim=1))
            dst[0].bias.copy_(head.bias)
            dst[2].load_state_dict(head.tail[1][0].state_dict())

        copy_mlp(self.phi_x, vrnn.encoder)
        copy_mlp(self.phi_z, vrnn.z_encoder)
        copy_mlp(self.decoder, vrnn.decoder)
        copy_head(self.prior, vrnn.prior)
        copy_head(self.proposal, vrnn.proposal)
        self.cell.load_state_dict(vrnn.cell.state_dict())
        return self

    def _inputs(self, x: torch.Tensor, lengths: torch.Tensor, k: int):
        """Per-step ``x_t`` ``[B*K, D]``, ``phi_x(x_t)`` ``[B*K, E]`` and masks ``[B*K]``."""
        batch, n_steps, _ = x.shape
        xf = self.phi_x(x)  # [B, T, E]: once per sequence
        mask = (torch.arange(n_steps, device=x.device) < lengths.unsqueeze(1)).to(x.dtype)  # [B, T]
        xk = x.repeat_interleave(k, dim=0)  # [B*K, T, D]
        xfk = xf.repeat_interleave(k, dim=0)
        maskk = mask.repeat_interleave(k, dim=0)  # [B*K, T]
        return xk.unbind(1), xfk.unbind(1), maskk.unbind(1), mask

    def _step(self, h, c, x_t, xf_t):
        """One step for all particles: ``(h, c, log p(x_t, z_t) - log q(z_t))``."""
        p_loc, p_raw = self.prior(h).chunk(2, -1)
        p_scale = _scale(p_raw)
        q_loc, q_raw = self.proposal(torch.cat([h, xf_t], -1)).chunk(2, -1)
        q_loc = q_loc + p_loc
        q_scale = _scale(q_raw)
        z = q_loc + q_scale * torch.randn_like(q_loc)
        zf = self.phi_z(z)
        logits = self.decoder(torch.cat([h, zf], -1))
        log_px = (x_t * logits - F.softplus(logits)).sum(-1)
        log_w = log_px + _normal_lp(z, p_loc, p_scale) - _normal_lp(z, q_loc, q_scale)
        h, c = self.cell(torch.cat([xf_t, zf], -1), (h, c))
        return h, c, log_w

    def iwae_loss(self, x: torch.Tensor, lengths: torch.Tensor, k: int) -> torch.Tensor:
        """Negative IWAE bound, batch mean; ``x`` ``[B, T, D]``, ``lengths`` ``[B]``."""
        batch = x.shape[0]
        xs, xfs, masks, _ = self._inputs(x, lengths, k)
        h = x.new_zeros(batch * k, self.hidden)
        c = torch.zeros_like(h)
        total = x.new_zeros(batch * k)
        for x_t, xf_t, m_t in zip(xs, xfs, masks):
            h, c, log_w = self._step(h, c, x_t, xf_t)
            total = total + m_t * log_w
        log_w = total.view(batch, k)
        return -(torch.logsumexp(log_w, dim=1) - math.log(k)).mean()

    def fivo_loss(
        self, x: torch.Tensor, lengths: torch.Tensor, k: int, threshold: float = 0.5
    ) -> torch.Tensor:
        """Negative FIVO bound (multinomial resampling where ESS < threshold * K), batch mean."""
        batch, n_steps, _ = x.shape
        xs, xfs, masks, mask = self._inputs(x, lengths, k)
        next_valid = torch.cat([mask[:, 1:], mask.new_zeros(batch, 1)], dim=1).bool().unbind(1)
        h = x.new_zeros(batch * k, self.hidden)
        c = torch.zeros_like(h)
        log_w = x.new_zeros(batch, k)
        log_z = x.new_zeros(batch)
        identity = torch.arange(k, device=x.device).expand(batch, k)
        offsets = (torch.arange(batch, device=x.device) * k).unsqueeze(1)  # [B, 1]
        log_k = math.log(k)
        for t, (x_t, xf_t, m_t) in enumerate(zip(xs, xfs, masks)):
            h, c, step_w = self._step(h, c, x_t, xf_t)
            log_w = log_w + (m_t * step_w).view(batch, k)
            if t == n_steps - 1:
                break
            log_norm = torch.log_softmax(log_w.detach(), dim=1)
            ess = torch.exp(-torch.logsumexp(2.0 * log_norm, dim=1))  # [B]
            do = (ess < threshold * k) & next_valid[t]
            cdf = torch.cumsum(log_norm.exp(), dim=1)
            u = torch.rand(batch, k, dtype=x.dtype, device=x.device)
            drawn = torch.searchsorted(cdf, (u * cdf[:, -1:]).contiguous(), right=True).clamp(max=k - 1)
            anc = torch.where(do.unsqueeze(1), drawn, identity)
            log_z = log_z + torch.where(do, torch.logsumexp(log_w, dim=1) - log_k, 0.0)
            log_w = torch.where(do.unsqueeze(1), 0.0, log_w)
            rows = (anc + offsets).view(-1)  # ancestors as rows of the flat [B*K] state
            h, c = h.index_select(0, rows), c.index_select(0, rows)
        log_z = log_z + torch.logsumexp(log_w, dim=1) - log_k
        return -log_z.mean()
