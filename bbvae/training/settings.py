"""The trainer's settings: their checks, the optimizer they name, the config stored in checkpoints."""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn

from bbvae._validation import check_positive_int
from bbvae.losses.sequence_options import check_compile, ensure_compiled
from bbvae.sequential.base import SequentialModel
from bbvae.sequential.chunks import CHUNK_OPTIONS, check_chunk
from bbvae.sequential.scheduled import ScheduledSampling, parse_scheduled_sampling
from bbvae.training.averaging import check_ema_decay
from bbvae.training.callbacks import Callback
from bbvae.training.checkpointing import qualname
from bbvae.training.schedules import check_schedule

__all__ = ["OPTIMIZERS", "TrainerSettings"]

OPTIMIZERS: dict[str, type[torch.optim.Optimizer]] = {
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
    "sgd": torch.optim.SGD,
    "rmsprop": torch.optim.RMSprop,
    "adagrad": torch.optim.Adagrad,
}
LOG_FORMATS = ("jsonl", "csv")


class TrainerSettings:
    """Checks of the :class:`~bbvae.training.Trainer`'s settings, its optimizer and its config."""

    def _check_settings(self) -> None:
        name = "Trainer"
        if not isinstance(self.loss, nn.Module):
            raise TypeError(
                f"{name}: expected loss to be an nn.Module (a bbvae Loss), got {type(self.loss).__name__}"
            )
        if isinstance(self.optimizer, str):
            if self.optimizer not in OPTIMIZERS:
                raise ValueError(
                    f"{name}: expected optimizer in {sorted(OPTIMIZERS)} or a callable, "
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
        for key in (
            "eval_batch_size",
            "max_steps",
            "max_epochs",
            "eval_every",
            "patience",
            "length_bucketing",
        ):
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
        if self.tensorboard is True and self.logdir is None:
            raise ValueError(
                f"{name}: tensorboard=True writes to logdir/tensorboard; set logdir or give a path"
            )
        if not isinstance(self.tensorboard, (bool, str, os.PathLike)):
            raise TypeError(
                f"{name}: expected tensorboard to be a bool or a path, got {type(self.tensorboard).__name__}"
            )
        if self.log_format not in LOG_FORMATS:
            raise ValueError(f"{name}: expected log_format in {LOG_FORMATS}, got {self.log_format!r}")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)):
            raise TypeError(f"{name}: expected seed to be an int or None, got {type(self.seed).__name__}")
        check_schedule(
            self.lr_schedule,
            self.lr_schedule_kwargs,
            self.warmup_steps,
            self.warmup_start_factor,
            self.max_steps,
            name,
        )
        check_ema_decay(self.ema_decay, name)
        parse_scheduled_sampling(getattr(self, "scheduled_sampling", None), name)
        check_compile(getattr(self, "compile", False), name)
        for key in CHUNK_OPTIONS:
            check_chunk(key, getattr(self, key, None), name)
        for cb in self.callbacks:
            if not isinstance(cb, Callback):
                raise TypeError(
                    f"{name}: expected callbacks to be Callback instances, got {type(cb).__name__}"
                )

    def config(self) -> dict[str, Any]:
        """The settings stored in checkpoints (built-in types only)."""
        opt = self.optimizer if isinstance(self.optimizer, str) else qualname(self.optimizer)
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
            "length_bucketing": self.length_bucketing,
            "lr_schedule": self.lr_schedule if not callable(self.lr_schedule) else qualname(self.lr_schedule),
            "lr_schedule_kwargs": dict(self.lr_schedule_kwargs or {}),
            "warmup_steps": self.warmup_steps,
            "warmup_start_factor": float(self.warmup_start_factor),
            "ema_decay": self.ema_decay,
            "scheduled_sampling": _spec(getattr(self, "scheduled_sampling", None)),
            "compile": _compile_spec(getattr(self, "compile", False)),
            "remat_chunk": getattr(self, "remat_chunk", None),
            "tbptt_chunk": getattr(self, "tbptt_chunk", None),
        }

    def _apply_sequence_options(self) -> None:
        """``compile``, ``remat_chunk`` and ``tbptt_chunk`` onto every sequence model of the loss."""
        compile = getattr(self, "compile", False)
        chunks = {key: getattr(self, key, None) for key in CHUNK_OPTIONS}
        chunks = {key: value for key, value in chunks.items() if value is not None}
        if compile is False and not chunks:
            return
        models = [m for m in self.loss.modules() if isinstance(m, SequentialModel)]
        if not models:
            given = [f"{k}={v!r}" for k, v in {"compile": compile, **chunks}.items() if v is not False]
            raise ValueError(
                f"Trainer: {', '.join(given)} applies to sequence models, but "
                f"{type(self.loss).__name__} holds no SequentialModel"
            )
        for model in models:
            ensure_compiled(model, compile)
            for key, value in chunks.items():
                setattr(model, key, value)

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
        factory = OPTIMIZERS[self.optimizer] if isinstance(self.optimizer, str) else self.optimizer
        opt = factory(params, lr=self.learning_rate, **kwargs)
        if not isinstance(opt, torch.optim.Optimizer):
            raise TypeError(
                f"Trainer: the optimizer factory returned a {type(opt).__name__}, not a torch Optimizer"
            )
        return opt


def _spec(spec: Any) -> Any:
    """A scheduled-sampling spec as built-in types (a ScheduledSampling as its string)."""
    return spec.spec() if isinstance(spec, ScheduledSampling) else spec


def _compile_spec(spec: Any) -> Any:
    """``compile`` as built-in types for the checkpoint's config: a dict of ``torch.compile``
    keywords keeps its plain values and names its callables (e.g. a custom ``backend``)."""
    if not isinstance(spec, dict):
        return spec
    plain = (str, int, float, bool, type(None))
    return {key: value if isinstance(value, plain) else qualname(value) for key, value in spec.items()}
