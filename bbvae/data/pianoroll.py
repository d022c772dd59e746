"""Polyphonic piano rolls in the Boulanger-Lewandowski et al. (ICML 2012) pickle format.

A piano-roll pickle holds a dict with the keys ``'train'``, ``'valid'`` and ``'test'``. Each is a
list of sequences, a sequence is a list of time steps, and a time step is a tuple (or list, or
1-D integer ndarray) of the MIDI note numbers sounding at that step, each in 21..108. Both the
normalised pickles (built-in types only) and the published JSB Chorales pickle (numpy ``int64``
scalars, pickle protocol 2) load. An empty time step is a rest.

In memory a sequence is a bool array ``[T, 88]``; column ``j`` stands for MIDI note ``21 + j``.

Batches follow the FIVO reference code (tensorflow/models, research/fivo, ``datasets.py``):
targets ``x`` are the binary frames; ``inputs`` are the frames minus the training-set mean,
shifted one step forward in time (zeros at ``t = 0``) and zeroed past each sequence's length.
The training-set mean is taken over all training time steps (``calculate_pianoroll_mean.py``).

Reference: N. Boulanger-Lewandowski, Y. Bengio and P. Vincent, "Modeling Temporal Dependencies in
High-Dimensional Sequences: Application to Polyphonic Music Generation and Transcription",
ICML 2012.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch

from .batching import SequenceBatch, batch_indices, collate_sequences
from .datasets import SequenceDataset
from .pianoroll_pickle import (
    HIGHEST_NOTE,
    JSB_CHORALES_SHA256,
    LOWEST_NOTE,
    NUM_KEYS,
    SPLITS,
    PianoRollFormatError,
    load_pianoroll,
    notes_to_roll,
    pianorolls_from_notes,
    roll_to_notes,
)

__all__ = [
    "HIGHEST_NOTE",
    "JSB_CHORALES_SHA256",
    "LOWEST_NOTE",
    "NUM_KEYS",
    "SPLITS",
    "PianoRollData",
    "PianoRollDataset",
    "PianoRollFormatError",
    "load_pianoroll",
    "notes_to_roll",
    "pianoroll_batch",
    "pianoroll_batches",
    "pianorolls_from_notes",
    "roll_to_notes",
]


def _as_rolls(rolls: Sequence, name: str) -> list[np.ndarray]:
    """Check a list of ``[T_i, D]`` arrays (same D, T_i >= 1); return them as ndarrays."""
    if isinstance(rolls, np.ndarray) or not isinstance(rolls, Sequence):
        raise TypeError(f"{name}: expected a list of [T, D] arrays, got {type(rolls).__name__}")
    if len(rolls) == 0:
        raise ValueError(f"{name}: expected at least one sequence, got none")
    arrays = [np.asarray(r) for r in rolls]
    width = arrays[0].shape[-1] if arrays[0].ndim == 2 else None
    for i, a in enumerate(arrays):
        if a.ndim != 2 or a.shape[0] < 1 or a.shape[1] != width:
            expected = f"[T >= 1, {width}]" if width is not None else "[T >= 1, D]"
            raise ValueError(f"{name}[{i}]: expected shape {expected}, got {list(a.shape)}")
    return arrays


def _check_float_dtype(dtype: torch.dtype) -> None:
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating torch.dtype, got {dtype!r}")


def pianoroll_batch(
    rolls: Sequence[np.ndarray],
    *,
    mean: np.ndarray | torch.Tensor | None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> SequenceBatch:
    """Pad piano rolls into one batch with FIVO-style inputs.

    Also usable as a ``collate_fn``:
    ``DataLoader(data.train, batch_size=4, shuffle=True,
    collate_fn=functools.partial(pianoroll_batch, mean=data.train_mean))``.

    Args:
        rolls: ``B`` arrays ``[T_b, D]`` of 0/1 frames (``D = 88`` for piano rolls), ``T_b >= 1``.
        mean: ``[D]`` the training-set mean subtracted from the inputs
            (:attr:`PianoRollData.train_mean`); None subtracts nothing. Required, so that
            forgetting the centring is a visible choice.
        dtype: floating dtype of ``x`` and ``inputs``.
        device: device of all returned tensors (None: torch's default device).

    Returns:
        SequenceBatch with ``x`` ``[B, T_max, D]`` the frames (zeros past each length),
        ``lengths`` ``[B]`` long, and ``inputs`` ``[B, T_max, D]`` where
        ``inputs[b, 0] = 0``, ``inputs[b, t] = x[b, t - 1] - mean`` for
        ``1 <= t < lengths[b]`` and ``inputs[b, t] = 0`` for ``t >= lengths[b]``.
    """
    _check_float_dtype(dtype)
    arrays = _as_rolls(rolls, "rolls")
    data = PianoRollDataset(arrays, mean=mean, dtype=dtype)
    batch = collate_sequences([data[i] for i in range(len(data))])
    return SequenceBatch(*(t.to(device) for t in batch))


def pianoroll_batches(
    rolls: Sequence[np.ndarray],
    batch_size: int,
    *,
    mean: np.ndarray | torch.Tensor | None,
    shuffle: bool = False,
    generator: torch.Generator | None = None,
    drop_last: bool = False,
    sort_by_length: bool = False,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> Iterator[SequenceBatch]:
    """Iterate over a list of piano rolls in padded batches (one pass).

    The batch order is drawn when this function is called, by
    :func:`~bbvae.data.batch_indices` with the same arguments (call it to know which sequence
    went where); arguments are checked at once too.

    Args:
        rolls: ``N`` arrays ``[T_i, D]`` of 0/1 frames.
        batch_size: sequences per batch.
        mean: ``[D]`` mean subtracted from the inputs, or None; see :func:`pianoroll_batch`.
        shuffle, generator, drop_last, sort_by_length: see :func:`~bbvae.data.batch_indices`.
        dtype, device: of the batch tensors; see :func:`pianoroll_batch`.

    Returns:
        an iterator of :class:`SequenceBatch`, each as described in :func:`pianoroll_batch`.
    """
    _check_float_dtype(dtype)
    arrays = _as_rolls(rolls, "rolls")
    order = batch_indices(
        [a.shape[0] for a in arrays],
        batch_size,
        shuffle=shuffle,
        generator=generator,
        drop_last=drop_last,
        sort_by_length=sort_by_length,
    )
    return (pianoroll_batch([arrays[i] for i in idx], mean=mean, dtype=dtype, device=device) for idx in order)


class PianoRollDataset(SequenceDataset):
    """Piano rolls as a sequence Dataset (see :mod:`bbvae.data.datasets`), FIVO-style inputs.

    Items are ``(x_i, inputs_i)``: ``x_i`` ``[T_i, D]`` the 0/1 frames in ``dtype`` and
    ``inputs_i`` ``[T_i, D]`` with ``inputs_i[0] = 0`` and ``inputs_i[t] = x_i[t - 1] - mean``;
    with ``inputs=False`` items are ``x_i`` alone.

    Args:
        rolls: ``N`` arrays ``[T_i, D]`` of 0/1 frames, ``T_i >= 1``.
        mean: ``[D]`` subtracted from the inputs (:attr:`PianoRollData.train_mean`), or None.
        inputs: give the shifted, centred frames as side inputs.
        dtype: floating dtype of the items.
    """

    def __init__(
        self, rolls: Sequence[np.ndarray], *, mean=None, inputs: bool = True, dtype=torch.float32
    ) -> None:
        _check_float_dtype(dtype)
        super().__init__(_as_rolls(rolls, "rolls"))
        width = self.sequences[0].shape[1]
        self.mean = None if mean is None else torch.as_tensor(mean, dtype=dtype)
        if self.mean is not None and self.mean.shape != (width,):
            raise ValueError(f"mean: expected shape [{width}], got {list(self.mean.shape)}")
        self.with_inputs = inputs
        self.dtype = dtype

    def __getitem__(self, index: int):
        x = self.sequences[index].to(self.dtype)  # [T, D]
        if not self.with_inputs:
            return x
        centred = x if self.mean is None else x - self.mean
        inputs = torch.zeros_like(x)
        inputs[1:] = centred[:-1]
        return x, inputs


@dataclass(frozen=True, eq=False)
class PianoRollData:
    """The three splits of a piano-roll data set.

    Build it with :meth:`load` (a Boulanger-Lewandowski pickle, by default the embedded JSB
    Chorales) or directly from lists of rolls (for instance from
    :func:`~bbvae.data.load_midi_folder`).

    Args:
        train, valid, test: each a non-empty list of 0/1 arrays ``[T_i, 88]``, ``T_i >= 1``.

    Attributes:
        train_mean: ``[88]`` float64, the mean of the training frames over all training time
            steps (each step weighs the same, so long sequences weigh more), as FIVO's
            ``calculate_pianoroll_mean.py`` computes it.
    """

    train: list[np.ndarray]
    valid: list[np.ndarray]
    test: list[np.ndarray]

    def __post_init__(self) -> None:
        for split in SPLITS:
            arrays = _as_rolls(getattr(self, split), split)
            if arrays[0].shape[1] != NUM_KEYS:
                raise ValueError(f"{split}[0]: expected shape [T, {NUM_KEYS}], got {list(arrays[0].shape)}")
            for i, a in enumerate(arrays):
                if a.dtype != np.bool_ and not np.array_equal(a, a.astype(bool)):
                    raise ValueError(f"{split}[{i}]: expected 0/1 frames, got other values")

    @classmethod
    def load(cls, path: str | os.PathLike | None = None) -> PianoRollData:
        """Load a piano-roll pickle (None: the embedded JSB Chorales); see `load_pianoroll`."""
        return cls(**load_pianoroll(path))

    def split(self, name: str) -> list[np.ndarray]:
        """The list of ``[T_i, 88]`` rolls of split ``name`` ('train', 'valid' or 'test')."""
        if name not in SPLITS:
            raise ValueError(f"split: expected one of {list(SPLITS)}, got {name!r}")
        return getattr(self, name)

    def num_steps(self, name: str) -> int:
        """Total number of time steps of split ``name`` (to report bounds per step)."""
        return sum(a.shape[0] for a in self.split(name))

    def __repr__(self) -> str:
        sizes = ", ".join(
            f"{name}={len(self.split(name))} sequences/{self.num_steps(name):,} steps" for name in SPLITS
        )
        return f"PianoRollData({sizes})"

    @cached_property
    def train_mean(self) -> np.ndarray:
        """``[88]`` float64, the mean training frame over all training time steps."""
        total = np.zeros(NUM_KEYS, dtype=np.int64)
        for a in self.train:
            total += a.sum(axis=0, dtype=np.int64)
        return total / self.num_steps("train")

    def dataset(
        self, name: str, *, inputs: bool = True, dtype: torch.dtype = torch.float32
    ) -> PianoRollDataset:
        """Split ``name`` as a :class:`PianoRollDataset`, inputs centred by :attr:`train_mean`."""
        return PianoRollDataset(self.split(name), mean=self.train_mean, inputs=inputs, dtype=dtype)

    def batches(
        self,
        name: str,
        batch_size: int,
        *,
        shuffle: bool = False,
        generator: torch.Generator | None = None,
        drop_last: bool = False,
        sort_by_length: bool = False,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> Iterator[SequenceBatch]:
        """One pass over split ``name`` in batches, inputs centred by :attr:`train_mean`.

        See :func:`pianoroll_batches` for the arguments and the batch layout.
        """
        return pianoroll_batches(
            self.split(name),
            batch_size,
            mean=self.train_mean,
            shuffle=shuffle,
            generator=generator,
            drop_last=drop_last,
            sort_by_length=sort_by_length,
            dtype=dtype,
            device=device,
        )

    def full_batch(
        self,
        name: str,
        *,
        sort_by_length: bool = False,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> SequenceBatch:
        """The whole split ``name`` as one padded batch (for evaluation).

        Args:
            name: 'train', 'valid' or 'test'.
            sort_by_length: order the sequences by decreasing length (stable); otherwise they
                keep the file order.
            dtype, device: of the tensors.

        Returns:
            SequenceBatch ``x`` ``[N, T_max, 88]``, ``lengths`` ``[N]``, ``inputs``
            ``[N, T_max, 88]`` as in :func:`pianoroll_batch`. Mind the memory:
            ``N * T_max * 88`` elements twice (about 9 MB for the JSB test split in float32,
            370 MB for MuseData's).
        """
        rolls = self.split(name)
        (order,) = batch_indices([a.shape[0] for a in rolls], len(rolls), sort_by_length=sort_by_length)
        return pianoroll_batch([rolls[i] for i in order], mean=self.train_mean, dtype=dtype, device=device)
