"""Padded sequence batches and the order in which sequences are batched.

bbvae's data convention: a batch of sequences is ``x`` shaped ``[batch, time, *obs_shape]``
(batch-major), ``lengths`` shaped ``[batch]`` (long), and optional side ``inputs`` shaped
``[batch, time, d_in]``. Entries at ``t >= lengths[b]`` are padding and hold zeros.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch

__all__ = ["SequenceBatch", "batch_indices", "collate_sequences"]


class SequenceBatch(NamedTuple):
    """A padded batch of variable-length sequences.

    Attributes:
        x: observations ``[batch, time, *obs_shape]``; ``time`` is the longest length in the
            batch. Float frames for piano rolls (``[B, T, 88]``), long indices for text
            (``[B, T]``). Zeros past each sequence's length.
        lengths: ``[batch]`` long, the number of valid steps of each sequence (all >= 1).
        inputs: side inputs ``[batch, time, d_in]`` (for step ``t``, built from steps before
            ``t`` only), zeros at ``t >= lengths[b]``; or ``None``.
    """

    x: torch.Tensor
    lengths: torch.Tensor
    inputs: torch.Tensor | None = None

    @property
    def mask(self) -> torch.Tensor:
        """``[batch, time]`` bool, True where ``t < lengths[b]`` (on ``x``'s device)."""
        steps = torch.arange(self.x.shape[1], device=self.x.device)
        return steps.unsqueeze(0) < self.lengths.unsqueeze(1)


def _check_batch_size(batch_size: object) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int):
        raise TypeError(f"batch_size must be an int, got {type(batch_size).__name__}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    return batch_size


def _device_of(generator: torch.Generator | None) -> torch.device:
    """Where to draw a permutation: the generator's device (host memory without one)."""
    return generator.device if generator is not None else torch.device("cpu")


def batch_indices(
    lengths: Sequence[int],
    batch_size: int,
    *,
    shuffle: bool = False,
    generator: torch.Generator | None = None,
    drop_last: bool = False,
    sort_by_length: bool = False,
) -> list[list[int]]:
    """Split the indices ``0..n-1`` of ``n`` sequences into batches.

    This is the batch order used by :func:`~bbvae.data.pianoroll_batches` and
    :func:`~bbvae.data.text_batches`; call it yourself to know which sequence landed where.

    Args:
        lengths: the ``n`` sequence lengths (only used when ``sort_by_length``).
        batch_size: sequences per batch (the last batch may be smaller).
        shuffle: shuffle with ``torch.randperm(n, generator=generator)`` (drawn on the
            generator's device, the CPU without one). With ``sort_by_length`` the batches'
            composition is fixed and only their order is shuffled.
        generator: torch generator for reproducible shuffling (default: torch's global RNG).
        drop_last: drop a final batch smaller than ``batch_size``.
        sort_by_length: bucket by length: sort by decreasing length (ties keep their order),
            so every batch is in decreasing order of length (as
            ``torch.nn.utils.rnn.pack_padded_sequence(enforce_sorted=True)`` wants) and holds
            sequences of similar length, which wastes less padding.

    Returns:
        a list of batches, each a list of indices into the ``n`` sequences.
    """
    batch_size = _check_batch_size(batch_size)
    n = len(lengths)
    if sort_by_length:
        order = sorted(range(n), key=lambda i: -int(lengths[i]))
    elif shuffle:
        order = torch.randperm(n, generator=generator, device=_device_of(generator)).tolist()
    else:
        order = list(range(n))
    batches = [order[i : i + batch_size] for i in range(0, n, batch_size)]
    if drop_last and batches and len(batches[-1]) < batch_size:
        batches.pop()
    if sort_by_length and shuffle:
        perm = torch.randperm(len(batches), generator=generator, device=_device_of(generator))
        batches = [batches[i] for i in perm.tolist()]
    return batches


def collate_sequences(items: Sequence, inputs: Sequence[torch.Tensor] | None = None) -> SequenceBatch:
    """Pad ``B`` sequences into one :class:`SequenceBatch`: the ``collate_fn`` of sequence data.

    Args:
        items: ``B`` sequences, each a Tensor (or array) ``x_i`` ``[T_i, *obs_shape]``, ``T_i >= 1``,
            or a pair ``(x_i, inputs_i)`` with side inputs ``[T_i, d_in]`` (or None): the items of
            a sequence Dataset (see :mod:`bbvae.data.datasets`). All of one dtype and step shape.
        inputs: side inputs of plain-tensor ``items``, ``B`` tensors ``[T_i, d_in]`` (optional).

    Returns:
        ``SequenceBatch(x [B, max T_i, *obs_shape], lengths [B] long, inputs [B, max T_i, d_in]
        or None)``, zeros past each length, on the items' device and in their dtype.
    """
    items = list(items)
    if not items:
        raise ValueError("collate_sequences: expected at least one sequence, got none")
    if isinstance(items[0], (tuple, list)):
        if inputs is not None:
            raise ValueError("collate_sequences: give inputs inside the (x, inputs) items or apart, not both")
        pairs = [tuple(item) for item in items]
        if any(len(pair) != 2 for pair in pairs):
            raise ValueError("collate_sequences: expected items x or pairs (x, inputs)")
        items = [x for x, _ in pairs]
        inputs = [u for _, u in pairs]
        if all(u is None for u in inputs):
            inputs = None
        elif any(u is None for u in inputs):
            raise ValueError("collate_sequences: some items have side inputs and some do not")
    sequences = [torch.as_tensor(s) for s in items]
    for i, s in enumerate(sequences):
        if s.dim() == 0 or s.shape[0] == 0:
            raise ValueError(
                f"collate_sequences: expected sequence {i} of shape [T >= 1, ...], got {list(s.shape)}"
            )
    x = torch.nn.utils.rnn.pad_sequence(sequences, batch_first=True)  # [B, T_max, *obs]
    lengths = torch.tensor([s.shape[0] for s in sequences], dtype=torch.long, device=x.device)
    padded_inputs = None
    if inputs is not None:
        steps = [torch.as_tensor(u) for u in inputs]
        padded_inputs = torch.nn.utils.rnn.pad_sequence(steps, batch_first=True)  # [B, T_max, d_in]
    return SequenceBatch(x, lengths, padded_inputs)


def pad_sequences(seqs: Sequence[torch.Tensor], *, dtype=torch.float32, device=None) -> SequenceBatch:
    """Stack ``[T_i, ...]`` tensors into ``x`` ``[B, max T_i, ...]`` with zeros past each length,
    as ``dtype`` on ``device`` (no side inputs)."""
    batch = collate_sequences(seqs)
    return SequenceBatch(batch.x.to(dtype=dtype, device=device), batch.lengths.to(device), None)
