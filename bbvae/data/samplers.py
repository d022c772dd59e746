"""Batch samplers: which sequences go together, in which order (``torch.utils.data`` batch samplers).

Both yield lists of indices and draw every random choice from the ``generator`` they are given
(torch's global generator without one), so that an order is reproducible from a seed.

* :class:`RandomBatchSampler`: ``torch.randperm(n)`` cut into batches of ``batch_size`` (the order
  :class:`~bbvae.training.Trainer` uses by default).
* :class:`BucketBatchSampler`: length bucketing. Sequences are drawn at random in pools of
  ``pool`` batches; each pool is sorted by length and cut into batches, and the batches of all
  pools are shuffled. A batch then holds sequences of similar length, so less of it is padding,
  while the composition of the batches still changes from epoch to epoch.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import Sampler

__all__ = ["BucketBatchSampler", "RandomBatchSampler", "padding_fraction"]


def _check_int(name: str, value: object, where: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{where}: expected {name} to be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{where}: expected {name} >= {minimum}, got {value}")
    return value


def _permutation(n: int, generator: torch.Generator | None) -> torch.Tensor:
    device = generator.device if generator is not None else torch.device("cpu")
    return torch.randperm(n, generator=generator, device=device).cpu()


class RandomBatchSampler(Sampler[list[int]]):
    """``n`` indices in batches of ``batch_size``: a fresh random permutation each pass.

    Args:
        n: the number of items.
        batch_size: items per batch (the last batch holds the ``n % batch_size`` others).
        shuffle: draw ``torch.randperm(n, generator=generator)``; without it ``0..n-1`` in order.
        drop_last: drop a last batch smaller than ``batch_size``.
        generator: the random source (None: torch's global generator).
    """

    def __init__(
        self,
        n: int,
        batch_size: int,
        *,
        shuffle: bool = True,
        drop_last: bool = False,
        generator: torch.Generator | None = None,
    ) -> None:
        self.n = _check_int("n", n, "RandomBatchSampler", minimum=0)
        self.batch_size = _check_int("batch_size", batch_size, "RandomBatchSampler")
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.generator = generator

    def __iter__(self) -> Iterator[list[int]]:
        order = _permutation(self.n, self.generator) if self.shuffle else torch.arange(self.n)
        for batch in order.split(self.batch_size):
            if self.drop_last and len(batch) < self.batch_size:
                return
            yield batch.tolist()

    def __len__(self) -> int:
        full, rest = divmod(self.n, self.batch_size)
        return full + (1 if rest and not self.drop_last else 0)


class BucketBatchSampler(Sampler[list[int]]):
    """Length bucketing: batches of sequences of similar length, in a random order.

    Each pass draws a random permutation of the ``n`` sequences, cuts it into pools of
    ``pool * batch_size`` sequences, sorts every pool by decreasing length (ties keep their
    drawn order) and cuts it into batches; then the order of all batches is shuffled. With
    ``pool=None`` the whole data set is one pool, sorted once (ties in index order): the batches
    are the same every pass (their order still changes), and padding is smallest.

    Args:
        lengths: the ``n`` sequence lengths (e.g. ``dataset.lengths``).
        batch_size: sequences per batch (the last batch of a pool may be smaller).
        pool: batches per pool (None: one pool).
        shuffle: draw the pools at random and shuffle the batches; without it the sequences are
            taken in order (pools of consecutive sequences) and the batches kept in pool order.
        drop_last: drop batches smaller than ``batch_size``.
        generator: the random source (None: torch's global generator).
    """

    def __init__(
        self,
        lengths: Sequence[int],
        batch_size: int,
        *,
        pool: int | None = 50,
        shuffle: bool = True,
        drop_last: bool = False,
        generator: torch.Generator | None = None,
    ) -> None:
        where = "BucketBatchSampler"
        self.lengths = torch.as_tensor([int(n) for n in lengths], dtype=torch.long)
        if self.lengths.dim() != 1 or (self.lengths.numel() and int(self.lengths.min()) < 1):
            raise ValueError(f"{where}: expected lengths to be a list of ints >= 1")
        self.batch_size = _check_int("batch_size", batch_size, where)
        self.pool = None if pool is None else _check_int("pool", pool, where)
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.generator = generator

    def _batches(self) -> list[torch.Tensor]:
        n = self.lengths.numel()
        shuffled = self.shuffle and self.pool is not None  # one pool: fixed batches (ties in index order)
        order = _permutation(n, self.generator) if shuffled else torch.arange(n)
        size = n if self.pool is None else self.pool * self.batch_size
        batches = []
        for chunk in order.split(max(size, 1)):
            by_length = torch.argsort(-self.lengths[chunk], stable=True)  # decreasing length
            batches += list(chunk[by_length].split(self.batch_size))
        if self.drop_last:
            batches = [b for b in batches if len(b) == self.batch_size]
        if self.shuffle and batches:
            batches = [batches[i] for i in _permutation(len(batches), self.generator).tolist()]
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self._batches():
            yield batch.tolist()

    def __len__(self) -> int:
        n = self.lengths.numel()
        size = n if self.pool is None else self.pool * self.batch_size
        count = 0
        for start in range(0, n, max(size, 1)):
            full, rest = divmod(min(size, n - start), self.batch_size)
            count += full + (1 if rest and not self.drop_last else 0)
        return count


def padding_fraction(lengths: Sequence[int], batches: Sequence[Sequence[int]]) -> float:
    """The fraction of the padded steps of ``batches`` that are padding (``1 - real / padded``).

    A batch of the sequences ``b`` is padded to ``len(b) * max(lengths[i] for i in b)`` steps.
    """
    real = padded = 0
    for batch in batches:
        sizes = [int(lengths[i]) for i in batch]
        real += sum(sizes)
        padded += len(sizes) * max(sizes)
    return 1.0 - real / padded if padded else 0.0
