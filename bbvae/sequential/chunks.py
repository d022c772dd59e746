"""Time loops run in chunks of steps: activation checkpointing and truncated backpropagation.

The drivers (:func:`~bbvae.sequential.run_particles`, :func:`~bbvae.sequential.smc`) write their
time loop as a body ``body(t, carry) -> (carry, out_t)`` (``carry``: what step ``t + 1`` needs, a
pytree of tensors; ``out_t``: what is kept of step ``t``) and run it with :func:`run_steps`, which
takes two options, each a number of time steps or ``None`` (off):

* ``remat_chunk=N``, **activation checkpointing** ("rematerialisation"): every ``N`` consecutive
  steps run inside ``torch.utils.checkpoint`` (non-reentrant). The forward pass keeps, for the
  backward, only the carry at the chunk boundaries and the per-step outputs (log-densities and
  latents, ``[batch, K, ...]`` per step); the backward recomputes one chunk at a time, so the
  activations of at most one chunk are alive at once. The recomputation replays the same random
  draws: torch restores the global CPU RNG and that of the carry's accelerator
  (``preserve_rng_state``), and an explicit ``generator`` (SMC's resampling uniforms) is set back to
  its state at the chunk's start for the recomputation and to its current state afterwards. The
  bound and the gradients are therefore those of the plain loop (the same operations on the same
  numbers). The cost is one more forward pass of the steps. Unused under ``torch.no_grad()`` and
  when ``N >= T`` (one chunk would keep all of it again at the backward).
* ``tbptt_chunk=M``, **truncated backpropagation through time**: the carry (the recurrent state
  and, in SMC, the particles' log-weights) of the sequences still running is detached before
  steps ``M, 2M, ...`` (a sequence that has ended keeps its final weights whole). Every value
  is unchanged (the same draws, the same bound); the gradient is **a different, biased
  estimator**: it drops every path from a step's output back through a chunk boundary (e.g. how
  ``h_{t}`` of an earlier chunk changed the later log-weights). With ``M >= T`` it is the full
  gradient. By itself it does not lower the memory (the graph of every chunk lives until the
  backward); combined with ``remat_chunk`` it does, as checkpointing alone does.

Memory kept for the backward, per sequence and particle: ``T`` steps' activations for the plain
loop; ``N`` steps' activations plus ``T / N`` carries plus the ``T`` per-step outputs with
``remat_chunk=N`` (``benchmarks/README.md``, "Memory on long sequences"). What depends on ``x``
alone (the model's ``encode``) runs once before the loop and is not recomputed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.utils.checkpoint import checkpoint

from bbvae.sequential.pytree import tree_map, tree_where

__all__ = ["CHUNK_OPTIONS", "check_chunk", "resolve_chunks", "run_steps"]

#: The chunking options, as drivers, losses, models, ``SequenceModel`` and ``Trainer`` name them.
CHUNK_OPTIONS = ("remat_chunk", "tbptt_chunk")

Body = Callable[[int, Any], tuple[Any, Any]]


def check_chunk(name: str, value, where: str) -> int | None:
    """``value`` if it is ``None`` or an int >= 1 (time steps per chunk), else raise naming ``name``."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(
            f"{where}: expected {name} to be a positive int (time steps per chunk) or None, "
            f"got {type(value).__name__} {value!r}"
        )
    if value < 1:
        raise ValueError(f"{where}: expected {name} >= 1 (time steps per chunk) or None, got {value}")
    return value


def resolve_chunks(model, remat_chunk, tbptt_chunk, where: str) -> tuple[int | None, int | None]:
    """The chunk sizes a driver uses: its own arguments, or where ``None`` the model's attributes
    ``model.remat_chunk`` / ``model.tbptt_chunk`` (``None`` by default: off); checked."""
    values = []
    for name, value in zip(CHUNK_OPTIONS, (remat_chunk, tbptt_chunk)):
        if value is None:
            value = getattr(model, name, None)
            name = f"{type(model).__name__}.{name}"
        values.append(check_chunk(name, value, where))
    return values[0], values[1]


def _detach(carry: Any, running: torch.Tensor | None) -> Any:
    """The carry detached, for the sequences still ``running`` (``[batch]`` bool; ``None``: all)."""
    detached = tree_map(torch.Tensor.detach, carry)
    return detached if running is None else tree_where(running, detached, carry)


def _run(body: Body, start: int, stop: int, carry: Any, tbptt_chunk: int | None, masks) -> tuple[Any, list]:
    """Steps ``start .. stop - 1``, the carry detached before every multiple of ``tbptt_chunk``."""
    outs = []
    for t in range(start, stop):
        if tbptt_chunk is not None and t > 0 and t % tbptt_chunk == 0:
            carry = _detach(carry, masks[t] if masks is not None else None)
        carry, out = body(t, carry)
        outs.append(out)
    return carry, outs


class _Chunk:
    """One checkpointed chunk: its first call is the forward, later calls recompute it.

    An explicit generator is set to its state at the chunk's start for a recomputation, and back to
    its state of the moment afterwards (also when torch stops a recomputation early).
    """

    def __init__(self, body: Body, start: int, stop: int, tbptt_chunk, masks, generator) -> None:
        self.body, self.start, self.stop, self.tbptt_chunk, self.masks = body, start, stop, tbptt_chunk, masks
        self.generator = generator
        self.generator_state = generator.get_state() if generator is not None else None
        self.calls = 0

    def __call__(self, carry: Any, anchor: torch.Tensor) -> tuple[Any, list]:
        # (anchor: a tensor on the data's device, so that torch saves that device's RNG state)
        self.calls += 1
        if self.calls == 1 or self.generator is None:
            return _run(self.body, self.start, self.stop, carry, self.tbptt_chunk, self.masks)
        now = self.generator.get_state()
        self.generator.set_state(self.generator_state)
        try:
            return _run(self.body, self.start, self.stop, carry, self.tbptt_chunk, self.masks)
        finally:
            self.generator.set_state(now)


def run_steps(
    body: Body,
    carry: Any,
    n_steps: int,
    anchor: torch.Tensor,
    remat_chunk: int | None = None,
    tbptt_chunk: int | None = None,
    generator: torch.Generator | None = None,
    masks: list[torch.Tensor] | None = None,
) -> tuple[Any, list]:
    """Run ``carry, out_t = body(t, carry)`` for ``t = 0 .. n_steps - 1`` (see the module docstring).

    Args:
        body: one time step; it must draw its random numbers from the global RNG (or the
            accelerator's) or from ``generator``, and keep no other state between calls but
            constants (a recomputation calls it again for the same ``t``).
        carry: the state before step 0, a pytree of tensors (and ``None``).
        n_steps: ``T``.
        anchor: a tensor on the data's device (its RNG state is saved with the CPU's).
        remat_chunk: checkpoint every this many steps (``None``: off).
        tbptt_chunk: detach the carry every this many steps (``None``: off).
        generator: the explicit ``torch.Generator`` the body draws from, if any.
        masks: ``T`` tensors ``[batch]`` bool, True where step ``t`` is within the sequence
            (``None``: every step is). Truncation detaches the carry of the sequences still running
            only: a sequence that has ended keeps its carry (e.g. its final log-weights) whole.
            The carry's leaves must then be ``[batch, ...]``.

    Returns:
        ``(carry after step T - 1, [out_0, ..., out_{T-1}])``.
    """
    if remat_chunk is None or remat_chunk >= n_steps or not torch.is_grad_enabled():
        return _run(body, 0, n_steps, carry, tbptt_chunk, masks)
    outs: list = []
    for start in range(0, n_steps, remat_chunk):
        chunk = _Chunk(body, start, min(start + remat_chunk, n_steps), tbptt_chunk, masks, generator)
        carry, chunk_outs = checkpoint(chunk, carry, anchor, use_reentrant=False, preserve_rng_state=True)
        outs.extend(chunk_outs)
    return carry, outs
