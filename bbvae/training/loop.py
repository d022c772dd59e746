"""The training loop: epochs, steps, logging points, validations, checkpoints, stopping.

One step is ``zero_grad(set_to_none=True)``, ``loss(batch)``, ``backward()``, optional gradient
clipping, ``optimizer.step()``; the step losses are read (one device sync) only at logging points.
"""

from __future__ import annotations

import contextlib
import math
import signal
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from bbvae import distributed
from bbvae.checkpoint import CheckpointError
from bbvae.training.checkpointing import NonFiniteLossError
from bbvae.training.data import EpochBatches
from bbvae.training.interrupts import TrainingInterrupted

__all__ = ["TrainingLoop"]


class TrainingLoop:
    """The :class:`~bbvae.training.Trainer`'s loop (the methods :meth:`Trainer.fit` runs)."""

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

    def _loop(self, model: nn.Module, train: EpochBatches, valid, valid_data) -> None:
        eager_check = self._check_every_step
        if eager_check is None:  # reading a CPU scalar costs nothing; elsewhere wait for a logging point
            eager_check = self._world == 1 and self._device.type == "cpu"
        batches: Iterator | None = None
        batch = None
        while not (reason := self._stop_reason()):
            self._stop_if_signalled()
            if batches is None:
                batches = self._epoch_iterator(train)
                batch = self._next_batch(batches)
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
                x, context = self._loss_args(batch, self._device, self._dtype)
                self._after_step(model, x, context, eager_check, valid, valid_data)
            # Look one batch ahead, so that an epoch ends as soon as its last batch is used.
            batch = self._next_batch(batches)
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

    def _next_batch(self, batches: Iterator):
        """The next batch (None at the end of the epoch).

        A terminal's Ctrl-C also reaches a DataLoader's worker processes, which then exit; the
        batch that fails for want of them is the signal's doing: stop as for the signal.
        """
        try:
            return next(batches, None)
        except Exception:
            if self._signals.received is None:
                raise
            self._stop_if_signalled()
            raise

    def _stop_if_signalled(self) -> None:
        """After a first SIGINT/SIGTERM: write last.pt for the step reached and raise TrainingInterrupted."""
        signum = self._signals.received
        if signum is None:
            return
        step = self.n_iter_
        if self._written_step != step:
            self._checkpoint()
        path = self.checkpoint_path_ if self._written_step == step else None
        if path is not None:
            saved = f"saved step {step} in {str(path)!r}; fit(..., resume=True) continues from it"
        else:
            saved = f"nothing was written (logdir=None); the model holds the parameters of step {step}"
        name = signal.Signals(signum).name
        raise TrainingInterrupted(f"Trainer.fit: {name} received at step {step}; {saved}", signum, step, path)

    def _stopped_at_once(self, exc: TrainingInterrupted) -> TrainingInterrupted:
        """The error of a second signal, which stopped training wherever it was."""
        path, written = self.checkpoint_path_, self._written_step
        if path is not None and written is not None:
            kept = f"the last checkpoint, of step {written}, is intact in {str(path)!r}"
        else:
            kept = "no checkpoint was written"
        signum = signal.Signals[exc.signal_name]
        return TrainingInterrupted(
            f"Trainer.fit: {exc.signal_name} received twice; stopped at once after step {self.n_iter_}; "
            + kept,
            signum,
            None,
            None,
        )

    def _end_epoch(self, valid, valid_data) -> None:
        self.n_epochs_ += 1
        self._batch_in_epoch = 0
        self._epoch_order = None
        if self.eval_every is None and valid is not None:
            self._flush()
            self._evaluate_and_track(valid, valid_data)
        for cb in self.callbacks:
            cb.on_epoch_end(self, self.n_epochs_)

    def _epoch_iterator(self, train: EpochBatches) -> Iterator:
        # The order of an epoch is drawn once, when it starts, and kept (in checkpoints too); a
        # resumed run replays it from the batch it had reached.
        if self._epoch_order is None:
            self._epoch_order = train.draw(self.n_epochs_)
        order = self._epoch_order
        if order is not None and self._batch_in_epoch:
            n_items = len(train.dataset)
            top = max((max(batch) for batch in order if batch), default=-1)
            if self._batch_in_epoch > len(order) or top >= n_items:
                raise CheckpointError(
                    f"Trainer.fit: the checkpoint is {self._batch_in_epoch} of {len(order)} batches into an "
                    f"epoch over items up to {top}, but train_data has {n_items} items; resume with the "
                    "same data"
                )
        return train.iterate(order, self._batch_in_epoch, self.n_epochs_, self.seed_)

    def _step(self, model: nn.Module, x: torch.Tensor, context: dict[str, Any], eager_check: bool) -> None:
        step = self.n_iter_ + 1
        # e.g. a scheduled-sampling schedule: told the steps taken so far (0-based)
        for hook in getattr(self, "_step_hooks", ()):
            hook.set_training_step(self.n_iter_)
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
        self.lr_schedule_.after_step()
        if self.average_ is not None:
            self.average_.update()
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

    def _evaluate_and_track(self, valid, valid_data) -> None:
        # With weight averaging, the average is the model being validated and selected.
        with self._averaged():
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
            for cb in self.callbacks:  # (they see the model that was validated)
                cb.on_evaluate(self, self.n_iter_, value)
        self.lr_schedule_.after_validation(value)

    def _averaged(self):
        """A context in which the parameters hold their moving average (no-op without one)."""
        return self.average_.swapped_in() if self.average_ is not None else contextlib.nullcontext()

    def _finish(self) -> None:
        # The checkpoint comes before the closing log row, which a resumed run drops and
        # rewrites at its own next logging point, so its log matches an uninterrupted run's.
        self._checkpoint()
        distributed.barrier()  # last.pt is on disk before any rank moves on (and maybe reads it)
        if self._rows_upto < len(self.loss_history_):
            self._write_row(None)
        if self.restore_best and self._best_model_state is not None:
            self.loss.load_state_dict(self._best_model_state)
        elif self.average_ is not None:
            self.average_.copy_to_params()
        self._elapsed = self._elapsed_now()
