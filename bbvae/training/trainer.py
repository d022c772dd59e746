"""The :class:`Trainer`: its settings, :meth:`Trainer.fit` and the batches it feeds the loss.

The Trainer's other methods come from one mixin per job: :mod:`~bbvae.training.loop`,
:mod:`~bbvae.training.checkpointing`, :mod:`~bbvae.training.evaluation`, :mod:`~bbvae.training.logs`
and :mod:`~bbvae.training.settings`. See :mod:`bbvae.training` for the data protocol.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from bbvae import distributed
from bbvae.checkpoint import remove_stale_temporaries
from bbvae.data.batching import SequenceBatch
from bbvae.sequential.scheduled import set_scheduled_sampling
from bbvae.training.averaging import ParameterAverage
from bbvae.training.callbacks import Callback
from bbvae.training.checkpointing import BEST_CHECKPOINT, LAST_CHECKPOINT, TrainerCheckpointing
from bbvae.training.data import EpochBatches, as_dataset
from bbvae.training.evaluation import TrainerEvaluation
from bbvae.training.interrupts import SignalGuard, TrainingInterrupted
from bbvae.training.logs import TrainerLogging
from bbvae.training.loop import TrainingLoop
from bbvae.training.rng import set_seed
from bbvae.training.schedules import LearningRateSchedule
from bbvae.training.settings import TrainerSettings

__all__ = ["Trainer"]


class Trainer(TrainingLoop, TrainerCheckpointing, TrainerEvaluation, TrainerLogging, TrainerSettings):
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
        lr_schedule: ``None``/``"constant"``, ``"plateau"`` (reduce on a plateau of the validation
            bound, stepped at validations), ``"cosine"`` (over ``max_steps - warmup_steps``),
            ``"step"``, or a callable ``optimizer -> torch LR scheduler`` stepped every optimizer
            step (see :mod:`bbvae.training.schedules`). The learning rate is logged (``lr``).
        lr_schedule_kwargs: keywords of the scheduler (``factor``, ``patience`` for plateau;
            ``T_max``, ``eta_min`` for cosine; ``step_size``, ``gamma`` for step).
        warmup_steps: linear warm-up of the learning rate over this many first steps.
        warmup_start_factor: the warm-up starts at this fraction of ``learning_rate``.
        ema_decay: keep an exponential moving average of the parameters with this decay (e.g.
            0.999; None: off). The average is what validation scores, what ``best.pt`` and early
            stopping select, and the model left in place at the end of :meth:`fit`
            (see :mod:`bbvae.training.averaging`).
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
        length_bucketing: batch sequences of similar length together
            (:class:`~bbvae.data.BucketBatchSampler`): each epoch draws the sequences at random in
            pools of this many batches and sorts every pool by length before cutting it into
            batches, which wastes less padding (None: plain shuffling). Needs a sequence Dataset
            with ``lengths``; unused when the training data is a DataLoader.
        tensorboard: also write the log rows as TensorBoard scalars (``torch.utils.tensorboard``,
            ``pip install 'bbvae[tensorboard]'``): True puts the events in ``logdir/tensorboard``,
            a path puts them there (see :mod:`bbvae.training.tensorboard`).
        scheduled_sampling: feed the sequence model's own samples back while training
            (:mod:`bbvae.sequential.scheduled`): a spec such as ``"inverse_sigmoid:k=1000"``, a
            dict or a ``ScheduledSampling``, set on every sequence model of the loss at the start
            of :meth:`fit` (None: leave the models as they are). Whatever set it, every submodule
            of the loss with a ``set_training_step(step)`` method is told the number of optimizer
            steps taken before each step, so the schedule follows ``n_iter_`` (and a resumed run
            continues it exactly).
        compile: ``True`` (or a dict of ``torch.compile`` keywords): at the start of :meth:`fit`
            every sequence model of the loss gets its step compiled (``model.compile_step()``,
            unless it is compiled already; :mod:`bbvae.sequential.compiled`), with an eager
            fallback and a warning where compilation fails. False: the models are left as they are.
        remat_chunk: activation checkpointing over chunks of this many time steps, set on every
            sequence model of the loss at the start of :meth:`fit` (``model.remat_chunk``): the
            same bound and gradients with bounded memory on long sequences, one more forward pass
            (:mod:`bbvae.sequential.chunks`). None: the models are left as they are.
        tbptt_chunk: truncated backpropagation through time every this many steps, set likewise
            (``model.tbptt_chunk``): the same bound, a different (biased) gradient estimator.

    Attributes:
        loss_history_ (list[float]): the training loss (negative bound, mean over the batch
            and, under torchrun, over ranks) of every step, up to the last logging point while
            training and complete after :meth:`fit`.
        valid_history_ (list[float]): the validation bounds, in order.
        valid_steps_ (list[int]): the step at which each validation bound was computed.
        best_valid_ (float | None): the best validation bound (None without validation).
        best_step_ (int | None): the step at which it was reached (the chosen model's step when
            ``restore_best``).
        lr_schedule_ (LearningRateSchedule): the schedulers of the last :meth:`fit`.
        average_ (ParameterAverage | None): the parameters' moving average (``ema_decay`` set).
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
        lr_schedule: str | Callable | None = None,
        lr_schedule_kwargs: dict[str, Any] | None = None,
        warmup_steps: int = 0,
        warmup_start_factor: float = 0.01,
        ema_decay: float | None = None,
        logdir: str | os.PathLike | None = None,
        checkpoint_every: int = 1000,
        seed: int | None = 0,
        log_format: str = "jsonl",
        progress: bool = True,
        callbacks: Sequence[Callback] = (),
        use_inputs: bool = False,
        find_unused_parameters: bool = True,
        length_bucketing: int | None = None,
        tensorboard: bool | str | os.PathLike = False,
        scheduled_sampling: Any = None,
        compile: bool | dict = False,
        remat_chunk: int | None = None,
        tbptt_chunk: int | None = None,
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
        self.lr_schedule = lr_schedule
        self.lr_schedule_kwargs = lr_schedule_kwargs
        self.warmup_steps = warmup_steps
        self.warmup_start_factor = warmup_start_factor
        self.ema_decay = ema_decay
        self.logdir = logdir
        self.checkpoint_every = checkpoint_every
        self.seed = seed
        self.log_format = log_format
        self.progress = progress
        self.callbacks = callbacks
        self.use_inputs = use_inputs
        self.find_unused_parameters = find_unused_parameters
        self.length_bucketing = length_bucketing
        self.tensorboard = tensorboard
        self.scheduled_sampling = scheduled_sampling
        self.compile = compile
        self.remat_chunk = remat_chunk
        self.tbptt_chunk = tbptt_chunk
        self.stop_training = False

    #: Check the loss for NaN/inf after every step (True) or only at logging points (False);
    #: None: every step for single-process training on CPU, where reading the value is free.
    _check_every_step: bool | None = None

    # ------------------------------------------------------------------ settings

    # ------------------------------------------------------------------ fit
    def fit(
        self, train_data: Any, valid_data: Any = None, resume: bool | str | os.PathLike = False
    ) -> Trainer:
        """Train until ``max_steps`` / ``max_epochs`` / early stopping.

        Args:
            train_data: a torch ``Dataset`` or ``DataLoader``, a Tensor ``[N, ...]``, a list of
                ``[T_i, ...]`` sequences or a ``SequenceBatch`` (see :mod:`bbvae.training.data`).
            valid_data: the same for validation (None: no validation; ``evaluate_fn``, if given,
                receives it unchanged).
            resume: False (start afresh: the trainer's histories reset, the model keeps its
                current parameters); True (continue from ``logdir/last.pt``, which must exist);
                ``"auto"`` (continue if ``logdir/last.pt`` exists, else start afresh); or a
                checkpoint path. A resumed run reproduces the uninterrupted one: same batches,
                same random draws, same parameters. ``max_steps``, ``max_epochs``,
                ``learning_rate``, the evaluation, logging and checkpoint schedule may change
                on resume; ``optimizer``, ``optimizer_kwargs``, ``batch_size``, ``seed``,
                ``use_inputs``, the data, the loss class and its parameter shapes must not. The
                epoch under way is replayed in the order it was drawn in (see
                :mod:`bbvae.training.data` for the data whose order cannot be replayed).

        Returns:
            self.

        Raises:
            NonFiniteLossError: the loss (or the parameters) became NaN or infinite; the model
                and optimizer are back at the last good state (that of ``last.pt``).
            TrainingInterrupted: SIGINT (Ctrl-C) or SIGTERM arrived; the step under way was
                finished and saved to ``logdir/last.pt`` first (a second signal stops at once,
                leaving the previous ``last.pt``); see :mod:`bbvae.training.interrupts`.
            CheckpointError: the checkpoint to resume from does not match this trainer.
        """
        self._check_settings()
        self.generator_ = torch.Generator()  # the default samplers' random source
        train = EpochBatches(train_data, self.batch_size, self.generator_, self.length_bucketing)
        valid = None
        if valid_data is not None:
            keep = self.evaluate_fn is not None or isinstance(valid_data, DataLoader)
            valid = valid_data if keep else as_dataset(valid_data, "valid_data")
        if os.environ.get("WORLD_SIZE", "1") not in ("", "0", "1"):
            first = next(iter(self.loss.parameters()), None)
            on_cuda = first is not None and first.device.type == "cuda"
            distributed.init_from_env(backend="nccl" if on_cuda else "gloo")
        self._rank, self._world = distributed.get_rank(), distributed.get_world_size()
        self._is_main = self._rank == 0
        # (before a checkpoint's state, which holds the schedule's step, is loaded)
        if getattr(self, "scheduled_sampling", None) is not None:
            set_scheduled_sampling(self.loss, self.scheduled_sampling, "Trainer")
        self._apply_sequence_options()
        self._step_hooks = [m for m in self.loss.modules() if callable(getattr(m, "set_training_step", None))]
        if self.seed is not None:  # data-shaped parameters (NVIL's baseline) are seeded too
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.seed)
                self._prepare_loss(train)
        else:
            self._prepare_loss(train)
        params = self._parameters()
        self._params = params
        self._device = params[0].device
        self._dtype = params[0].dtype
        self.optimizer_ = self._make_optimizer(params)
        self.lr_schedule_ = LearningRateSchedule(
            self.optimizer_,
            self.lr_schedule,
            self.lr_schedule_kwargs,
            self.warmup_steps,
            self.warmup_start_factor,
            self.max_steps,
        )
        self.average_ = None if self.ema_decay is None else ParameterAverage(params, self.ema_decay)
        self.stop_training = False
        self._logdir = None if self.logdir is None else Path(self.logdir)
        if self._logdir is not None and self._is_main:  # left by a process killed mid-write
            for name in (LAST_CHECKPOINT, BEST_CHECKPOINT):
                remove_stale_temporaries(self._logdir / name)
        self._signals = SignalGuard(enabled=self._world == 1)

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
        self._writer = self._bar = self._tensorboard = None
        try:
            self._writer = self._open_log(resumed=ckpt_path is not None)
            self._tensorboard = self._open_tensorboard()
            self._bar = self._open_bar(train)
            model = distributed.wrap_ddp(self.loss, self.find_unused_parameters)
            for cb in self.callbacks:
                cb.on_fit_start(self)
            with self._signals:  # a first Ctrl-C / SIGTERM: save the step reached, then stop
                self._loop(model, train, valid, valid_data)
                self._finish()
                self._stop_if_signalled()
        except TrainingInterrupted as exc:
            if exc.step is not None:
                raise
            raise self._stopped_at_once(exc) from None
        finally:
            model = None  # drops the DDP wrapper and its gradient hooks
            self._good_state = self._best_model_state = None  # copies only needed while fitting
            if self._writer is not None:
                self._writer.close()
            if self._tensorboard is not None:
                self._tensorboard.close()
            if self._bar is not None:
                self._bar.close()
        for cb in self.callbacks:
            cb.on_fit_end(self)
        return self

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
        self._epoch_order: list[list[int]] | None = None  # the batches of the epoch under way
        self._bad_evals = 0
        self._elapsed = 0.0
        self._log_rows = 0
        self._rows_upto = 0  # len(loss_history_) covered by the rows written so far
        self._pending: list[torch.Tensor] = []
        self._best_model_state = None
        self._written_step: int | None = None

    def _prepare_loss(self, train: EpochBatches) -> None:
        """Let the loss build data-shaped parameters (``Loss.prepare``) before the optimiser exists."""
        prepare = getattr(self.loss, "prepare", None)
        if not callable(prepare):
            return
        first = train.first_batch(self.batch_size)
        if first is None:
            return
        param = next(iter(self.loss.parameters()), None)
        device = param.device if param is not None else torch.device("cpu")
        x, context = self._loss_args(first, device, param.dtype if param is not None else None)
        prepare(x, **context)

    def _loss_args(
        self, batch, device: torch.device, dtype: torch.dtype | None = None
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        """``(x, {"lengths", "inputs"})`` of a batch on ``device``; float data take ``dtype``."""
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
        if dtype is not None and dtype.is_floating_point:  # float data take the parameters' dtype
            if x.is_floating_point() and x.dtype != dtype:
                x = x.to(dtype)
            inputs = context.get("inputs")
            if inputs is not None and inputs.is_floating_point() and inputs.dtype != dtype:
                context["inputs"] = inputs.to(dtype)
        return x, context
