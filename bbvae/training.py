"""The training loop behind the estimators and the ``bbvae`` command line: :class:`Trainer`.

``Trainer(loss, ...).fit(train_data, valid_data)`` maximises the loss's bound by stochastic
gradient steps on ``loss.parameters()`` (the inference network's, the generative model's and any
the loss owns, such as NVIL's baseline; shared parameters count once). One step is
``zero_grad(set_to_none=True)``, ``loss(batch)``, ``backward()``, optional gradient clipping,
``optimizer.step()``; nothing reads a tensor's value in the step, so accelerators never wait for
the host, except at logging points (every ``log_every`` steps), evaluations and checkpoints.

Data, the "batch source" protocol
---------------------------------
Anything with ``batches(batch_size, *, shuffle, generator)`` returning an iterable of batches is
a batch source; a batch is either

* a Tensor ``[batch, *obs_shape]`` (static models): the step calls ``loss(x)``, or
* a :class:`~bbvae.data.SequenceBatch` ``(x [batch, T, *obs], lengths [batch], inputs)``: the step
  calls ``loss(x, lengths=lengths)``, plus ``inputs=inputs`` when the trainer has
  ``use_inputs=True``.

Batches living on another device than the loss's parameters are moved there (the trainer
never picks a device itself). For exact resumption the batch order must depend only on
``generator`` (a seeded CPU ``torch.Generator`` the trainer owns). :func:`as_batch_source`
adapts the usual containers:

* a Tensor ``[N, ...]`` -> :class:`TensorData` (rows, reshuffled each epoch);
* a list of Tensors / arrays ``[T_i, *obs]`` -> :class:`SequenceData` (padded ragged sequences);
* a :class:`~bbvae.data.SequenceBatch` holding a whole split -> :class:`PaddedSequenceData`;
* a split of :class:`~bbvae.data.PianoRollData` or :class:`~bbvae.data.TextData`:
  wrap it as ``DatasetSplit(data, "train")`` (``DatasetSplit(text, "train", seq_len=100)``).

Validation
----------
Every ``eval_every`` steps (or at the end of every epoch when ``eval_every`` is None) the trainer
computes the validation bound under ``torch.no_grad()`` in ``eval()`` mode: the sum of the
per-data-point bounds (``estimate``'s first output) divided by the number of data points
(Tensor batches) or by the total number of valid time steps, ``sum(lengths)`` (sequence
batches): nats per time step, as sequence-model papers report. Evaluation draws its
Monte Carlo noise from a forked generator seeded the same way at every evaluation, so it
never perturbs training's random stream and successive evaluations share their noise.

Distributed
-----------
Under ``torchrun`` with ``WORLD_SIZE > 1`` :meth:`Trainer.fit` joins the process group
(:func:`bbvae.distributed.init_from_env`, gloo), wraps the loss in DistributedDataParallel,
gives each rank the rows ``rank::world_size`` of every global batch of ``batch_size`` rows, and
lets only rank 0 write checkpoints and logs. See :mod:`bbvae.distributed`.
"""

from __future__ import annotations

import contextlib
import copy
import csv
import json
import math
import os
import random
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from torch import nn

from bbvae import distributed
from bbvae._validation import check_positive_int, shape_str
from bbvae.checkpoint import (
    CheckpointError,
    capture_rng_state,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from bbvae.data.batching import SequenceBatch, batch_indices

__all__ = [
    "BatchSource",
    "Callback",
    "DatasetSplit",
    "NonFiniteLossError",
    "PaddedSequenceData",
    "SequenceData",
    "TensorData",
    "Trainer",
    "as_batch_source",
    "set_seed",
]

CHECKPOINT_FORMAT = "bbvae.trainer"
CHECKPOINT_VERSION = 1
LAST_CHECKPOINT = "last.pt"
BEST_CHECKPOINT = "best.pt"
LOG_FIELDS = ("step", "epoch", "loss", "valid_bound", "time", "lr")

_OPTIMIZERS: dict[str, type[torch.optim.Optimizer]] = {
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
    "sgd": torch.optim.SGD,
    "rmsprop": torch.optim.RMSprop,
    "adagrad": torch.optim.Adagrad,
}
_LOG_FORMATS = ("jsonl", "csv")
# Offset of the evaluation seed from the training seed, so the two streams differ.
_EVAL_SEED_OFFSET = 1_000_003


def set_seed(seed: int) -> None:
    """Seed torch (CPU and every CUDA device), numpy's global generator and Python's ``random``."""
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"set_seed: expected seed to be an int, got {type(seed).__name__}")
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


class NonFiniteLossError(FloatingPointError, RuntimeError):
    """Training produced a NaN or infinite loss (or parameters).

    Attributes:
        step: the 1-based optimizer step at which it was detected.
        value: the offending loss value (a float, possibly ``nan`` or ``inf``).
        restored_step: the step of the last good state the trainer went back to.
    """

    def __init__(self, message: str, step: int, value: float, restored_step: int) -> None:
        super().__init__(message)
        self.step = step
        self.value = value
        self.restored_step = restored_step


# ============================================================================ data sources
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
        seqs = [self.sequences[i] for i in indices]
        x = nn.utils.rnn.pad_sequence(seqs, batch_first=True)  # [B, T_max, *obs]
        lengths = torch.tensor([self.lengths[i] for i in indices], dtype=torch.long, device=x.device)
        inputs = None
        if self.inputs is not None:
            inputs = nn.utils.rnn.pad_sequence([self.inputs[i] for i in indices], batch_first=True)
        return SequenceBatch(x, lengths, inputs)

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


# ============================================================================ callbacks
class Callback:
    """Hooks into :meth:`Trainer.fit`; override the ones you need (all default to no-ops).

    Set ``trainer.stop_training = True`` in any hook to end training after the current step.
    ``on_step_end`` runs every step: reading tensor values there synchronises with the device.
    """

    def on_fit_start(self, trainer: Trainer) -> None:
        """Before the first step (after a resumed state was loaded)."""

    def on_step_end(self, trainer: Trainer, step: int) -> None:
        """After optimizer step number ``step`` (1-based)."""

    def on_log(self, trainer: Trainer, record: dict[str, Any]) -> None:
        """After a log row ``{"step", "epoch", "loss", "valid_bound", "time", "lr"}`` was made."""

    def on_evaluate(self, trainer: Trainer, step: int, value: float) -> None:
        """After a validation bound ``value`` was computed at ``step``."""

    def on_epoch_end(self, trainer: Trainer, epoch: int) -> None:
        """After ``epoch`` epochs were completed."""

    def on_fit_end(self, trainer: Trainer) -> None:
        """After training ended normally (not after an exception)."""


# ============================================================================ log file
class _LogWriter:
    """Rank 0's log: JSON lines or CSV with the columns :data:`LOG_FIELDS`."""

    def __init__(self, path: Path, fmt: str, keep_rows: int | None) -> None:
        self.path = path
        self.fmt = fmt
        path.parent.mkdir(parents=True, exist_ok=True)
        lines: list[str] = []
        if keep_rows is not None and path.is_file():
            with open(path, encoding="utf-8", newline="") as f:
                lines = f.read().splitlines(keepends=True)
            header = 1 if fmt == "csv" and lines else 0
            lines = lines[: header + keep_rows]
        if fmt == "csv" and not lines:
            lines = [",".join(LOG_FIELDS) + "\r\n"]
        self._file = open(path, "w", encoding="utf-8", newline="")
        self._file.writelines(lines)
        self._file.flush()
        self._csv = csv.DictWriter(self._file, fieldnames=LOG_FIELDS) if fmt == "csv" else None

    def write(self, record: dict[str, Any]) -> None:
        if self._csv is not None:
            self._csv.writerow({k: ("" if record[k] is None else record[k]) for k in LOG_FIELDS})
        else:
            row = {
                k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()
            }
            self._file.write(json.dumps(row) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


# ============================================================================ trainer
class Trainer:
    """Fits a bbvae loss (and with it its inference network and generative model) to data.

    Args:
        loss: a :class:`~bbvae.losses.Loss` (any ``nn.Module`` whose ``forward(x, **context)``
            returns the scalar to minimise and whose ``estimate(x, **context)`` returns the
            per-data-point bound ``[batch]`` first).
        optimizer: ``"adam"``, ``"adamw"``, ``"sgd"``, ``"rmsprop"``, ``"adagrad"``, or a
            callable ``(params, lr=..., **optimizer_kwargs) -> torch.optim.Optimizer``.
        learning_rate: the optimizer's learning rate.
        optimizer_kwargs: further optimizer keywords (``betas``, ``momentum``,
            ``weight_decay``...).
        batch_size: data points (rows or sequences) per step; under torchrun the global batch,
            split across ranks (pick a multiple of the number of processes).
        eval_batch_size: batch size for validation (None: ``batch_size``).
        max_steps: stop after this many optimizer steps (counted over resumes).
        max_epochs: stop after this many passes over ``train_data``. At least one of
            ``max_steps`` and ``max_epochs`` must be set; training stops at the first reached.
        clip_grad_norm: clip the global gradient 2-norm to this value (None: no clipping).
        log_every: steps between logging points, where the step losses are read (one device
            sync), checked for NaN/inf, written to the log and shown in the progress bar.
        eval_every: steps between validations (None: at the end of every epoch).
        patience: early stopping: stop after this many validations in a row without an
            improvement of the best validation bound by more than ``min_delta`` (None: never).
        min_delta: the improvement that counts, in bound units (nats per point or per step).
        evaluate_fn: ``evaluate_fn(loss, valid_data) -> float``, a validation bound (higher is
            better) replacing the built-in one; it receives ``valid_data`` as passed to
            :meth:`fit`.
        restore_best: at the end of :meth:`fit`, load the parameters of the best validation
            (needs ``valid_data``).
        logdir: directory for ``last.pt``, ``best.pt`` and ``log.jsonl`` / ``log.csv``
            (None: nothing is written).
        checkpoint_every: steps between checkpoints (``last.pt`` when ``logdir`` is set, and
            the in-memory copy to which a non-finite loss rolls back); one is also written at
            the end of training.
        seed: seeds torch/numpy/random at the start of :meth:`fit` (``seed + rank`` under
            torchrun) and the data-shuffling generator (``seed`` on every rank). None draws one
            (stored in ``seed_`` and in checkpoints).
        log_format: ``"jsonl"`` or ``"csv"``.
        progress: show a tqdm progress bar with the running bound (rank 0 only).
        callbacks: :class:`Callback` instances.
        use_inputs: pass ``SequenceBatch.inputs`` to the loss as ``inputs=`` (models with
            genuine side inputs).
        find_unused_parameters: forwarded to DistributedDataParallel (see
            :func:`bbvae.distributed.wrap_ddp`).

    Attributes:
        loss_history_ (list[float]): the training loss (negative bound, mean over the batch
            and, under torchrun, over ranks) of every step, up to the last logging point while
            training and complete after :meth:`fit`.
        valid_history_ (list[float]): the validation bounds, in order.
        valid_steps_ (list[int]): the step at which each validation bound was computed.
        best_valid_ (float | None): the best validation bound (None without validation).
        best_step_ (int | None): the step at which it was reached.
        n_iter_ (int): optimizer steps taken (over resumes).
        n_epochs_ (int): complete passes over the training data.
        stop_reason_ (str): ``"max_steps"``, ``"max_epochs"``, ``"early_stopping"`` or
            ``"callback"``.
        seed_ (int): the seed used.
        optimizer_ (torch.optim.Optimizer): the optimizer of the last :meth:`fit`.
        checkpoint_path_ (Path | None): the ``last.pt`` written last (None without ``logdir``).
        best_checkpoint_path_ (Path | None): ``best.pt`` if one was written.
    """

    def __init__(
        self,
        loss: nn.Module,
        *,
        optimizer: str | Callable[..., torch.optim.Optimizer] = "adam",
        learning_rate: float = 1e-3,
        optimizer_kwargs: dict[str, Any] | None = None,
        batch_size: int = 64,
        eval_batch_size: int | None = None,
        max_steps: int | None = None,
        max_epochs: int | None = None,
        clip_grad_norm: float | None = None,
        log_every: int = 50,
        eval_every: int | None = None,
        patience: int | None = None,
        min_delta: float = 0.0,
        evaluate_fn: Callable[[nn.Module, Any], float] | None = None,
        restore_best: bool = False,
        logdir: str | os.PathLike | None = None,
        checkpoint_every: int = 1000,
        seed: int | None = 0,
        log_format: str = "jsonl",
        progress: bool = True,
        callbacks: Sequence[Callback] = (),
        use_inputs: bool = False,
        find_unused_parameters: bool = True,
    ) -> None:
        self.loss = loss
        self.optimizer = optimizer
        self.learning_rate = learning_rate
        self.optimizer_kwargs = optimizer_kwargs
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.max_steps = max_steps
        self.max_epochs = max_epochs
        self.clip_grad_norm = clip_grad_norm
        self.log_every = log_every
        self.eval_every = eval_every
        self.patience = patience
        self.min_delta = min_delta
        self.evaluate_fn = evaluate_fn
        self.restore_best = restore_best
        self.logdir = logdir
        self.checkpoint_every = checkpoint_every
        self.seed = seed
        self.log_format = log_format
        self.progress = progress
        self.callbacks = callbacks
        self.use_inputs = use_inputs
        self.find_unused_parameters = find_unused_parameters
        self.stop_training = False

    #: Check the loss for NaN/inf after every step (True) or only at logging points (False);
    #: None: every step for single-process training on CPU, where reading the value is free.
    _check_every_step: bool | None = None

    # ------------------------------------------------------------------ settings
    def _check_settings(self) -> None:
        name = "Trainer"
        if not isinstance(self.loss, nn.Module):
            raise TypeError(
                f"{name}: expected loss to be an nn.Module (a bbvae Loss), got {type(self.loss).__name__}"
            )
        if isinstance(self.optimizer, str):
            if self.optimizer not in _OPTIMIZERS:
                raise ValueError(
                    f"{name}: expected optimizer in {sorted(_OPTIMIZERS)} or a callable, "
                    f"got {self.optimizer!r}"
                )
        elif not callable(self.optimizer):
            raise TypeError(
                f"{name}: expected optimizer to be a name or a callable, got {type(self.optimizer).__name__}"
            )
        if not (isinstance(self.learning_rate, (int, float)) and self.learning_rate >= 0):
            raise ValueError(f"{name}: expected learning_rate >= 0, got {self.learning_rate!r}")
        if self.optimizer_kwargs is not None and not isinstance(self.optimizer_kwargs, dict):
            raise TypeError(
                f"{name}: expected optimizer_kwargs to be a dict, got {type(self.optimizer_kwargs).__name__}"
            )
        check_positive_int("batch_size", self.batch_size, name)
        for key in ("eval_batch_size", "max_steps", "max_epochs", "eval_every", "patience"):
            if getattr(self, key) is not None:
                check_positive_int(key, getattr(self, key), name)
        if self.max_steps is None and self.max_epochs is None:
            raise ValueError(f"{name}: set max_steps or max_epochs (or both), got neither")
        check_positive_int("log_every", self.log_every, name)
        check_positive_int("checkpoint_every", self.checkpoint_every, name)
        if self.clip_grad_norm is not None and not self.clip_grad_norm > 0:
            raise ValueError(f"{name}: expected clip_grad_norm > 0 or None, got {self.clip_grad_norm!r}")
        if not (isinstance(self.min_delta, (int, float)) and self.min_delta >= 0):
            raise ValueError(f"{name}: expected min_delta >= 0, got {self.min_delta!r}")
        if self.log_format not in _LOG_FORMATS:
            raise ValueError(f"{name}: expected log_format in {_LOG_FORMATS}, got {self.log_format!r}")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)):
            raise TypeError(f"{name}: expected seed to be an int or None, got {type(self.seed).__name__}")
        for cb in self.callbacks:
            if not isinstance(cb, Callback):
                raise TypeError(
                    f"{name}: expected callbacks to be Callback instances, got {type(cb).__name__}"
                )

    def config(self) -> dict[str, Any]:
        """The settings stored in checkpoints (built-in types only)."""
        opt = self.optimizer if isinstance(self.optimizer, str) else _qualname(self.optimizer)
        return {
            "optimizer": opt,
            "learning_rate": float(self.learning_rate),
            "optimizer_kwargs": dict(self.optimizer_kwargs or {}),
            "batch_size": self.batch_size,
            "eval_batch_size": self.eval_batch_size,
            "max_steps": self.max_steps,
            "max_epochs": self.max_epochs,
            "clip_grad_norm": self.clip_grad_norm,
            "log_every": self.log_every,
            "eval_every": self.eval_every,
            "patience": self.patience,
            "min_delta": float(self.min_delta),
            "checkpoint_every": self.checkpoint_every,
            "seed": self.seed_ if hasattr(self, "seed_") else self.seed,
            "log_format": self.log_format,
            "use_inputs": self.use_inputs,
        }

    def _parameters(self) -> list[nn.Parameter]:
        params = [p for p in self.loss.parameters() if p.requires_grad]  # parameters() deduplicates
        if not params:
            raise ValueError(
                f"Trainer: {type(self.loss).__name__}.parameters() holds no trainable parameter; the "
                "inference network and generative model must be registered submodules of the loss"
            )
        return params

    def _make_optimizer(self, params: list[nn.Parameter]) -> torch.optim.Optimizer:
        kwargs = dict(self.optimizer_kwargs or {})
        factory = _OPTIMIZERS[self.optimizer] if isinstance(self.optimizer, str) else self.optimizer
        opt = factory(params, lr=self.learning_rate, **kwargs)
        if not isinstance(opt, torch.optim.Optimizer):
            raise TypeError(
                f"Trainer: the optimizer factory returned a {type(opt).__name__}, not a torch Optimizer"
            )
        return opt

    # ------------------------------------------------------------------ fit
    def fit(
        self, train_data: Any, valid_data: Any = None, resume: bool | str | os.PathLike = False
    ) -> Trainer:
        """Train until ``max_steps`` / ``max_epochs`` / early stopping.

        Args:
            train_data: a batch source or anything :func:`as_batch_source` adapts.
            valid_data: the same for validation (None: no validation; ``evaluate_fn``, if given,
                receives it unchanged).
            resume: False (start afresh: the trainer's histories reset, the model keeps its
                current parameters); True (continue from ``logdir/last.pt``, which must exist);
                ``"auto"`` (continue if ``logdir/last.pt`` exists, else start afresh); or a
                checkpoint path. A resumed run reproduces the uninterrupted one: same batches,
                same random draws, same parameters. ``max_steps``, ``max_epochs``,
                ``learning_rate``, the evaluation, logging and checkpoint schedule may change
                on resume; ``optimizer``, ``optimizer_kwargs``, ``batch_size``, ``seed``,
                ``use_inputs``, the loss class and its parameter shapes must not.

        Returns:
            self.

        Raises:
            NonFiniteLossError: the loss (or the parameters) became NaN or infinite; the model
                and optimizer are back at the last good state (that of ``last.pt``).
            CheckpointError: the checkpoint to resume from does not match this trainer.
        """
        self._check_settings()
        train = as_batch_source(train_data, "train_data")
        valid = None
        if valid_data is not None:
            valid = valid_data if self.evaluate_fn is not None else as_batch_source(valid_data, "valid_data")
        if os.environ.get("WORLD_SIZE", "1") not in ("", "0", "1"):
            first = next(iter(self.loss.parameters()), None)
            on_cuda = first is not None and first.device.type == "cuda"
            distributed.init_from_env(backend="nccl" if on_cuda else "gloo")
        self._rank, self._world = distributed.get_rank(), distributed.get_world_size()
        self._is_main = self._rank == 0
        if self.seed is not None:  # data-shaped parameters (NVIL's baseline) are seeded too
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.seed)
                self._prepare_loss(train)
        else:
            self._prepare_loss(train)
        params = self._parameters()
        self._params = params
        self._device = params[0].device
        self.optimizer_ = self._make_optimizer(params)
        self.generator_ = torch.Generator()
        self.stop_training = False
        self._logdir = None if self.logdir is None else Path(self.logdir)

        ckpt_path = self._resume_path(resume)
        if ckpt_path is not None:
            self._load(ckpt_path)
        else:
            self._reset()
        self._t0 = time.perf_counter() - self._elapsed
        bad = [name for name, p in self.loss.named_parameters() if not bool(torch.isfinite(p).all())]
        if bad:  # one sync before training: a rollback target must itself be finite
            raise ValueError(
                f"Trainer.fit: the model's parameters are non-finite before training ({', '.join(bad[:5])}); "
                "check the data used to initialise them (e.g. a NaN in the training data's mean)"
            )
        self._good_state = self._make_state()
        self.loss.train()
        self._writer = self._bar = None
        try:
            self._writer = self._open_log(resumed=ckpt_path is not None)
            self._bar = self._open_bar(train)
            model = distributed.wrap_ddp(self.loss, self.find_unused_parameters)
            for cb in self.callbacks:
                cb.on_fit_start(self)
            self._loop(model, train, valid, valid_data)
            self._finish()
        finally:
            model = None  # drops the DDP wrapper and its gradient hooks
            self._good_state = self._best_model_state = None  # copies only needed while fitting
            if self._writer is not None:
                self._writer.close()
            if self._bar is not None:
                self._bar.close()
        for cb in self.callbacks:
            cb.on_fit_end(self)
        return self

    def _resume_path(self, resume) -> Path | None:
        if resume is False or resume is None:
            return None
        if resume is True or resume == "auto":
            if self.logdir is None:
                raise ValueError(
                    f"Trainer.fit: resume={resume!r} needs logdir (where last.pt lives), got logdir=None"
                )
            path = Path(self.logdir) / LAST_CHECKPOINT
            if not path.is_file():
                if resume == "auto":
                    return None
                raise FileNotFoundError(
                    f"Trainer.fit: resume=True but there is no checkpoint at {str(path)!r}; "
                    "use resume='auto' to start afresh when none exists"
                )
            return path
        if isinstance(resume, (str, os.PathLike)):
            path = Path(resume)
            if not path.is_file():
                raise FileNotFoundError(f"Trainer.fit: no checkpoint to resume from at {str(path)!r}")
            return path
        raise TypeError(
            f"Trainer.fit: expected resume to be a bool, 'auto' or a path, got {type(resume).__name__}"
        )

    def _reset(self) -> None:
        self.seed_ = self.seed if self.seed is not None else int.from_bytes(os.urandom(4), "little")
        set_seed(self.seed_ + self._rank)
        self.generator_.manual_seed(self.seed_)
        self.loss_history_: list[float] = []
        self.valid_history_: list[float] = []
        self.valid_steps_: list[int] = []
        self.best_valid_: float | None = None
        self.best_step_: int | None = None
        self.n_iter_ = 0
        self.n_epochs_ = 0
        self.stop_reason_ = ""
        self.checkpoint_path_: Path | None = None
        self.best_checkpoint_path_: Path | None = None
        self._batch_in_epoch = 0
        self._epoch_gen_state = self.generator_.get_state()
        self._bad_evals = 0
        self._elapsed = 0.0
        self._log_rows = 0
        self._rows_upto = 0  # len(loss_history_) covered by the rows written so far
        self._pending: list[torch.Tensor] = []
        self._best_model_state = None
        self._written_step: int | None = None

    # ------------------------------------------------------------------ state
    def _make_state(self) -> dict[str, Any]:
        """The full training state, with tensors cloned (a collective under torchrun)."""
        rng = distributed.all_gather_objects(capture_rng_state())
        return {
            "format": CHECKPOINT_FORMAT,
            "version": CHECKPOINT_VERSION,
            "torch_version": str(torch.__version__),
            "config": self.config(),
            "loss_class": _qualname(type(self.loss)),
            "param_shapes": {k: list(v.shape) for k, v in self.loss.state_dict().items()},
            "world_size": self._world,
            "model_state": _clone_state(self.loss.state_dict()),
            "optimizer_state": copy.deepcopy(self.optimizer_.state_dict()),
            "step": self.n_iter_,
            "epoch": self.n_epochs_,
            "batch_in_epoch": self._batch_in_epoch,
            "epoch_generator_state": self._epoch_gen_state.clone(),
            "rng": rng,
            "loss_history": list(self.loss_history_),
            "valid_history": list(self.valid_history_),
            "valid_steps": list(self.valid_steps_),
            "best_valid": self.best_valid_,
            "best_step": self.best_step_,
            "bad_evals": self._bad_evals,
            "elapsed": self._elapsed_now(),
            "log_rows": self._log_rows,
            "rows_upto": self._rows_upto,
        }

    def _restore(self, state: dict[str, Any]) -> None:
        self.loss.load_state_dict(state["model_state"])
        self.optimizer_.load_state_dict(copy.deepcopy(state["optimizer_state"]))
        for group in self.optimizer_.param_groups:
            group["lr"] = self.learning_rate
        self.n_iter_ = state["step"]
        self.n_epochs_ = state["epoch"]
        self._batch_in_epoch = state["batch_in_epoch"]
        self._epoch_gen_state = state["epoch_generator_state"].clone()
        self.loss_history_ = list(state["loss_history"])
        self.valid_history_ = list(state["valid_history"])
        self.valid_steps_ = list(state["valid_steps"])
        self.best_valid_ = state["best_valid"]
        self.best_step_ = state["best_step"]
        self._bad_evals = state["bad_evals"]
        self._elapsed = state["elapsed"]
        self._log_rows = state["log_rows"]
        self._rows_upto = state["rows_upto"]
        self._pending = []

    def _load(self, path: Path) -> None:
        state = load_checkpoint(path, map_location="cpu", expected_format=CHECKPOINT_FORMAT)
        self._check_compatible(state, path)
        self._reset()
        self.seed_ = state["config"]["seed"]
        self._restore(state)
        self.checkpoint_path_ = path
        self._written_step = self.n_iter_
        self.stop_reason_ = ""
        rng = state["rng"]
        if len(rng) != self._world:
            warnings.warn(
                f"Trainer.fit: {str(path)!r} was written by {len(rng)} process(es), this run has "
                f"{self._world}; training continues but its random draws differ from the original run's",
                RuntimeWarning,
                stacklevel=3,
            )
        if self._rank < len(rng):
            restore_rng_state(rng[self._rank])
        else:
            set_seed(self.seed_ + self._rank + self.n_iter_)
        if self.restore_best and self._logdir is not None and (self._logdir / BEST_CHECKPOINT).is_file():
            best = load_checkpoint(self._logdir / BEST_CHECKPOINT, map_location="cpu")
            # best.pt may come from after last.pt (an interrupted run): use it only if it is the
            # best state this resumed run knows of.
            if best.get("step") == self.best_step_:
                self._best_model_state = best["model_state"]
                self.best_checkpoint_path_ = self._logdir / BEST_CHECKPOINT

    def _check_compatible(self, state: dict[str, Any], path: Path) -> None:
        saved, current = state["config"], self.config()
        problems = []
        for key in ("optimizer", "optimizer_kwargs", "batch_size", "use_inputs"):
            if _normalise(saved.get(key)) != _normalise(current[key]):
                problems.append(f"{key}={saved.get(key)!r} there, {current[key]!r} here")
        if self.seed is not None and saved.get("seed") != self.seed:
            problems.append(f"seed={saved.get('seed')!r} there, {self.seed!r} here")
        loss_class = _qualname(type(self.loss))
        if state.get("loss_class") != loss_class:
            problems.append(f"loss {state.get('loss_class')} there, {loss_class} here")
        shapes = {k: list(v.shape) for k, v in self.loss.state_dict().items()}
        saved_shapes = state.get("param_shapes", {})
        if saved_shapes != shapes:
            diff = sorted(set(saved_shapes) ^ set(shapes))
            diff += sorted(k for k in set(saved_shapes) & set(shapes) if saved_shapes[k] != shapes[k])
            shown = ", ".join(
                f"{k}: {shape_str(saved_shapes[k]) if k in saved_shapes else 'absent'} there, "
                f"{shape_str(shapes[k]) if k in shapes else 'absent'} here"
                for k in diff[:5]
            )
            problems.append(f"the model's parameters differ ({shown})")
        if problems:
            raise CheckpointError(
                f"Trainer.fit: cannot resume from {str(path)!r}, it was written with different settings: "
                + "; ".join(problems)
                + ". Use the same settings, or start a new run (resume=False or another logdir)"
            )

    def _checkpoint(self) -> None:
        """Verify the parameters are finite, keep the state in memory and write last.pt (rank 0)."""
        self._flush()
        self._check_params_finite()
        state = self._make_state()
        self._good_state = state
        if self._logdir is not None and self._is_main:
            self.checkpoint_path_ = save_checkpoint(state, self._logdir / LAST_CHECKPOINT)
            self._written_step = self.n_iter_

    def _save_best(self) -> None:
        if self.restore_best:
            self._best_model_state = _clone_state(self.loss.state_dict())
        if self._logdir is None:
            return
        self._check_params_finite()
        state = self._make_state()
        if self._is_main:
            self.best_checkpoint_path_ = save_checkpoint(state, self._logdir / BEST_CHECKPOINT)

    # ------------------------------------------------------------------ non-finite values
    def _check_params_finite(self) -> None:
        flags = torch.stack([torch.isfinite(p).all() for p in self._params])
        if not bool(flags.all()):  # device sync, only at checkpoints
            last = self.loss_history_[-1] if self.loss_history_ else float("nan")
            raise self._non_finite(self.n_iter_, last, "the parameters became non-finite after the update")

    def _non_finite(self, step: int, value: float, what: str | None = None) -> NonFiniteLossError:
        """Roll back to the last good state and build the error to raise."""
        good = self._good_state
        self._restore(good)
        saved = ""
        if self.checkpoint_path_ is not None and self._written_step == good["step"]:
            saved = f" (saved in {str(self.checkpoint_path_)!r})"
        what = what or f"the training loss is {value}"
        msg = (
            f"Trainer: {what} at step {step}; training stopped. The model and optimizer were restored "
            f"to the last good state, step {good['step']}{saved}. Try a lower learning_rate, "
            "clip_grad_norm, more samples, or check the data"
        )
        return NonFiniteLossError(msg, step=step, value=value, restored_step=good["step"])

    # ------------------------------------------------------------------ the loop
    def _stop_reason(self) -> str:
        if self.max_steps is not None and self.n_iter_ >= self.max_steps:
            return "max_steps"
        if self.max_epochs is not None and self.n_epochs_ >= self.max_epochs:
            return "max_epochs"
        if self.patience is not None and self._bad_evals >= self.patience:
            return "early_stopping"
        if self.stop_training:
            return "callback"
        return ""

    def _loop(self, model: nn.Module, train: BatchSource, valid, valid_data) -> None:
        eager_check = self._check_every_step
        if eager_check is None:  # reading a CPU scalar costs nothing; elsewhere wait for a logging point
            eager_check = self._world == 1 and self._device.type == "cpu"
        batches: Iterator | None = None
        batch = None
        while not (reason := self._stop_reason()):
            if batches is None:
                batches = self._epoch_iterator(train)
                batch = next(batches, None)
                if batch is None:  # resumed right at the end of an epoch
                    if self._batch_in_epoch == 0:
                        raise ValueError("Trainer.fit: train_data yielded no batch in an epoch")
                    batches = self._end_epoch(valid, valid_data)
                    continue
            self._batch_in_epoch += 1
            skip = self._world > 1 and distributed.batch_size_of(batch) < self._world
            if not skip:  # (a batch too small to give every rank a row is skipped by all ranks)
                if self._world > 1:
                    batch = distributed.shard_batch(batch, self._rank, self._world)
                x, context = self._loss_args(batch, self._device)
                self._after_step(model, x, context, eager_check, valid, valid_data)
            # Look one batch ahead, so that an epoch ends as soon as its last batch is used.
            batch = next(batches, None)
            if batch is None:
                batches = self._end_epoch(valid, valid_data)
        self.stop_reason_ = reason

    def _after_step(self, model, x, context, eager_check: bool, valid, valid_data) -> None:
        """One optimizer step, then whatever is due: logging, evaluation, checkpoint, callbacks."""
        self._step(model, x, context, eager_check)
        step = self.n_iter_
        if self._bar is not None:
            self._bar.update(1)
        evaluate = valid is not None and self.eval_every is not None and step % self.eval_every == 0
        if step % self.log_every == 0 or evaluate:
            self._flush()
            if evaluate:
                self._evaluate_and_track(valid, valid_data)
            else:
                self._write_row(None)
        if step % self.checkpoint_every == 0:
            self._checkpoint()
        for cb in self.callbacks:
            cb.on_step_end(self, step)

    def _end_epoch(self, valid, valid_data) -> None:
        self.n_epochs_ += 1
        self._batch_in_epoch = 0
        self._epoch_gen_state = self.generator_.get_state()
        if self.eval_every is None and valid is not None:
            self._flush()
            self._evaluate_and_track(valid, valid_data)
        for cb in self.callbacks:
            cb.on_epoch_end(self, self.n_epochs_)

    def _epoch_iterator(self, train: BatchSource) -> Iterator:
        # The order of an epoch is a function of the generator's state at its start; a resumed
        # run rewinds to that state and skips the batches already used.
        self.generator_.set_state(self._epoch_gen_state)
        batches = iter(train.batches(self.batch_size, shuffle=True, generator=self.generator_))
        for i in range(self._batch_in_epoch):
            if next(batches, None) is None:
                raise CheckpointError(
                    f"Trainer.fit: the checkpoint is {self._batch_in_epoch} batches into an epoch, but "
                    f"train_data has only {i} batches of {self.batch_size}; resume with the same data"
                )
        return batches

    def _prepare_loss(self, train: BatchSource) -> None:
        """Let the loss build data-shaped parameters (``Loss.prepare``) before the optimiser exists."""
        prepare = getattr(self.loss, "prepare", None)
        if not callable(prepare):
            return
        first = next(iter(train.batches(self.batch_size, shuffle=False, generator=None)), None)
        if first is None:
            return
        param = next(iter(self.loss.parameters()), None)
        device = param.device if param is not None else torch.device("cpu")
        x, context = self._loss_args(first, device)
        prepare(x, **context)

    def _loss_args(self, batch, device: torch.device) -> tuple[torch.Tensor, dict[str, Any]]:
        if isinstance(batch, SequenceBatch):
            x, context = batch.x, {"lengths": batch.lengths}
            if self.use_inputs:
                if batch.inputs is None:
                    raise ValueError("Trainer: use_inputs=True, but the data's SequenceBatch has inputs=None")
                context["inputs"] = batch.inputs
        elif isinstance(batch, torch.Tensor):
            if self.use_inputs:
                raise ValueError("Trainer: use_inputs=True needs SequenceBatch data, got Tensor batches")
            x, context = batch, {}
        else:
            raise TypeError(
                f"Trainer: expected batches to be Tensors or SequenceBatches, got {type(batch).__name__}"
            )
        if x.device != device:  # the parameters' device
            x = x.to(device, non_blocking=True)
            context = {k: v.to(device, non_blocking=True) for k, v in context.items()}
        return x, context

    def _step(self, model: nn.Module, x: torch.Tensor, context: dict[str, Any], eager_check: bool) -> None:
        step = self.n_iter_ + 1
        self.optimizer_.zero_grad(set_to_none=True)
        try:
            value = model(x, **context)
            if eager_check and not bool(torch.isfinite(value)):  # CPU: no device sync to pay
                raise self._non_finite(step, float(value.detach()))
            value.backward()
        except NonFiniteLossError:
            raise
        except Exception as exc:
            # A NaN check inside the loss (bbvae's validation) fires once parameters are NaN;
            # report the first non-finite loss still pending, if any, else the parameters.
            if not bool(torch.stack([torch.isfinite(p).all() for p in self._params]).all()):
                if self._world == 1:  # _flush reduces across ranks: the others are not here
                    self._flush()
                raise self._non_finite(step, float("nan"), "the parameters are non-finite") from exc
            raise
        if self.clip_grad_norm is not None:
            nn.utils.clip_grad_norm_(self._params, self.clip_grad_norm)
        self.optimizer_.step()
        self.n_iter_ = step
        self._pending.append(value.detach())

    def _flush(self) -> None:
        """Read the pending step losses (one device sync) and check them for NaN/inf."""
        if not self._pending:
            return
        values = torch.stack(self._pending).double()  # [n_pending]
        distributed.all_reduce_mean(values)
        floats = values.cpu().tolist()  # device sync: only at logging points
        first = self.n_iter_ - len(floats) + 1
        self._pending = []
        for i, v in enumerate(floats):
            if not math.isfinite(v):
                raise self._non_finite(first + i, v)
        self.loss_history_.extend(floats)

    def _elapsed_now(self) -> float:
        return time.perf_counter() - self._t0

    def _write_row(self, valid_bound: float | None) -> None:
        new = self.loss_history_[self._rows_upto :]
        mean_loss = sum(new) / len(new) if new else None
        self._rows_upto = len(self.loss_history_)
        record = {
            "step": self.n_iter_,
            "epoch": self.n_epochs_ + int(self._batch_in_epoch > 0),  # the epoch this step is in
            "loss": mean_loss,
            "valid_bound": valid_bound,
            "time": round(self._elapsed_now(), 4),
            "lr": self.optimizer_.param_groups[0]["lr"],
        }
        if self._writer is not None:
            self._writer.write(record)
        self._log_rows += 1
        if self._bar is not None:
            postfix = {}
            if mean_loss is not None:
                postfix["bound"] = f"{-mean_loss:.4g}"
            if self.best_valid_ is not None:
                postfix["valid"] = f"{self.best_valid_:.4g}"
            self._bar.set_postfix(postfix, refresh=False)
        for cb in self.callbacks:
            cb.on_log(self, record)

    def _evaluate_and_track(self, valid, valid_data) -> None:
        value = self.evaluate(valid_data if self.evaluate_fn is not None else valid)
        self.valid_history_.append(value)
        self.valid_steps_.append(self.n_iter_)
        improved = self.best_valid_ is None or value > self.best_valid_ + self.min_delta
        if improved:  # NaN never improves
            self.best_valid_, self.best_step_ = value, self.n_iter_
            self._bad_evals = 0
            self._save_best()
        else:
            self._bad_evals += 1
        self._write_row(value)
        for cb in self.callbacks:
            cb.on_evaluate(self, self.n_iter_, value)

    def _finish(self) -> None:
        # The checkpoint comes before the closing log row, which a resumed run drops and
        # rewrites at its own next logging point, so its log matches an uninterrupted run's.
        self._checkpoint()
        distributed.barrier()  # last.pt is on disk before any rank moves on (and maybe reads it)
        if self._rows_upto < len(self.loss_history_):
            self._write_row(None)
        if self.restore_best and self._best_model_state is not None:
            self.loss.load_state_dict(self._best_model_state)
        self._elapsed = self._elapsed_now()

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, data: Any) -> float:
        """The validation bound of ``data`` (higher is better), as computed during :meth:`fit`.

        ``evaluate_fn(loss, data)`` if given, else the bound per data point (Tensor data) or
        per time step (sequences). Runs in ``eval()`` mode under ``torch.no_grad()``, on a forked
        random generator seeded from ``seed``, so it leaves training's random stream alone.
        Under torchrun every rank must call it.
        """
        if not hasattr(self, "_rank"):
            self._rank, self._world = distributed.get_rank(), distributed.get_world_size()
        seed = getattr(self, "seed_", self.seed if self.seed is not None else 0)
        source = data if self.evaluate_fn is not None else as_batch_source(data, "data")
        loss = self.loss
        params = list(loss.parameters())
        device = params[0].device if params else torch.device("cpu")
        was_training = loss.training
        loss.eval()
        try:
            with torch.no_grad(), _forked_rng(seed + _EVAL_SEED_OFFSET + self._rank, device):
                if self.evaluate_fn is not None:
                    return float(self.evaluate_fn(loss, data))
                return self._evaluate_source(source, device)
        finally:
            loss.train(was_training)

    def _evaluate_source(self, source: BatchSource, device: torch.device) -> float:
        totals = torch.zeros(2, dtype=torch.float64, device=device)  # [sum of bounds, count]
        for batch in source.batches(self.eval_batch_size or self.batch_size, shuffle=False, generator=None):
            if self._world > 1:
                batch = distributed.shard_batch(batch, self._rank, self._world)
            if distributed.batch_size_of(batch) == 0:
                continue
            x, context = self._loss_args(batch, device)
            bound = _bound(self.loss, x, context)  # [batch]
            totals[0] += bound.double().sum()
            totals[1] += context["lengths"].sum() if "lengths" in context else x.shape[0]
        distributed.all_reduce_sum(totals)
        total, count = totals.tolist()  # device sync
        if count == 0:
            raise ValueError("Trainer: the validation data yielded no data point")
        return total / count

    # ------------------------------------------------------------------ files and bar
    def _open_log(self, resumed: bool) -> _LogWriter | None:
        if self._logdir is None or not self._is_main:
            return None
        path = self._logdir / f"log.{self.log_format}"
        return _LogWriter(path, self.log_format, keep_rows=self._log_rows if resumed else None)

    def _open_bar(self, train: BatchSource):
        if not self.progress or not self._is_main:
            return None
        from tqdm.auto import tqdm

        total = self.max_steps
        n_batches = getattr(train, "num_batches", None)
        if self.max_epochs is not None and callable(n_batches):
            per_epoch = n_batches(self.batch_size)
            if per_epoch:
                by_epochs = self.max_epochs * per_epoch
                total = by_epochs if total is None else min(total, by_epochs)
        return tqdm(total=total, initial=self.n_iter_, unit="step", dynamic_ncols=True, leave=False)


def _bound(loss: nn.Module, x: torch.Tensor, context: dict[str, Any]) -> torch.Tensor:
    """The per-data-point bound ``[batch]`` of one batch, without touching the loss's history."""
    estimate = getattr(loss, "estimate", None)
    if callable(estimate):
        bound = estimate(x, **context)[0]
    else:
        loss(x, **context)
        bound = loss.bound_
    if tuple(bound.shape) != (x.shape[0],):
        raise ValueError(
            f"Trainer: expected {type(loss).__name__} to give a bound of shape [{x.shape[0]}], "
            f"got {shape_str(list(bound.shape))}"
        )
    if getattr(loss, "normalize", None) == "length" and context.get("lengths") is not None:
        # the loss reports nats per step; validation sums nats per sequence over the split
        bound = bound * context["lengths"].to(bound.dtype)
    return bound


@contextlib.contextmanager
def _forked_rng(seed: int, device: torch.device):
    """Run the block on a seeded copy of the global generators, restoring them afterwards."""
    cuda = (
        [device.index if device.index is not None else torch.cuda.current_device()]
        if device.type == "cuda"
        else []
    )
    with torch.random.fork_rng(devices=cuda):
        torch.default_generator.manual_seed(seed)
        for index in cuda:
            torch.cuda.default_generators[index].manual_seed(seed)
        yield


def _clone_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Clone a state dict; entries that are the same tensor under two names (a sequence model
    reached through both its inf_net and gen_model views) stay one tensor, saved once."""
    clones: dict[tuple, torch.Tensor] = {}
    out = {}
    for name, value in state.items():
        key = (value.data_ptr(), value.dtype, tuple(value.shape), value.stride(), value.device)
        if key not in clones:
            clones[key] = value.detach().clone()
        out[name] = clones[key]
    return out


def _qualname(obj: Any) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', type(obj).__name__)}"


def _normalise(value: Any) -> Any:
    """Tuples and lists compare equal (a checkpoint may hold either)."""
    if isinstance(value, (list, tuple)):
        return [_normalise(v) for v in value]
    if isinstance(value, dict):
        return {k: _normalise(v) for k, v in value.items()}
    return value
