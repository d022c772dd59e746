"""Synthetic sequences drawn from a :class:`~bbvae.sequential.GaussianHMM` with known parameters.

The generating model's exact log-likelihood (Kalman filter) is the yardstick every bound can be
compared with, so this is the data set for checking a training setup end to end.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from bbvae.data.batching import SequenceBatch, batch_indices, pad_sequences
from bbvae.data.datasets import SequenceDataset

__all__ = ["SyntheticData", "gaussian_hmm_data"]

_SPLITS = ("train", "valid", "test")


@dataclass
class SyntheticData:
    """Splits of real-valued sequences and the model that generated them.

    Attributes:
        model: the generating ``GaussianHMM`` (``model.exact_log_prob(x, lengths)`` is exact).
        train, valid, test: lists of ``[T_i, x_dim]`` tensors.
    """

    model: torch.nn.Module
    train: list[torch.Tensor]
    valid: list[torch.Tensor]
    test: list[torch.Tensor]

    def split(self, name: str) -> list[torch.Tensor]:
        if name not in _SPLITS:
            raise ValueError(f"SyntheticData: expected split in {_SPLITS}, got {name!r}")
        return getattr(self, name)

    def num_steps(self, name: str) -> int:
        return sum(len(s) for s in self.split(name))

    def dataset(self, name: str, *, dtype: torch.dtype = torch.float32) -> SequenceDataset:
        """Split ``name`` as a :class:`~bbvae.data.SequenceDataset` of ``[T_i, x_dim]`` ``dtype`` tensors."""
        return SequenceDataset([torch.as_tensor(s).to(dtype) for s in self.split(name)])

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
        """Padded batches ``SequenceBatch(x [B, T, x_dim], lengths [B], inputs=None)``."""
        seqs = self.split(name)
        order = batch_indices(
            [len(s) for s in seqs],
            batch_size,
            shuffle=shuffle,
            generator=generator,
            drop_last=drop_last,
            sort_by_length=sort_by_length,
        )
        for idx in order:
            yield pad_sequences([seqs[i] for i in idx], dtype=dtype, device=device)

    def full_batch(self, name: str, *, dtype=torch.float32, device=None) -> SequenceBatch:
        """The whole split as one padded batch."""
        return pad_sequences(self.split(name), dtype=dtype, device=device)


def gaussian_hmm_data(
    n_sequences: int = 300,
    length: int = 50,
    *,
    z_dim: int = 2,
    x_dim: int = 2,
    min_length: int | None = None,
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
    seed: int = 0,
) -> SyntheticData:
    """Draw sequences from a random stable ``GaussianHMM`` (float64 model, float32-ready data).

    Args:
        n_sequences: total number of sequences, split by ``fractions``.
        length: the longest sequence length.
        z_dim, x_dim: latent and observation dimensions.
        min_length: if given, lengths are uniform in ``[min_length, length]`` (ragged data).
        fractions: train / valid / test shares.
        seed: seeds the model and the draws; the global random state is left untouched.

    Returns:
        :class:`SyntheticData` with the generating model (transition ``0.9`` times a random
        rotation, so the process is stable) and the splits.
    """
    from bbvae.sequential.ghmm import GaussianHMM

    if n_sequences < 3 or length < 1:
        raise ValueError(
            f"gaussian_hmm_data: expected n_sequences >= 3 and length >= 1, got {n_sequences}, {length}"
        )
    if min_length is not None and not 1 <= min_length <= length:
        raise ValueError(f"gaussian_hmm_data: expected 1 <= min_length <= {length}, got {min_length}")
    if len(fractions) != 3 or abs(sum(fractions) - 1.0) > 1e-9 or min(fractions) < 0:
        raise ValueError(f"gaussian_hmm_data: fractions must be 3 shares summing to 1, got {fractions}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = GaussianHMM(z_dim, x_dim).double()
        with torch.no_grad():
            rotation, _ = torch.linalg.qr(torch.randn(z_dim, z_dim, dtype=torch.float64))
            model.transition.copy_(0.9 * rotation)
            model.transition_log_scale.fill_(math.log(0.5))
            model.emission.copy_(torch.randn(x_dim, z_dim, dtype=torch.float64))
            model.emission_log_scale.fill_(math.log(0.3))
        x, _ = model.sample(n_sequences, length)  # [n, length, x_dim]
        if min_length is None:
            lengths = [length] * n_sequences
        else:
            lengths = torch.randint(min_length, length + 1, (n_sequences,)).tolist()
    seqs = [x[i, : lengths[i]].float() for i in range(n_sequences)]
    n_train = int(n_sequences * fractions[0])
    n_valid = int(n_sequences * fractions[1])
    return SyntheticData(model, seqs[:n_train], seqs[n_train : n_train + n_valid], seqs[n_train + n_valid :])
