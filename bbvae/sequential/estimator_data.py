"""What :class:`~bbvae.sequential.SequenceModel` accepts as data, and what it learns from it.

:func:`to_sequences` turns any supported form (a data set's split, a list of ``[T_i, ...]`` tensors or
arrays, a :class:`~bbvae.data.SequenceBatch`, a Tensor ``[N, T, ...]``) into a list of tensors;
:func:`data_info` reads the observation kind and size and the training statistics the model is
built from (the FIVO centring mean, symbol frequencies, the text vocabulary).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset

from bbvae._validation import shape_str
from bbvae.data.batching import SequenceBatch

__all__ = ["DataInfo", "data_info", "is_binary", "is_dataset", "is_text", "to_sequences"]

_DEFAULT_TEXT_LENGTH = 100


class DataInfo:
    """What the model is built from: the observation kind and size and the training statistics."""

    def __init__(self, kind: str, obs_shape: tuple[int, ...], n_categories: int | None, mean, vocabulary):
        self.kind = kind  # "float" or "long"
        self.obs_shape = obs_shape
        self.n_categories = n_categories
        self.mean = mean  # [*obs_shape] float64 (float data) or [V] frequencies (symbols), or None
        self.vocabulary = vocabulary


def is_dataset(X: Any) -> bool:
    return callable(getattr(X, "split", None)) and callable(getattr(X, "batches", None))


def is_text(X: Any) -> bool:
    return is_dataset(X) and hasattr(X, "vocabulary") and callable(getattr(X, "sequences", None))


def to_sequences(X: Any, split: str, max_length: int | None, where: str) -> list[torch.Tensor]:
    """The sequences of ``X`` (of ``split`` for data sets) as a list of ``[T_i, *obs_shape]`` tensors.

    Float data take torch's default dtype; integer data stay long; booleans become floats.
    Sequences longer than ``max_length`` are cut to their first ``max_length`` steps (text data
    sets are cut into pieces of ``max_length`` characters instead).
    """
    if isinstance(X, DataLoader):
        X = X.dataset
    if isinstance(X, IterableDataset):
        raise TypeError(
            f"{where}: got an IterableDataset; the model is built from statistics of all the training "
            "sequences, so pass a map-style Dataset (or a DataLoader over one)"
        )
    if isinstance(X, Dataset):
        items = (X[i] for i in range(len(X)))
        seqs = [item[0] if isinstance(item, (tuple, list)) else item for item in items]
    elif is_text(X):
        seqs = list(X.sequences(split, max_length or _DEFAULT_TEXT_LENGTH))
        max_length = None
    elif is_dataset(X):
        seqs = list(X.split(split))
    elif isinstance(X, SequenceBatch):
        lengths = [int(n) for n in X.lengths.tolist()]
        if len(lengths) != X.x.shape[0]:
            raise ValueError(
                f"{where}: the SequenceBatch has {X.x.shape[0]} sequences but {len(lengths)} lengths"
            )
        seqs = [row[:n] for row, n in zip(X.x.unbind(0), lengths)]
    elif isinstance(X, (torch.Tensor, np.ndarray)):
        if X.ndim < 2:
            raise ValueError(
                f"{where}: expected X of shape [N, T, *obs_shape], got {shape_str(list(X.shape))}"
            )
        seqs = list(torch.as_tensor(X).unbind(0))
    elif isinstance(X, (list, tuple)):
        seqs = list(X)
    else:
        raise TypeError(
            f"{where}: expected X to be a PianoRollData / TextData / SyntheticData, a torch Dataset or "
            f"DataLoader of sequences, a list of [T, ...] sequences, a SequenceBatch or a Tensor "
            f"[N, T, ...], got {type(X).__name__}"
        )
    if not seqs:
        raise ValueError(f"{where}: expected at least one sequence, got none (split {split!r})")
    out = []
    for i, s in enumerate(seqs):
        if not isinstance(s, (torch.Tensor, np.ndarray)):
            raise TypeError(f"{where}: expected sequence {i} to be a Tensor or array, got {type(s).__name__}")
        t = torch.as_tensor(s)
        if t.dim() == 0 or t.shape[0] == 0:
            raise ValueError(
                f"{where}: expected sequence {i} of shape [T >= 1, ...], got {shape_str(list(t.shape))}"
            )
        if t.dtype == torch.bool:
            t = t.to(torch.get_default_dtype())
        elif t.is_floating_point():
            t = t.to(torch.get_default_dtype())
        elif t.is_complex():
            raise TypeError(f"{where}: complex sequences are not supported (sequence {i})")
        else:
            t = t.long()
        if max_length is not None:
            t = t[:max_length]
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise ValueError(f"{where}: sequence {i} holds NaN or infinite values; clean the data first")
        if out and (t.shape[1:] != out[0].shape[1:] or t.dtype != out[0].dtype):
            raise ValueError(
                f"{where}: sequence {i} has steps of shape {shape_str(list(t.shape[1:]))} ({t.dtype}), "
                f"sequence 0 has {shape_str(list(out[0].shape[1:]))} ({out[0].dtype}); all must agree"
            )
        out.append(t)
    return out


def data_info(X: Any, seqs: list[torch.Tensor], where: str) -> DataInfo:
    first = seqs[0]
    vocabulary = X.vocabulary if is_text(X) else None
    if first.is_floating_point():
        if first.dim() != 2:
            raise ValueError(
                f"{where}: expected float sequences of shape [T, D], got steps of shape "
                f"{shape_str(list(first.shape[1:]))}"
            )
        train_mean = getattr(X, "train_mean", None)
        if train_mean is not None:  # piano rolls: the FIVO mean over all training steps
            mean = torch.as_tensor(np.asarray(train_mean), dtype=torch.float64)
        else:
            mean = torch.cat(seqs).double().mean(dim=0)
        return DataInfo("float", tuple(first.shape[1:]), None, mean, None)
    if first.dim() != 1:
        raise ValueError(
            f"{where}: expected integer (symbol) sequences of shape [T], got {shape_str(list(first.shape))}"
        )
    flat = torch.cat(seqs)
    if int(flat.min()) < 0:
        raise ValueError(f"{where}: expected symbols >= 0, got {int(flat.min())}")
    n_categories = vocabulary.size if vocabulary is not None else int(flat.max()) + 1
    counts = torch.bincount(flat, minlength=n_categories).double()
    return DataInfo("long", (), n_categories, counts / counts.sum(), vocabulary)


def is_binary(seqs: list[torch.Tensor]) -> bool:
    return all(bool(((s == 0) | (s == 1)).all()) for s in seqs)
