"""Data as ``torch.utils.data`` Datasets: the contract every bbvae data set follows.

A **sequence Dataset** is a map-style :class:`torch.utils.data.Dataset` whose items are single
sequences:

* ``len(dataset)`` is the number of sequences; ``dataset[i]`` is one sequence, either a Tensor
  ``x_i`` ``[T_i, *obs_shape]`` (float frames, or long ``[T_i]`` symbols) or a pair
  ``(x_i, inputs_i)`` with side inputs ``[T_i, d_in]`` computed from the sequence alone (for
  step ``t`` from steps before ``t`` only). ``T_i >= 1``. Items are CPU tensors; the trainer moves
  batches to the model's device and float data to the model's dtype.
* ``dataset.lengths`` lists every ``T_i`` (so length bucketing needs no pass over the data).
* ``dataset.collate_fn`` is :func:`~bbvae.data.collate_sequences`, the one collate function:
  it pads a list of items into ``SequenceBatch(x [B, T_max, *obs_shape], lengths [B],
  inputs [B, T_max, d_in] or None)`` with zeros past each length. The trainer batches a Dataset
  with its ``collate_fn`` (``default_collate``, which stacks rows, when it has none).

:class:`SequenceDataset` holds any list of sequences; the data sets of :mod:`bbvae.data` give
their splits as such Datasets (``PianoRollData.dataset("train")``, ``TextData.dataset("train",
seq_len=100)``, ``SyntheticData.dataset("train")``). Batch them yourself with
``DataLoader(dataset, batch_size=4, shuffle=True, collate_fn=collate_sequences)`` or with a
:class:`~bbvae.data.BucketBatchSampler` (``batch_sampler=BucketBatchSampler(dataset.lengths, 4)``).

:class:`TensorRows` gives the rows of a Tensor ``[N, *obs_shape]`` (static models) as a Dataset.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import ConcatDataset, Dataset, Subset, default_collate

from .batching import SequenceBatch, collate_sequences

__all__ = ["SequenceDataset", "TensorRows", "collate_fn_of", "sequence_lengths"]


def _shape(t: torch.Tensor) -> str:
    return "[" + ", ".join(str(s) for s in t.shape) + "]"


def _as_tensors(items: Sequence, name: str, where: str) -> list[torch.Tensor]:
    if isinstance(items, (torch.Tensor, np.ndarray)) or not isinstance(items, Sequence):
        raise TypeError(
            f"{where}: expected {name} to be a list of [T, ...] tensors, got {type(items).__name__}"
        )
    if len(items) == 0:
        raise ValueError(f"{where}: expected at least one sequence in {name}, got none")
    out: list[torch.Tensor] = []
    for i, s in enumerate(items):
        if not isinstance(s, (torch.Tensor, np.ndarray)):
            raise TypeError(f"{where}: expected {name}[{i}] to be a Tensor or array, got {type(s).__name__}")
        t = torch.as_tensor(s)
        if t.dim() == 0 or t.shape[0] == 0:
            raise ValueError(f"{where}: expected {name}[{i}] of shape [T >= 1, ...], got {_shape(t)}")
        if out and t.shape[1:] != out[0].shape[1:]:
            raise ValueError(
                f"{where}: {name}[{i}] has shape {_shape(t)}, but {name}[0] has {_shape(out[0])}; "
                "all must agree after the time dimension"
            )
        out.append(t)
    return out


class SequenceDataset(Dataset):
    """A list of ragged sequences (and optional side inputs) as a sequence Dataset.

    Args:
        sequences: ``N`` Tensors (or arrays) ``[T_i, *obs_shape]``, ``T_i >= 1``, of one step shape
            and dtype (long ``[T_i]`` for symbols).
        inputs: optional ``N`` side-input Tensors ``[T_i, d_in]`` matching the sequences.

    Items are ``sequences[i]``, or ``(sequences[i], inputs[i])`` with inputs.

    Attributes:
        lengths (list[int]): ``T_i`` of every sequence.
    """

    collate_fn = staticmethod(collate_sequences)

    def __init__(self, sequences: Sequence, inputs: Sequence | None = None) -> None:
        where = type(self).__name__
        self.sequences = _as_tensors(sequences, "sequences", where)
        self.inputs = None if inputs is None else _as_tensors(inputs, "inputs", where)
        if self.inputs is not None:
            if len(self.inputs) != len(self.sequences):
                raise ValueError(
                    f"{where}: expected {len(self.sequences)} input sequences, got {len(self.inputs)}"
                )
            for i, (s, u) in enumerate(zip(self.sequences, self.inputs)):
                if u.shape[0] != s.shape[0]:
                    raise ValueError(
                        f"{where}: inputs[{i}] has {u.shape[0]} steps, expected {s.shape[0]} "
                        f"(the length of sequences[{i}])"
                    )
        self.lengths = [s.shape[0] for s in self.sequences]

    def __len__(self) -> int:
        return len(self.sequences)

    def __getitem__(self, index: int):
        if self.inputs is None:
            return self.sequences[index]
        return self.sequences[index], self.inputs[index]

    @classmethod
    def from_batch(cls, batch: SequenceBatch) -> SequenceDataset:
        """The rows of a padded :class:`~bbvae.data.SequenceBatch`, each cut to its length."""
        lengths = batch.lengths.tolist()
        sequences = [row[:n] for row, n in zip(batch.x.unbind(0), lengths)]
        inputs = None
        if batch.inputs is not None:
            inputs = [row[:n] for row, n in zip(batch.inputs.unbind(0), lengths)]
        return cls(sequences, inputs)


class TensorRows(Dataset):
    """The rows of a Tensor ``x`` ``[N, *obs_shape]`` (a static model's data) as a Dataset.

    ``__getitems__`` fetches a whole batch with one indexing operation; batches collate to
    ``[B, *obs_shape]``.
    """

    collate_fn = staticmethod(default_collate)

    def __init__(self, x: torch.Tensor) -> None:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"TensorRows: expected x to be a torch.Tensor, got {type(x).__name__}")
        if x.dim() == 0 or x.shape[0] == 0:
            raise ValueError(f"TensorRows: expected x of shape [N >= 1, ...], got {_shape(x)}")
        self.x = x

    def __len__(self) -> int:
        return self.x.shape[0]

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.x[index]

    def __getitems__(self, indices: list[int]) -> list[torch.Tensor]:
        rows = self.x[torch.as_tensor(indices, dtype=torch.long, device=self.x.device)]
        return list(rows.unbind(0))


def collate_fn_of(dataset: Dataset):
    """The ``collate_fn`` a Dataset asks for (looking through ``Subset`` / ``ConcatDataset``),
    else ``default_collate``."""
    while True:
        fn = getattr(dataset, "collate_fn", None)
        if fn is not None:
            return fn
        if isinstance(dataset, Subset):
            dataset = dataset.dataset
        elif isinstance(dataset, ConcatDataset) and dataset.datasets:
            dataset = dataset.datasets[0]
        else:
            return default_collate


def sequence_lengths(dataset: Dataset) -> list[int] | None:
    """``dataset.lengths`` (through ``Subset`` / ``ConcatDataset``), or None when it has none."""
    lengths = getattr(dataset, "lengths", None)
    if lengths is not None:
        return [int(n) for n in lengths]
    if isinstance(dataset, Subset):
        inner = sequence_lengths(dataset.dataset)
        return None if inner is None else [inner[i] for i in dataset.indices]
    if isinstance(dataset, ConcatDataset):
        parts = [sequence_lengths(d) for d in dataset.datasets]
        return None if any(p is None for p in parts) else [n for p in parts for n in p]
    return None
