"""Time loops run in chunks of steps: activation checkpointing and truncated backpropagation.

The drivers (:func:`~bbvae.sequential.run_particles`, :func:`~bbvae.sequential.smc`) write their
time loop as a body ``body(t, carry, inputs_t) -> (carry, out_t)`` (``carry``: what step ``t + 1``
needs, a pytree of tensors; ``inputs_t``: the step's encoded items; ``out_t``: what is kept of step
``t``) and run it with :func:`run_steps`, which takes two options, each a number of time steps or
``None`` (off):

* ``remat_chunk=N``, **activation checkpointing** ("rematerialisation"): every ``N`` consecutive
  steps are one node of the autograd graph (:class:`_Recompute`). Its forward runs the chunk,
  keeps its outputs and drops its graph at once; its backward runs the chunk again from the
  carry it started from and differentiates it there (a reentrant ``torch.autograd.grad``). So the
  forward pass keeps, for the backward, only the carry at the chunk boundaries and the per-step
  outputs (log-densities and latents, ``[batch, K, ...]`` per step), and the activations of one
  chunk are alive at a time in the backward. The recomputation replays the same random draws:
  the global CPU RNG and the data's accelerator's are set back to their state at the chunk's
  start (and restored afterwards), and so is an explicit ``generator`` (SMC's resampling
  uniforms). The bound and the gradients are therefore those of the plain loop (the same
  operations on the same numbers), for one more forward pass of the steps. Unused under
  ``torch.no_grad()`` and when ``N >= T`` (one chunk would keep all of it again in the backward).
* ``tbptt_chunk=M``, **truncated backpropagation through time**: the model's recurrent state
  of the sequences still running is detached before steps ``M, 2M, ...``; SMC's accumulated
  log-weights cross the boundary whole (a :class:`Carry`), since every step's weight is a term of
  the bound whose own gradient must stay. Every value is unchanged (the same draws, the same
  bound); the gradient is **a different, biased estimator**: it drops every path from a step's
  output back through the state at a chunk boundary (e.g. how ``h_{t}`` of an earlier chunk
  changed the later log-weights). With ``M >= T`` it is the full gradient. By itself it does
  not lower the memory (the graph of every chunk lives until the backward); combined with
  ``remat_chunk`` it does, as checkpointing alone does.

Why not ``torch.utils.checkpoint``: its non-reentrant form (the one that supports
``torch.autograd.grad``) still builds the graph of every step in the forward and only drops the
saved tensors; a sequence step is many small operations, whose graph nodes and per-tensor
bookkeeping weigh about as much as the activations themselves (a VRNN-FIVO step kept half its
memory that way and took 2.5 times as long), while its reentrant form refuses
``torch.autograd.grad``. The node here keeps nothing per step.

What the body may do, as the recomputation calls it again in the backward: draw its random
numbers from the global RNG (or the accelerator's) or from ``generator``; read differentiable
tensors only from its carry, its inputs and the model's parameters (anything else would be a
constant to the recomputation: with validation on, the first chunk's graph is walked and such a
tensor is refused with an error); keep no state between calls but constants; and the model must
not change mode (``train`` / ``eval``) between the forward and the backward. Double backward
(``create_graph=True``) is refused, and so are devices other than the CPU and CUDA (whose random
states are the ones replayed).

Memory kept for the backward, per sequence and particle: ``T`` steps' activations for the plain
loop; ``T / N`` carries plus the ``T`` per-step outputs with ``remat_chunk=N``, and one chunk's
activations during the backward (``benchmarks/README.md``, "Memory on long sequences"). What
depends on ``x`` alone (the model's ``encode``) runs once before the loop and is not recomputed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import torch
from torch.utils import _pytree

from bbvae._validation import is_validation_enabled
from bbvae.sequential.pytree import tree_map, tree_where

__all__ = ["CHUNK_OPTIONS", "Carry", "check_chunk", "resolve_chunks", "run_steps"]

#: The chunking options, as drivers, losses, models, ``SequenceModel`` and ``Trainer`` name them.
CHUNK_OPTIONS = ("remat_chunk", "tbptt_chunk")

Body = Callable[[int, Any, Any], tuple[Any, Any]]


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


class Carry(NamedTuple):
    """A carry of which truncation detaches only ``state``; ``whole`` crosses chunk boundaries with
    its gradient (SMC's accumulated log-weights: each step's weight is a term of the bound, whose
    own gradient truncation must keep)."""

    state: Any
    whole: Any


def _detach(carry: Any, running: torch.Tensor | None) -> Any:
    """The carry detached, for the sequences still ``running`` (``[batch]`` bool; ``None``: all);
    of a :class:`Carry`, only its ``state``."""
    if isinstance(carry, Carry):
        return Carry(_detach(carry.state, running), carry.whole)
    detached = tree_map(torch.Tensor.detach, carry)
    return detached if running is None else tree_where(running, detached, carry)


def _run(body: Body, start: int, carry: Any, inputs: Sequence, tbptt_chunk: int | None, masks):
    """Steps ``start .. start + len(inputs) - 1``, the carry detached before multiples of ``tbptt_chunk``."""
    outs = []
    for t, inputs_t in enumerate(inputs, start):
        if tbptt_chunk is not None and t > 0 and t % tbptt_chunk == 0:
            carry = _detach(carry, masks[t] if masks is not None else None)
        carry, out = body(t, carry, inputs_t)
        outs.append(out)
    return carry, outs


_TENSOR = object()  # a tensor's place in a chunk's flattened outputs


def _differentiable(leaf) -> bool:
    return isinstance(leaf, torch.Tensor) and leaf.requires_grad


class _Chunk:
    """One chunk of steps, run by :class:`_Recompute`: its differentiable tensors and its replay.

    ``leaves`` are the flattened ``(carry, inputs)``; the differentiable ones (deduplicated: the
    same tensor may be read by every step) are what :class:`_Recompute` takes as inputs, with the
    model's parameters; :meth:`run` puts given tensors in their places.
    """

    def __init__(self, body, start, carry, inputs, tbptt_chunk, masks, generator, anchor) -> None:
        self.body, self.start, self.tbptt_chunk, self.masks = body, start, tbptt_chunk, masks
        self.leaves, self.spec = _pytree.tree_flatten((carry, list(inputs)))
        slots: dict[int, int] = {}
        self.slot_of = []  # for each leaf: the index of its tensor among the inputs, or None
        self.tensors: list[torch.Tensor] = []
        for leaf in self.leaves:
            if _differentiable(leaf):
                if id(leaf) not in slots:
                    slots[id(leaf)] = len(self.tensors)
                    self.tensors.append(leaf)
                self.slot_of.append(slots[id(leaf)])
            else:
                self.slot_of.append(None)
        self.generator = generator
        self.generator_state = generator.get_state() if generator is not None else None
        self.cpu_state = torch.get_rng_state()
        self.device = anchor.device if anchor.device.type == "cuda" else None
        self.device_state = torch.cuda.get_rng_state(self.device) if self.device is not None else None
        self.out_spec = None
        self.template: list = []  # the flattened outputs, tensors replaced by _TENSOR

    def run(self, tensors: Sequence[torch.Tensor]) -> list:
        """The chunk on ``tensors`` in the differentiable slots: its flattened ``(carry, outs)``."""
        leaves = [leaf if slot is None else tensors[slot] for leaf, slot in zip(self.leaves, self.slot_of)]
        carry, inputs = _pytree.tree_unflatten(leaves, self.spec)
        result = _run(self.body, self.start, carry, inputs, self.tbptt_chunk, self.masks)
        flat, self.out_spec = _pytree.tree_flatten(result)
        return flat

    def replay(self, tensors: Sequence[torch.Tensor]) -> list:
        """:meth:`run` again with the random state of the first run; the states of the moment are
        restored afterwards."""
        devices = [self.device] if self.device is not None else []
        with torch.random.fork_rng(devices=devices):
            torch.set_rng_state(self.cpu_state)
            if self.device is not None:
                torch.cuda.set_rng_state(self.device_state, self.device)
            if self.generator is None:
                return self.run(tensors)
            now = self.generator.get_state()
            self.generator.set_state(self.generator_state)
            try:
                return self.run(tensors)
            finally:
                self.generator.set_state(now)


class _Recompute(torch.autograd.Function):
    """A chunk of steps whose activations are not kept: one node in the graph instead of one per
    operation, its backward recomputes the chunk and differentiates it (a reentrant backward).

    Inputs: the chunk, then its differentiable tensors, then the model's parameters. Outputs: the
    chunk's flattened ``(carry, outs)`` tensors, those without a gradient marked as such.
    """

    @staticmethod
    def forward(ctx, chunk: _Chunk, n_tensors: int, *args: torch.Tensor):
        ctx.chunk, ctx.n_tensors = chunk, n_tensors
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(*args)
        # With a graph of this chunk only, dropped at once: it tells which outputs differentiate.
        with torch.enable_grad():
            first_node = _next_node_number(args)
            flat = chunk.run(args[:n_tensors])
        if chunk.start == 0 and is_validation_enabled():  # (once per pass: a graph walk in Python)
            _check_inputs_only(flat, args, first_node, chunk.start)
        chunk.template = [_TENSOR if isinstance(leaf, torch.Tensor) else leaf for leaf in flat]
        outs = [leaf.detach() for leaf in flat if isinstance(leaf, torch.Tensor)]
        ctx.differentiable = [leaf.requires_grad for leaf in flat if isinstance(leaf, torch.Tensor)]
        ctx.shapes = [out.shape for out in outs]
        ctx.mark_non_differentiable(*[o for o, d in zip(outs, ctx.differentiable) if not d])
        return tuple(outs)

    @staticmethod
    def backward(ctx, *grads):
        chunk, n_tensors = ctx.chunk, ctx.n_tensors
        if torch.is_grad_enabled():  # create_graph=True: the recomputation is on detached inputs
            raise RuntimeError(
                f"remat_chunk: double backward (create_graph=True) through the checkpointed time steps "
                f"{chunk.start}.. is not supported: its recomputed gradients would lose their dependence "
                "on earlier chunks; run without remat_chunk for higher-order gradients"
            )
        saved = ctx.saved_tensors
        tensors = [t.detach().requires_grad_(True) for t in saved[:n_tensors]]
        params = list(saved[n_tensors:])  # (read by the step as they are: not detached)
        with torch.enable_grad():
            flat = [leaf for leaf in chunk.replay(tensors) if isinstance(leaf, torch.Tensor)]
        if [out.shape for out in flat] != ctx.shapes:
            raise RuntimeError(
                f"remat_chunk: recomputing time steps {chunk.start}.. in the backward gave other outputs "
                "than the forward pass: the model's step must give the same results when called again "
                "(no side effects between calls, the same train/eval mode)"
            )
        pairs = [
            (out, grad)
            for out, grad, differentiable in zip(flat, grads, ctx.differentiable)
            if differentiable and grad is not None and out.requires_grad
        ]
        wrt = tensors + params
        if not pairs:
            return (None, None, *([None] * len(wrt)))
        found = torch.autograd.grad(
            [out for out, _ in pairs],
            wrt,
            [grad for _, grad in pairs],
            allow_unused=True,
        )
        return (None, None, *found)


def _next_node_number(like: Sequence[torch.Tensor]) -> int:
    """The sequence number autograd gives the next graph node made on this thread (nodes made
    earlier, e.g. by ``encode`` before the loop, have smaller ones)."""
    like_t = like[0] if like else torch.zeros(())
    probe = torch.zeros((), dtype=like_t.dtype, device=like_t.device, requires_grad=True) * 1
    return probe.grad_fn._sequence_nr() + 1


def _check_inputs_only(flat: list, inputs: Sequence[torch.Tensor], first_node: int, start: int) -> None:
    """Raise if the chunk's graph reaches a differentiable tensor that is not one of its ``inputs``
    (the carry's and the items' tensors, the parameters): the recomputation in the backward could
    not give it a gradient, which would then be lost without a word."""
    stops = {t.grad_fn for t in inputs if t.grad_fn is not None}
    leaves = {id(t) for t in inputs if t.grad_fn is None}
    stack = [leaf.grad_fn for leaf in flat if isinstance(leaf, torch.Tensor) and leaf.grad_fn is not None]
    seen = set()
    while stack:
        node = stack.pop()
        if node in seen or node in stops:
            continue
        seen.add(node)
        variable = getattr(node, "variable", None)  # an AccumulateGrad node: a leaf tensor
        if (variable is not None and id(variable) not in leaves) or (
            variable is None and node._sequence_nr() < first_node
        ):
            raise RuntimeError(
                f"remat_chunk: the step at time {start} reads a tensor that requires a gradient but is "
                "neither in the state, in the encoded items, z nor a parameter of the model (e.g. a "
                "tensor that encode() kept on the model): the recomputed backward could not pass "
                "its gradient on. Return it in encode()'s per-step items or in the state, or run "
                "without remat_chunk"
            )
        stack.extend(fn for fn, _ in node.next_functions if fn is not None)


def _apply(chunk: _Chunk, params: Sequence[torch.Tensor]) -> tuple[Any, list]:
    """Run ``chunk`` as one :class:`_Recompute` node: ``(carry, outs)`` as the chunk returns them."""
    if not chunk.tensors and not params:  # nothing to differentiate: no graph to keep anyway
        return _pytree.tree_unflatten(chunk.run([]), chunk.out_spec)
    tensors = iter(_Recompute.apply(chunk, len(chunk.tensors), *chunk.tensors, *params))
    flat = [next(tensors) if leaf is _TENSOR else leaf for leaf in chunk.template]
    return _pytree.tree_unflatten(flat, chunk.out_spec)


def run_steps(
    body: Body,
    carry: Any,
    inputs: Sequence,
    anchor: torch.Tensor,
    params: Sequence[torch.Tensor] = (),
    remat_chunk: int | None = None,
    tbptt_chunk: int | None = None,
    generator: torch.Generator | None = None,
    masks: list[torch.Tensor] | None = None,
) -> tuple[Any, list]:
    """Run ``carry, out_t = body(t, carry, inputs[t])`` for ``t = 0 .. T - 1`` (see the module docstring).

    Args:
        body: one time step; it must draw its random numbers from the global RNG (or the
            accelerator's) or from ``generator``, keep no other state between calls but
            constants (a recomputation calls it again for the same ``t``), and read differentiable
            tensors only from ``carry``, ``inputs[t]`` and ``params``.
        carry: the state before step 0, a pytree of tensors (and ``None``).
        inputs: ``T`` per-step pytrees (e.g. the model's encoded items).
        anchor: a tensor on the data's device (an accelerator's RNG state is saved with the CPU's).
        params: the parameters the body reads (those that require a gradient).
        remat_chunk: recompute every this many steps in the backward (``None``: off).
        tbptt_chunk: detach the carry every this many steps (``None``: off).
        generator: the explicit ``torch.Generator`` the body draws from, if any.
        masks: ``T`` tensors ``[batch]`` bool, True where step ``t`` is within the sequence
            (``None``: every step is). Truncation detaches the carry of the sequences still running
            only (of a :class:`Carry`, only its ``state``); the carry's leaves must then be
            ``[batch, ...]``.

    Returns:
        ``(carry after step T - 1, [out_0, ..., out_{T-1}])``.
    """
    n_steps = len(inputs)
    if remat_chunk is None or remat_chunk >= n_steps or not torch.is_grad_enabled():
        return _run(body, 0, carry, inputs, tbptt_chunk, masks)
    if anchor.device.type not in ("cpu", "cuda"):
        # (only the CPU's and CUDA's random states are saved and replayed: elsewhere the
        # recomputation would draw other numbers and the gradients would be silently wrong)
        raise NotImplementedError(
            f"remat_chunk: checkpointed time steps replay the random draws of the CPU and CUDA only; "
            f"got data on {anchor.device.type!r} (run without remat_chunk there)"
        )
    params = [p for p in params if p.requires_grad]
    outs: list = []
    for start in range(0, n_steps, remat_chunk):
        chunk = _Chunk(
            body, start, carry, inputs[start : start + remat_chunk], tbptt_chunk, masks, generator, anchor
        )
        carry, chunk_outs = _apply(chunk, params)
        outs.extend(chunk_outs)
    return carry, outs
