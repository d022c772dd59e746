"""The Trainer's data: ``torch.utils.data`` Datasets and DataLoaders, with epochs that resume exactly.

What :meth:`~bbvae.training.Trainer.fit` accepts, for training and for validation:

* a map-style :class:`~torch.utils.data.Dataset`: the trainer batches it, ``batch_size`` items per
  batch, in a fresh random order every epoch drawn from its own seeded generator (or, with
  ``length_bucketing``, by a :class:`~bbvae.data.BucketBatchSampler`), collated with the
  Dataset's ``collate_fn`` (bbvae's sequence Datasets: :func:`~bbvae.data.collate_sequences`;
  ``default_collate``, which stacks rows, for a Dataset without one);
* a :class:`~torch.utils.data.DataLoader`: its sampler or batch sampler, ``collate_fn``,
  ``num_workers``, ``pin_memory``... decide the batches (the trainer's ``batch_size`` is then
  not used for training);
* a Tensor ``[N, *obs_shape]`` (rows of a static model): :class:`~bbvae.data.TensorRows`;
* a list of Tensors or arrays ``[T_i, *obs_shape]``: a :class:`~bbvae.data.SequenceDataset`;
* a :class:`~bbvae.data.SequenceBatch` holding a whole split: its rows, cut to their lengths.

A batch is a Tensor ``[batch, *obs_shape]`` or a :class:`~bbvae.data.SequenceBatch`; a 1-tuple
``(x,)`` (a ``TensorDataset``'s) is unwrapped.

Exact resumption. At the start of every epoch the trainer draws the whole epoch's batch order from
the batch sampler once, a list of index lists, and feeds the DataLoader from that list; a
checkpoint keeps the list and the position in it, so a resumed run replays exactly the batches the
interrupted one had left, whatever the sampler (the user's own, one drawing from torch's global
generator, a bucketing one). Under torchrun every rank uses rank 0's order. The DataLoader draws
its workers' base seed from a generator of its own, seeded from the trainer's seed and the
epoch, so it never perturbs training's random stream.

Not resumable exactly: a DataLoader without a batch sampler (over an ``IterableDataset``, or with
``batch_size=None``): a resumed run restarts its iteration and skips the batches already used,
which replays the interrupted run only if the iteration yields the same batches again (a warning
says so). Randomness inside a Dataset's ``__getitem__`` in worker processes (``num_workers > 0``)
is not replayed either: workers take other items after a resume. A sampler must be finite.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, Sampler
from torch.utils.data.distributed import DistributedSampler

from bbvae import distributed
from bbvae.data.batching import SequenceBatch
from bbvae.data.datasets import SequenceDataset, TensorRows, collate_fn_of, sequence_lengths
from bbvae.data.samplers import BucketBatchSampler, RandomBatchSampler

__all__ = ["EpochBatches", "as_dataset", "evaluation_loader", "loader_batch", "DatasetSplit", "SequenceData"]

# Settings a DataLoader is rebuilt with (besides its dataset, batch sampler and generator).
_LOADER_SETTINGS = (
    "num_workers",
    "collate_fn",
    "pin_memory",
    "timeout",
    "worker_init_fn",
    "multiprocessing_context",
    "prefetch_factor",
    "persistent_workers",
    "pin_memory_device",
    "in_order",
)


def as_dataset(data: Any, name: str) -> Dataset:
    """``data`` as a map-style Dataset (see the module docstring); TypeError naming ``name`` if it is none."""
    if isinstance(data, Dataset):
        return data
    if isinstance(data, torch.Tensor):
        return TensorRows(data)
    if isinstance(data, SequenceBatch):
        return SequenceDataset.from_batch(data)
    if isinstance(data, np.ndarray):
        raise TypeError(
            f"{name}: got a numpy array; convert it with torch.as_tensor(x, dtype=...) choosing the "
            "dtype of the model's parameters"
        )
    if isinstance(data, (list, tuple)):
        return SequenceDataset(data)
    if callable(getattr(data, "split", None)) and callable(getattr(data, "dataset", None)):
        raise TypeError(
            f"{name}: got a {type(data).__name__} holding several splits; pick one with "
            f"data.dataset('train') (TextData also needs seq_len=...)"
        )
    raise TypeError(
        f"{name}: expected a torch Dataset or DataLoader, a Tensor [N, ...], a list of [T, ...] sequences "
        f"or a SequenceBatch, got {type(data).__name__}"
    )


def loader_batch(batch: Any) -> torch.Tensor | SequenceBatch:
    """A DataLoader's batch as the trainer takes it: a Tensor or a SequenceBatch."""
    if isinstance(batch, (list, tuple)) and not isinstance(batch, SequenceBatch) and len(batch) == 1:
        batch = batch[0]
    if isinstance(batch, (torch.Tensor, SequenceBatch)):
        return batch
    raise TypeError(
        f"Trainer: expected batches to be Tensors or SequenceBatches, got {type(batch).__name__}; "
        "batch sequences with collate_fn=bbvae.data.collate_sequences"
    )


def _rebuild(loader: DataLoader, dataset: Dataset, batch_sampler, generator: torch.Generator) -> DataLoader:
    """A DataLoader like ``loader`` (workers, pinning, collate...) fed by ``batch_sampler``."""
    kwargs = {key: getattr(loader, key) for key in _LOADER_SETTINGS if hasattr(loader, key)}
    if not kwargs.get("num_workers"):
        kwargs.pop("prefetch_factor", None)
        kwargs["persistent_workers"] = False
    return DataLoader(dataset, batch_sampler=batch_sampler, generator=generator, **kwargs)


class _Replay(Sampler[list[int]]):
    """A batch sampler that yields a stored list of batches from a given position."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.start = 0

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches[self.start :])

    def __len__(self) -> int:
        return len(self.batches) - self.start


class EpochBatches:
    """Training data whose every epoch is a batch order drawn once, stored and replayable.

    Args:
        data: anything :meth:`Trainer.fit` accepts (see the module docstring).
        batch_size: items per batch (unused for a DataLoader).
        generator: the trainer's generator; the default samplers draw from it.
        length_bucketing: batches per pool of a :class:`~bbvae.data.BucketBatchSampler` (None: a
            :class:`~bbvae.data.RandomBatchSampler`); unused for a DataLoader.
    """

    def __init__(self, data: Any, batch_size: int, generator: torch.Generator, length_bucketing) -> None:
        self._loader_generator = torch.Generator()
        self._replay = _Replay()
        self.resumable = True
        if isinstance(data, DataLoader):
            if isinstance(data.sampler, DistributedSampler):
                raise ValueError(
                    "Trainer.fit: got a DataLoader with a DistributedSampler; under torchrun the trainer "
                    "gives each rank its rows of every global batch itself, so pass a plain sampler"
                )
            self.dataset = data.dataset
            self.sampler = data.batch_sampler
            self.collate_fn = data.collate_fn
            if self.sampler is None or isinstance(data.dataset, IterableDataset):
                self.resumable = False
                self.loader = data
                return
            self.loader = _rebuild(data, data.dataset, self._replay, self._loader_generator)
            return
        self.dataset = as_dataset(data, "train_data")
        self.collate_fn = collate_fn_of(self.dataset)
        n = len(self.dataset)
        if n == 0:
            raise ValueError("Trainer.fit: train_data holds no data point")
        lengths = sequence_lengths(self.dataset) if length_bucketing is not None else None
        if length_bucketing is not None and lengths is None:
            raise ValueError(
                "Trainer: length_bucketing needs a sequence Dataset with lengths (e.g. a SequenceDataset), "
                f"got {type(self.dataset).__name__}"
            )
        if lengths is not None:
            self.sampler = BucketBatchSampler(lengths, batch_size, pool=length_bucketing, generator=generator)
        else:
            self.sampler = RandomBatchSampler(n, batch_size, generator=generator)
        self.loader = DataLoader(
            self.dataset,
            batch_sampler=self._replay,
            collate_fn=self.collate_fn,
            generator=self._loader_generator,
        )

    def draw(self, epoch: int) -> list[list[int]] | None:
        """The batch order of epoch ``epoch`` (0-based): rank 0's under torchrun; None if not resumable."""
        if not self.resumable:
            return None
        for target in (self.sampler, getattr(self.sampler, "sampler", None)):
            if callable(getattr(target, "set_epoch", None)):
                target.set_epoch(epoch)
        order = [[int(i) for i in batch] for batch in self.sampler]
        if distributed.get_world_size() > 1:
            order = distributed.all_gather_objects(order)[0]
        return order

    def iterate(self, order: list[list[int]] | None, start: int, epoch: int, seed: int) -> Iterator:
        """The batches of an epoch from position ``start`` (batches already used are skipped).

        ``seed`` and ``epoch`` seed the DataLoader's own generator (its workers' base seed).
        """
        self._loader_generator.manual_seed((seed * 1_000_003 + epoch) % 2**63)
        if order is None:
            batches = iter(self.loader)
            if start:
                warnings.warn(
                    "Trainer.fit: the training DataLoader has no batch sampler (an IterableDataset or "
                    f"batch_size=None), so its order cannot be replayed; {start} batches are skipped by "
                    "drawing them again, which resumes exactly only if the data come in the same order",
                    RuntimeWarning,
                    stacklevel=4,
                )
            for _ in range(start):
                next(batches, None)
            return (loader_batch(b) for b in batches)
        self._replay.batches, self._replay.start = order, start
        return (loader_batch(b) for b in self.loader)

    def first_batch(self, n: int):
        """The first ``n`` items in their stored order, collated (for ``Loss.prepare``)."""
        if not self.resumable:
            return next((loader_batch(b) for b in iter(self.loader)), None)
        count = min(n, len(self.dataset))
        if count == 0:
            return None
        return loader_batch(self.collate_fn([self.dataset[i] for i in range(count)]))

    def num_batches(self) -> int | None:
        try:
            return len(self.sampler) if self.resumable else len(self.loader)
        except TypeError:
            return None


def evaluation_loader(data: Any, batch_size: int, name: str) -> Iterator:
    """The batches of validation data, in order (a DataLoader is used as it is)."""
    if isinstance(data, DataLoader):
        return (loader_batch(b) for b in data)
    dataset = as_dataset(data, name)
    n = len(dataset)
    order = [list(range(i, min(i + batch_size, n))) for i in range(0, n, batch_size)]
    loader = DataLoader(
        dataset, batch_sampler=order, collate_fn=collate_fn_of(dataset), generator=torch.Generator()
    )
    return (loader_batch(b) for b in loader)


def order_to_tensors(order: list[list[int]] | None) -> dict[str, torch.Tensor] | None:
    """A batch order as two long tensors (flat indices, batch sizes), for a checkpoint."""
    if order is None:
        return None
    flat = torch.tensor([i for batch in order for i in batch], dtype=torch.long)
    sizes = torch.tensor([len(batch) for batch in order], dtype=torch.long)
    return {"indices": flat, "sizes": sizes}


def order_from_tensors(state: dict[str, torch.Tensor] | None) -> list[list[int]] | None:
    if state is None:
        return None
    return [chunk.tolist() for chunk in state["indices"].split(state["sizes"].tolist())]


# ----------------------------------------------------------------------- deprecated names
#: Deprecated name of :class:`bbvae.data.SequenceDataset` (what ``SequenceData(sequences, inputs)``
#: built is now that Dataset).
SequenceData = SequenceDataset


def DatasetSplit(dataset: Any, split: str, **kwargs: Any) -> Dataset:  # noqa: N802 (a former class)
    """Deprecated: ``dataset.dataset(split, **kwargs)``, the split as a torch Dataset."""
    if not callable(getattr(dataset, "dataset", None)):
        raise TypeError(
            f"DatasetSplit: expected a data set with a dataset() method, got {type(dataset).__name__}"
        )
    return dataset.dataset(split, **kwargs)
