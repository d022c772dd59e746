"""Batch sources: what :meth:`~bbvae.training.Trainer.fit` iterates (see :mod:`bbvae.training`).

Anything with ``batches(batch_size, *, shuffle, generator)`` is a batch source; :func:`as_batch_source`
adapts Tensors, lists of sequences, a :class:`~bbvae.data.SequenceBatch` or a data set's split.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

from bbvae._validation import shape_str
from bbvae.data.batching import SequenceBatch, batch_indices, collate_sequences

__all__ = [
    "BatchSource",
    "DatasetSplit",
    "PaddedSequenceData",
    "SequenceData",
    "TensorData",
    "as_batch_source",
]


@runtime_checkable
class BatchSource(Protocol):
    """What :meth:`Trainer.fit` iterates: ``batches(batch_size, *, shuffle, generator)``.

    Returns an iterable of Tensor ``[batch, ...]`` or :class:`~bbvae.data.SequenceBatch`
    batches covering the data once. With ``shuffle`` the order must be drawn from ``generator``
    alone (so a resumed run replays it). An optional ``num_batches(batch_size) -> int`` lets the
    progress bar know the epoch length.
    """

    def batches(
        self, batch_size: int, *, shuffle: bool, generator: torch.Generator | None
    ) -> Iterable[torch.Tensor | SequenceBatch]: ...


def _order(n: int, batch_size: int, shuffle: bool, generator: torch.Generator | None) -> list[torch.Tensor]:
    perm = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    return list(perm.split(batch_size))


class TensorData:
    """Rows of a Tensor ``x`` ``[N, *obs_shape]`` in minibatches (static models).

    Each pass draws a permutation with ``torch.randperm(N, generator=generator)``; the last
    batch holds the ``N % batch_size`` remaining rows, if any.
    """

    def __init__(self, x: torch.Tensor) -> None:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"TensorData: expected x to be a torch.Tensor, got {type(x).__name__}")
        if x.dim() == 0 or x.shape[0] == 0:
            raise ValueError(f"TensorData: expected x of shape [N >= 1, ...], got {shape_str(list(x.shape))}")
        self.x = x

    def __len__(self) -> int:
        return self.x.shape[0]

    def num_batches(self, batch_size: int) -> int:
        return math.ceil(len(self) / batch_size)

    def batches(self, batch_size: int, *, shuffle: bool = False, generator=None) -> Iterator[torch.Tensor]:
        order = _order(len(self), batch_size, shuffle, generator)
        return (self.x[idx.to(self.x.device)] for idx in order)


class SequenceData:
    """A list of ragged sequences ``[T_i, *obs_shape]`` batched into padded SequenceBatches.

    Args:
        sequences: ``N`` Tensors (or arrays) ``[T_i, *obs_shape]``, ``T_i >= 1``, same
            ``obs_shape`` and dtype (long ``[T_i]`` for categorical data).
        inputs: optional ``N`` side-input Tensors ``[T_i, d_in]`` matching the sequences.

    Batches: ``SequenceBatch(x [B, T_max, *obs], lengths [B] long, inputs [B, T_max, d_in] or
    None)``, zero-padded, in the order of :func:`bbvae.data.batch_indices`.
    """

    def __init__(self, sequences: Sequence, inputs: Sequence | None = None) -> None:
        self.sequences = _as_tensor_list(sequences, "sequences")
        self.inputs = None if inputs is None else _as_tensor_list(inputs, "inputs")
        if self.inputs is not None:
            if len(self.inputs) != len(self.sequences):
                raise ValueError(
                    f"SequenceData: expected {len(self.sequences)} input sequences, got {len(self.inputs)}"
                )
            for i, (s, u) in enumerate(zip(self.sequences, self.inputs)):
                if u.shape[0] != s.shape[0]:
                    raise ValueError(
                        f"SequenceData: inputs[{i}] has {u.shape[0]} steps, expected {s.shape[0]} "
                        f"(the length of sequences[{i}])"
                    )
        self.lengths = [s.shape[0] for s in self.sequences]

    def __len__(self) -> int:
        return len(self.sequences)

    def num_batches(self, batch_size: int) -> int:
        return math.ceil(len(self) / batch_size)

    def batch(self, indices: Sequence[int]) -> SequenceBatch:
        """The padded batch of the sequences at ``indices``."""
        inputs = None if self.inputs is None else [self.inputs[i] for i in indices]
        return collate_sequences([self.sequences[i] for i in indices], inputs)

    def batches(self, batch_size: int, *, shuffle: bool = False, generator=None) -> Iterator[SequenceBatch]:
        order = batch_indices(self.lengths, batch_size, shuffle=shuffle, generator=generator)
        return (self.batch(idx) for idx in order)


def _as_tensor_list(items: Sequence, name: str) -> list[torch.Tensor]:
    if isinstance(items, (torch.Tensor, np.ndarray)) or not isinstance(items, Sequence):
        raise TypeError(
            f"SequenceData: expected {name} to be a list of [T, ...] tensors, got {type(items).__name__}"
        )
    if len(items) == 0:
        raise ValueError(f"SequenceData: expected at least one sequence in {name}, got none")
    out = []
    for i, s in enumerate(items):
        if not isinstance(s, (torch.Tensor, np.ndarray)):
            raise TypeError(
                f"SequenceData: expected {name}[{i}] to be a Tensor or array, got {type(s).__name__}"
            )
        t = torch.as_tensor(s)
        if t.dim() == 0 or t.shape[0] == 0:
            raise ValueError(
                f"SequenceData: expected {name}[{i}] of shape [T >= 1, ...], got {shape_str(list(t.shape))}"
            )
        if out and t.shape[1:] != out[0].shape[1:]:
            raise ValueError(
                f"SequenceData: {name}[{i}] has shape {shape_str(list(t.shape))}, but {name}[0] has "
                f"{shape_str(list(out[0].shape))}; all must agree after the time dimension"
            )
        out.append(t)
    return out


class PaddedSequenceData:
    """Rows of one padded :class:`~bbvae.data.SequenceBatch` holding a whole split.

    For example ``PaddedSequenceData(PianoRollData.load().full_batch("valid"))``. Each batch is
    cut to the longest length it contains.
    """

    def __init__(self, data: SequenceBatch) -> None:
        if not isinstance(data, SequenceBatch):
            raise TypeError(f"PaddedSequenceData: expected a SequenceBatch, got {type(data).__name__}")
        self.data = data
        self.lengths = data.lengths.tolist()

    def __len__(self) -> int:
        return len(self.lengths)

    def num_batches(self, batch_size: int) -> int:
        return math.ceil(len(self) / batch_size)

    def batch(self, indices: Sequence[int]) -> SequenceBatch:
        t_max = max(self.lengths[i] for i in indices)
        idx = torch.as_tensor(indices, dtype=torch.long, device=self.data.x.device)
        inputs = None if self.data.inputs is None else self.data.inputs[idx, :t_max]
        return SequenceBatch(self.data.x[idx, :t_max], self.data.lengths[idx], inputs)

    def batches(self, batch_size: int, *, shuffle: bool = False, generator=None) -> Iterator[SequenceBatch]:
        order = batch_indices(self.lengths, batch_size, shuffle=shuffle, generator=generator)
        return (self.batch(idx) for idx in order)


class DatasetSplit:
    """One split of a :mod:`bbvae.data` data set as a batch source.

    Calls ``dataset.batches(split, batch_size=..., shuffle=..., generator=..., **batch_kwargs)``,
    e.g. ``DatasetSplit(PianoRollData.load(), "train")`` or
    ``DatasetSplit(load_text(path), "train", seq_len=100)``.
    """

    def __init__(self, dataset: Any, split: str, **batch_kwargs: Any) -> None:
        if not callable(getattr(dataset, "batches", None)):
            raise TypeError(
                f"DatasetSplit: expected a data set with a batches() method, got {type(dataset).__name__}"
            )
        self.dataset = dataset
        self.split = split
        self.batch_kwargs = batch_kwargs

    def num_batches(self, batch_size: int) -> int | None:
        items = self.dataset.split(self.split) if callable(getattr(self.dataset, "split", None)) else None
        if isinstance(items, list) and not self.batch_kwargs.get("drop_last", False):
            return math.ceil(len(items) / batch_size)
        return None

    def batches(self, batch_size: int, *, shuffle: bool = False, generator=None) -> Iterable:
        return self.dataset.batches(
            self.split, batch_size=batch_size, shuffle=shuffle, generator=generator, **self.batch_kwargs
        )


def as_batch_source(data: Any, name: str = "data") -> BatchSource:
    """Adapt ``data`` to the :class:`BatchSource` protocol (see the module docstring).

    Raises:
        TypeError: ``data`` is of no supported kind (the message says how to wrap it).
    """
    if isinstance(data, torch.Tensor):
        return TensorData(data)
    if isinstance(data, SequenceBatch):
        return PaddedSequenceData(data)
    if isinstance(data, np.ndarray):
        raise TypeError(
            f"{name}: got a numpy array; convert it with torch.as_tensor(x, dtype=...) choosing the "
            "dtype of the model's parameters"
        )
    if isinstance(data, (list, tuple)):
        return SequenceData(data)
    if callable(getattr(data, "split", None)) and callable(getattr(data, "batches", None)):
        raise TypeError(
            f"{name}: got a {type(data).__name__} holding several splits; pick one with "
            f"DatasetSplit(data, 'train') (TextData also needs seq_len=...)"
        )
    if isinstance(data, BatchSource):
        return data
    raise TypeError(
        f"{name}: expected a Tensor [N, ...], a list of [T, ...] sequences, a SequenceBatch, a DatasetSplit "
        f"or an object with batches(batch_size, *, shuffle, generator), got {type(data).__name__}"
    )
