"""Character-level text: a vocabulary, contiguous splits, fixed-length pieces and batches.

Text batches hold categorical observations: ``x`` is ``[B, T]`` long character indices. The
side ``inputs`` are the one-hot encoding of the previous character, ``[B, T, V]``: zeros at
``t = 0`` (each piece starts without context) and past each piece's length, and
``inputs[b, t] = one_hot(x[b, t - 1])`` for ``1 <= t < lengths[b]``. This is the piano-roll
convention (inputs are the previous observation) without centring.
"""

from __future__ import annotations

import errno
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from .batching import SequenceBatch, batch_indices, collate_sequences
from .datasets import SequenceDataset
from .vocabulary import Vocabulary

__all__ = [
    "TextData",
    "TextDataset",
    "Vocabulary",
    "load_text",
    "text_batch",
    "text_batches",
    "text_sequences",
]

_SPLITS = ("train", "valid", "test")


def _split_fractions(fractions: Sequence[float]) -> tuple[float, float, float]:
    try:
        values = tuple(float(f) for f in fractions)
    except (TypeError, ValueError):
        raise TypeError(f"fractions: expected three numbers, got {fractions!r}") from None
    if len(values) != 3 or any(not math.isfinite(f) or f < 0 for f in values):
        raise ValueError(
            f"fractions: expected three non-negative (train, valid, test) fractions, got {fractions!r}"
        )
    if abs(sum(values) - 1.0) > 1e-6:
        raise ValueError(f"fractions: expected fractions summing to 1, got {fractions!r}")
    return values  # type: ignore[return-value]


class TextDataset(SequenceDataset):
    """Pieces of text as a sequence Dataset (see :mod:`bbvae.data.datasets`).

    Items are ``x_i`` long ``[T_i]`` or, with ``inputs=True``, ``(x_i, inputs_i)`` with
    ``inputs_i`` ``[T_i, V]`` the one-hot encoding of the previous character (zeros at ``t = 0``),
    in ``dtype``.

    Args:
        pieces: ``N`` 1-D long tensors of indices in ``0..vocab_size-1`` (e.g. from
            :func:`text_sequences`).
        vocab_size: V.
        inputs: give the one-hot previous characters as side inputs.
        dtype: floating dtype of the inputs.
    """

    def __init__(
        self, pieces: Sequence[torch.Tensor], vocab_size: int, *, inputs: bool = True, dtype=torch.float32
    ) -> None:
        super().__init__([torch.as_tensor(p).long() for p in pieces])
        self.vocab_size = vocab_size
        self.with_inputs = inputs
        self.dtype = dtype

    def __getitem__(self, index: int):
        x = self.sequences[index]  # [T]
        if not self.with_inputs:
            return x
        inputs = torch.zeros(x.shape[0], self.vocab_size, dtype=self.dtype, device=x.device)  # [T, V]
        inputs[1:].scatter_(1, x[:-1].unsqueeze(-1), 1.0)  # one-hot of the previous character
        return x, inputs


@dataclass(frozen=True, eq=False)
class TextData:
    """A character corpus split in three contiguous parts, with its vocabulary.

    Attributes:
        vocabulary: :class:`Vocabulary` of the whole corpus (all splits), so every split
            encodes.
        train, valid, test: str, consecutive slices of the corpus (a split may be empty when
            its fraction is 0).
    """

    vocabulary: Vocabulary
    train: str
    valid: str
    test: str

    def __repr__(self) -> str:
        sizes = ", ".join(f"{name}={len(getattr(self, name)):,} chars" for name in _SPLITS)
        return f"TextData(vocabulary of {self.vocabulary.size} chars, {sizes})"

    def split(self, name: str) -> str:
        """The text of split ``name`` ('train', 'valid' or 'test')."""
        if name not in _SPLITS:
            raise ValueError(f"split: expected one of {list(_SPLITS)}, got {name!r}")
        return getattr(self, name)

    def sequences(self, name: str, seq_len: int, *, drop_last: bool = False) -> list[torch.Tensor]:
        """Split ``name`` cut into pieces; see :func:`text_sequences`."""
        return text_sequences(self.split(name), self.vocabulary, seq_len, drop_last=drop_last)

    def dataset(
        self, name: str, seq_len: int, *, inputs: bool = True, drop_last: bool = False, dtype=torch.float32
    ) -> TextDataset:
        """Split ``name`` cut into pieces of ``seq_len`` characters, as a :class:`TextDataset`."""
        pieces = self.sequences(name, seq_len, drop_last=drop_last)
        return TextDataset(pieces, self.vocabulary.size, inputs=inputs, dtype=dtype)

    def batches(
        self,
        name: str,
        seq_len: int,
        batch_size: int,
        *,
        shuffle: bool = False,
        generator: torch.Generator | None = None,
        drop_last: bool = False,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> Iterator[SequenceBatch]:
        """One pass over split ``name`` cut into ``seq_len`` pieces; see :func:`text_batches`."""
        return text_batches(
            self.sequences(name, seq_len),
            batch_size,
            self.vocabulary.size,
            shuffle=shuffle,
            generator=generator,
            drop_last=drop_last,
            dtype=dtype,
            device=device,
        )

    def full_batch(
        self,
        name: str,
        seq_len: int,
        *,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> SequenceBatch:
        """All pieces of split ``name`` as one batch (for evaluation); see :func:`text_batch`."""
        return text_batch(self.sequences(name, seq_len), self.vocabulary.size, dtype=dtype, device=device)


def load_text(
    path: str | os.PathLike,
    fractions: Sequence[float] = (0.9, 0.05, 0.05),
    *,
    encoding: str = "utf-8",
) -> TextData:
    """Read a text file and split it by contiguous fractions.

    With ``N`` characters, train is the first ``floor(N * fractions[0])`` characters, valid
    runs up to ``floor(N * (fractions[0] + fractions[1]))`` and test is the rest; a zero
    fraction gives an empty split. The vocabulary is built from the
    whole file (:meth:`Vocabulary.from_corpus`). Line endings are kept as they are in the file.

    Args:
        path: a text file.
        fractions: the (train, valid, test) fractions, non-negative and summing to 1.
        encoding: the file's encoding.

    Returns:
        TextData with the vocabulary and the three splits.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file is empty or not valid ``encoding`` text, or bad ``fractions``.
    """
    f_train, f_valid, f_test = _split_fractions(fractions)
    file = Path(path)
    if not file.is_file():
        if file.is_dir():
            raise IsADirectoryError(errno.EISDIR, "Expected a text file, got a directory", str(file))
        raise FileNotFoundError(errno.ENOENT, "No such text file", str(file))
    try:
        with open(file, encoding=encoding, newline="") as handle:
            text = handle.read()
    except UnicodeDecodeError as exc:
        raise ValueError(f"{file}: not valid {encoding} text ({exc})") from exc
    if not text:
        raise ValueError(f"{file}: the file is empty")
    n = len(text)
    end_train = math.floor(n * f_train)
    end_valid = (
        end_train if f_valid == 0 else n if f_test == 0 else min(math.floor(n * (f_train + f_valid)), n)
    )
    return TextData(
        vocabulary=Vocabulary.from_corpus(text),
        train=text[:end_train],
        valid=text[end_train:end_valid],
        test=text[end_valid:],
    )


def text_sequences(
    text: str,
    vocabulary: Vocabulary,
    seq_len: int,
    *,
    drop_last: bool = False,
    device: torch.device | str | None = None,
) -> list[torch.Tensor]:
    """Cut ``text`` into consecutive, non-overlapping pieces of ``seq_len`` characters.

    Args:
        text: the text to cut (every character must be in ``vocabulary``).
        vocabulary: the character-to-index map.
        seq_len: characters per piece; the last piece is shorter when ``seq_len`` does not
            divide ``len(text)``.
        drop_last: drop that shorter last piece.
        device: device of the pieces (None: torch's default device).

    Returns:
        a list of 1-D long tensors ``[seq_len]`` (the last possibly shorter), views of one
        encoded tensor. Empty for an empty text.
    """
    if isinstance(seq_len, bool) or not isinstance(seq_len, int):
        raise TypeError(f"seq_len: expected an int, got {type(seq_len).__name__}")
    if seq_len < 1:
        raise ValueError(f"seq_len: expected an int >= 1, got {seq_len}")
    encoded = vocabulary.encode(text, device=device)  # [N]
    pieces = list(torch.split(encoded, seq_len))
    if drop_last and pieces and pieces[-1].numel() < seq_len:
        pieces.pop()
    return pieces


def text_batch(
    sequences: Sequence[torch.Tensor],
    vocab_size: int,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> SequenceBatch:
    """Pad character sequences into one batch; usable as a DataLoader ``collate_fn``.

    Args:
        sequences: ``B`` 1-D long tensors (or lists) ``[T_b]`` of indices in
            ``0..vocab_size-1``, ``T_b >= 1``.
        vocab_size: V, the width of the one-hot inputs.
        dtype: floating dtype of ``inputs``.
        device: device of all returned tensors (None: torch's default device).

    Returns:
        SequenceBatch with ``x`` ``[B, T_max]`` long (0 past each length: mind ``lengths``,
        0 is also a character), ``lengths`` ``[B]`` long, and ``inputs`` ``[B, T_max, V]`` in
        ``dtype``: ``inputs[b, t] = one_hot(x[b, t - 1])`` for ``1 <= t < lengths[b]``,
        zeros elsewhere.
    """
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating torch.dtype, got {dtype!r}")
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 1:
        raise ValueError(f"vocab_size: expected an int >= 1, got {vocab_size!r}")
    if len(sequences) == 0:
        raise ValueError("sequences: expected at least one sequence, got none")
    seqs = [torch.as_tensor(s, device=device) for s in sequences]
    for i, s in enumerate(seqs):
        if s.ndim != 1 or s.numel() < 1:
            raise ValueError(f"sequences[{i}]: expected shape [T >= 1], got {list(s.shape)}")
        if s.is_floating_point() or s.dtype == torch.bool:
            raise TypeError(f"sequences[{i}]: expected integer indices, got {s.dtype}")
    x = torch.nn.utils.rnn.pad_sequence(seqs, batch_first=True)  # [B, T] (to check the range)
    low, high = int(x.min()), int(x.max())
    if low < 0 or high >= vocab_size:
        raise ValueError(f"sequences: expected indices in 0..{vocab_size - 1}, got values in {low}..{high}")
    data = TextDataset(seqs, vocab_size, dtype=dtype)
    return collate_sequences([data[i] for i in range(len(data))])


def text_batches(
    sequences: Sequence[torch.Tensor],
    batch_size: int,
    vocab_size: int,
    *,
    shuffle: bool = False,
    generator: torch.Generator | None = None,
    drop_last: bool = False,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> Iterator[SequenceBatch]:
    """Iterate over character sequences in padded batches (one pass).

    The order is drawn when called, by :func:`~bbvae.data.batch_indices`.

    Args:
        sequences: ``N`` 1-D long tensors, e.g. from :func:`text_sequences`.
        batch_size: sequences per batch.
        vocab_size: V, the width of the one-hot inputs.
        shuffle, generator, drop_last: see :func:`~bbvae.data.batch_indices`.
        dtype, device: see :func:`text_batch`.

    Returns:
        an iterator of :class:`SequenceBatch` as described in :func:`text_batch`.
    """
    if len(sequences) == 0:
        raise ValueError("sequences: expected at least one sequence, got none")
    order = batch_indices(
        [len(s) for s in sequences],
        batch_size,
        shuffle=shuffle,
        generator=generator,
        drop_last=drop_last,
    )
    return (text_batch([sequences[i] for i in idx], vocab_size, dtype=dtype, device=device) for idx in order)
