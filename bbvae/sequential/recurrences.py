"""Recurrences of the neural sequence models: cells stepped per time step, RNNs over whole sequences.

* :func:`make_cell` (``nn.LSTMCell`` / ``nn.GRUCell``, stepped once per time step on all particles
  at once by :func:`step_cell`) and :func:`make_rnn` (``nn.LSTM`` / ``nn.GRU`` over whole sequences,
  for recurrences that depend on ``x`` alone).
* Recurrent states are dicts ``{"h": ..., "c": ...}`` (``"c"`` for LSTMs only) with leaves
  ``[batch, n_particles, hidden]``.
* Sequence helpers: :func:`causal_context` (what the model knows before ``x_t``), :func:`shift_right`,
  :func:`reverse_padded` (a backward RNN that starts at each sequence's own last step).
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = [
    "causal_context",
    "particle_context",
    "check_cell",
    "context_after",
    "final_rnn_state",
    "make_cell",
    "make_rnn",
    "reverse_padded",
    "shift_right",
    "step_cell",
    "step_rnn",
    "zero_rnn_state",
]

_CELLS = ("lstm", "gru")


def check_cell(cell: str, where: str) -> str:
    if cell not in _CELLS:
        raise ValueError(f"{where}: expected cell in {_CELLS}, got {cell!r}")
    return cell


def make_cell(cell: str, input_size: int, hidden_size: int) -> nn.RNNCellBase:
    """An ``nn.LSTMCell`` (``cell="lstm"``) or ``nn.GRUCell`` (``"gru"``), stepped with :func:`step_cell`."""
    check_cell(cell, "make_cell")
    return (nn.LSTMCell if cell == "lstm" else nn.GRUCell)(input_size, hidden_size)


def make_rnn(cell: str, input_size: int, hidden_size: int) -> nn.RNNBase:
    """A batch-first one-layer ``nn.LSTM`` / ``nn.GRU`` run over whole sequences ``[batch, T, input]``."""
    check_cell(cell, "make_rnn")
    return (nn.LSTM if cell == "lstm" else nn.GRU)(input_size, hidden_size, batch_first=True)


def zero_rnn_state(cell: str, like: torch.Tensor, batch: int, n: int, hidden_size: int) -> dict:
    """``{"h": zeros, "c": zeros}`` (``"c"`` for LSTMs), leaves ``[batch, n, hidden]`` like ``like``."""
    h = like.new_zeros(batch, n, hidden_size)
    return {"h": h, "c": torch.zeros_like(h)} if cell == "lstm" else {"h": h}


def step_cell(cell: nn.RNNCellBase, inp: torch.Tensor, state: dict) -> dict:
    """One step of an ``nn.LSTMCell``/``nn.GRUCell`` for all particles: one cell call.

    Args:
        inp: ``[batch, K, input_size]``.
        state: ``{"h", "c"}`` (LSTM) or ``{"h"}`` (GRU), leaves ``[batch, K, hidden]``.
    """
    batch, k, _ = inp.shape
    flat = inp.reshape(batch * k, -1)  # [batch * K, input_size]
    h = state["h"].reshape(batch * k, -1)  # [batch * K, hidden]
    if "c" in state:
        h, c = cell(flat, (h, state["c"].reshape(batch * k, -1)))
        return {"h": h.reshape(batch, k, -1), "c": c.reshape(batch, k, -1)}
    return {"h": cell(flat, h).reshape(batch, k, -1)}


def step_rnn(rnn: nn.RNNBase, inp: torch.Tensor, state: dict) -> dict:
    """One time step of a whole-sequence ``nn.LSTM``/``nn.GRU`` for ``[batch, K, input]`` (generation)."""
    batch, k, _ = inp.shape
    flat = inp.reshape(batch * k, 1, -1)  # [batch * K, 1, input_size]
    h = state["h"].reshape(1, batch * k, -1)  # [1, batch * K, hidden]
    if "c" in state:
        _, (h, c) = rnn(flat, (h, state["c"].reshape(1, batch * k, -1)))
        return {"h": h.reshape(batch, k, -1), "c": c.reshape(batch, k, -1)}
    _, h = rnn(flat, h)
    return {"h": h.reshape(batch, k, -1)}


def final_rnn_state(rnn: nn.RNNBase, inp: torch.Tensor, lengths: torch.Tensor | None) -> dict:
    """The recurrent state after each sequence's last valid step: leaves ``[batch, hidden]``.

    Runs ``rnn`` over ``inp`` ``[batch, T, input]`` packed by ``lengths`` (one host copy of
    ``lengths``; used once per call by prefix-conditioned sampling, never in a training loop).
    """
    if lengths is None:
        _, hidden = rnn(inp)
    else:
        packed = nn.utils.rnn.pack_padded_sequence(inp, lengths.cpu(), batch_first=True, enforce_sorted=False)
        _, hidden = rnn(packed)
    if isinstance(hidden, tuple):
        return {"h": hidden[0].squeeze(0), "c": hidden[1].squeeze(0)}
    return {"h": hidden.squeeze(0)}


def causal_context(rnn: nn.RNNBase, xf: torch.Tensor, inputs: torch.Tensor | None) -> torch.Tensor:
    """``c_t = [h_{t-1}, u_t]`` for every step, with ``h_t = rnn(h_{t-1}, [xf_t, u_t])`` and ``h_{-1} = 0``.

    Args:
        xf: ``[batch, T, E]`` features of ``x_t``; inputs: ``[batch, T, d_in]`` or ``None``.

    Returns:
        ``[batch, T, hidden + d_in]``: what the model knows before seeing ``x_t`` (one RNN call).
    """
    rnn_in = xf if inputs is None else torch.cat([xf, inputs.to(xf.dtype)], dim=-1)
    out, _ = rnn(rnn_in)  # [batch, T, hidden]
    ctx = shift_right(out)
    return ctx if inputs is None else torch.cat([ctx, inputs.to(ctx.dtype)], dim=-1)


def context_after(rnn: nn.RNNBase, xf: torch.Tensor, inputs, lengths, n: int) -> dict:
    """The recurrent state of :func:`causal_context`'s RNN after each sequence's last step.

    Returns a dict of leaves ``[batch, n, hidden]`` (the same state for the ``n`` samples).
    """
    rnn_in = xf if inputs is None else torch.cat([xf, inputs.to(xf.dtype)], dim=-1)
    final = final_rnn_state(rnn, rnn_in, lengths)
    return {key: leaf.unsqueeze(1).expand(leaf.shape[0], n, leaf.shape[1]) for key, leaf in final.items()}


def shift_right(seq: torch.Tensor) -> torch.Tensor:
    """``[batch, T, ...]`` delayed by one step: zeros at ``t = 0``, ``seq[:, t - 1]`` at ``t``."""
    return torch.cat([torch.zeros_like(seq[:, :1]), seq[:, :-1]], dim=1)


def reverse_padded(seq: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
    """Reverse each sequence ``[batch, T, ...]`` within its own length; padding stays in place.

    Applying it twice is the identity. A causal RNN run over the result and reversed back is a
    backward RNN that starts at each sequence's own last step.
    """
    if lengths is None:
        return seq.flip(1)
    n_steps = seq.shape[1]
    steps = torch.arange(n_steps, device=seq.device)
    lengths = lengths.to(seq.device).unsqueeze(1)  # [batch, 1]
    index = torch.where(steps < lengths, lengths - 1 - steps, steps)  # [batch, T]
    index = index.reshape(*index.shape, *([1] * (seq.dim() - 2))).expand_as(seq)
    return torch.gather(seq, 1, index)


def particle_context(h: torch.Tensor, u: torch.Tensor | None) -> torch.Tensor:
    """The per-particle context ``c_t = [h, u_t]`` ``[batch, K, hidden + d_in]`` of a recurrent
    state ``h`` ``[batch, K, hidden]`` and side inputs ``u`` ``[batch, d_in]`` (or ``h`` alone)."""
    if u is None:
        return h
    return torch.cat([h, u.unsqueeze(1).to(h.dtype).expand(*h.shape[:2], -1)], dim=-1)
