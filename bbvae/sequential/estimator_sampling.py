"""How :class:`~bbvae.sequential.SequenceModel` samples: new sequences, and continuations of prefixes."""

from __future__ import annotations

import torch

from bbvae.data.batching import collate_sequences
from bbvae.estimator_base import check_int, check_is_fitted
from bbvae.sequential.base import generate
from bbvae.sequential.estimator_data import to_sequences

__all__ = ["SequenceModelSampling"]


class SequenceModelSampling:
    """Sampling methods of :class:`~bbvae.sequential.SequenceModel` (a mixin of the estimator)."""

    def sample(self, n: int = 1, length: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw ``n`` sequences ancestrally from the trained model.

        Args:
            n: number of sequences.
            length: steps per sequence (None: ``max_length`` if set, else the mean training
                length ``mean_length_``).

        Returns:
            ``(x [n, length, *obs_shape], z [n, length, *latent_shape])`` on the CPU (x is long for
            symbols).
        """
        check_is_fitted(self, "sample")
        where = f"{type(self).__name__}.sample"
        check_int("n", n, where)
        length = self._default_length(length, where)
        x, z = generate(self.model_, n, length=length)
        return x.cpu(), z.cpu()

    def sample_continuations(
        self, prefixes, n_samples: int = 1, length: int | None = None, n_particles: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Continue each prefix: filter it with a particle filter, then sample ahead ancestrally.

        Args:
            prefixes: ``B`` beginnings, a list of ``[P_i, *obs_shape]`` tensors, a SequenceBatch or a
                Tensor ``[B, P, *obs_shape]`` (each continuation starts after its own prefix).
            n_samples: continuations per prefix.
            length: steps to generate (None: as in :meth:`sample`).
            n_particles: particles of the filter (None: ``max(n_samples_eval or n_samples, 16)``).

        Returns:
            ``(x [B, n_samples, length, *obs_shape], z [B, n_samples, length, *latent_shape])`` on
            the CPU.
        """
        from bbvae.sequential.sampling import sample_continuations

        check_is_fitted(self, "sample_continuations")
        where = f"{type(self).__name__}.sample_continuations"
        check_int("n_samples", n_samples, where)
        check_int("n_particles", n_particles, where, optional=True)
        length = self._default_length(length, where)
        seqs = self._check_sequences(to_sequences(prefixes, "test", None, where), where)
        batch = collate_sequences(seqs)
        param = next(iter(self.model_.parameters()))
        x = batch.x.to(param.device)
        if x.is_floating_point():
            x = x.to(param.dtype)
        was_training = self.model_.training
        self.model_.eval()
        try:
            xs, zs = sample_continuations(
                self.model_,
                x,
                n_samples,
                length,
                lengths=batch.lengths.to(param.device),
                n_particles=n_particles or max(self.n_samples_eval or self.n_samples, 16),
                resampling=self.resampling,
                ess_threshold=self.ess_threshold,
            )
        finally:
            self.model_.train(was_training)
        return xs.cpu(), zs.cpu()

    def _default_length(self, length: int | None, where: str) -> int:
        if length is None:
            return self.max_length or self.mean_length_
        check_int("length", length, where)
        return length
