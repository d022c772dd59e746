"""The trainer's state: checkpoints (``last.pt``, ``best.pt``), exact resumption, rollback.

The state holds the model's and optimizer's tensors, the step, epoch and position in the epoch,
the data order's generator state at the start of the epoch, every process's random state, the
histories and the log position, so that a resumed run reproduces the uninterrupted one. A
non-finite loss rolls the model and optimizer back to the last good state
(:class:`NonFiniteLossError`).
"""

from __future__ import annotations

import copy
import os
import warnings
from pathlib import Path
from typing import Any

import torch

from bbvae import distributed
from bbvae._validation import shape_str
from bbvae.checkpoint import (
    CheckpointError,
    capture_rng_state,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from bbvae.training.data import order_from_tensors, order_to_tensors
from bbvae.training.rng import set_seed

__all__ = [
    "BEST_CHECKPOINT",
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_VERSION",
    "LAST_CHECKPOINT",
    "NonFiniteLossError",
    "TrainerCheckpointing",
]

CHECKPOINT_FORMAT = "bbvae.trainer"
CHECKPOINT_VERSION = 2  # 2: the epoch under way is kept as its batch order (1: a generator state)
LAST_CHECKPOINT = "last.pt"
BEST_CHECKPOINT = "best.pt"


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


class TrainerCheckpointing:
    """The :class:`~bbvae.training.Trainer`'s state, checkpoints, resumption and rollback."""

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

    def _make_state(self) -> dict[str, Any]:
        """The full training state, with tensors cloned (a collective under torchrun)."""
        rng = distributed.all_gather_objects(capture_rng_state())
        return {
            "format": CHECKPOINT_FORMAT,
            "version": CHECKPOINT_VERSION,
            "torch_version": str(torch.__version__),
            "config": self.config(),
            "loss_class": qualname(type(self.loss)),
            "param_shapes": {k: list(v.shape) for k, v in self.loss.state_dict().items()},
            "world_size": self._world,
            "model_state": _clone_state(self.loss.state_dict()),
            "optimizer_state": copy.deepcopy(self.optimizer_.state_dict()),
            "lr_schedule_state": copy.deepcopy(self.lr_schedule_.state_dict()),
            "average_state": None if self.average_ is None else self.average_.state_dict(),
            "step": self.n_iter_,
            "epoch": self.n_epochs_,
            "batch_in_epoch": self._batch_in_epoch,
            "epoch_order": order_to_tensors(self._epoch_order),
            "generator_state": self.generator_.get_state(),
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
        schedule_state = state.get("lr_schedule_state")
        if schedule_state is not None:
            self.lr_schedule_.load_state_dict(copy.deepcopy(schedule_state))
        if not self._scheduled():  # a constant learning rate may be changed on resume
            for group in self.optimizer_.param_groups:
                group["lr"] = self.learning_rate
        if self.average_ is not None:
            self.average_.load_state_dict(state["average_state"])
        self.n_iter_ = state["step"]
        self.n_epochs_ = state["epoch"]
        self._batch_in_epoch = state["batch_in_epoch"]
        if "epoch_order" in state:
            self._epoch_order = order_from_tensors(state["epoch_order"])
            self.generator_.set_state(state["generator_state"].clone())
        else:  # version 1: the epoch's order is drawn again from the generator's state at its start
            self._epoch_order = None
            self.generator_.set_state(state["epoch_generator_state"].clone())
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
        keys = ("optimizer", "optimizer_kwargs", "batch_size", "use_inputs", "ema_decay")
        keys += ("lr_schedule", "lr_schedule_kwargs", "warmup_steps", "warmup_start_factor")
        keys += ("tbptt_chunk",)  # (another gradient estimator; remat_chunk and compile are not)
        # what a checkpoint written before a setting existed means by its absence
        absent = {"lr_schedule_kwargs": {}, "warmup_steps": 0, "warmup_start_factor": 0.01}
        absent["tbptt_chunk"] = None
        for key in keys:
            value = saved.get(key, absent.get(key))
            obj = getattr(self, key, None)
            if callable(obj) and not isinstance(obj, str) and same_name(value, obj):
                continue  # a callable optimizer or schedule, stored by name
            if _normalise(value) != _normalise(current[key]):
                problems.append(f"{key}={value!r} there, {current[key]!r} here")
        if self.seed is not None and saved.get("seed") != self.seed:
            problems.append(f"seed={saved.get('seed')!r} there, {self.seed!r} here")
        loss_class = qualname(type(self.loss))
        if not same_name(state.get("loss_class"), type(self.loss)):
            problems.append(f"loss {state.get('loss_class')} there, {loss_class} here")
        shapes = {k: list(v.shape) for k, v in self.loss.state_dict().items()}
        saved_shapes = state.get("param_shapes", {})
        for key in _state_added_later(self.loss) - set(saved_shapes):
            shapes.pop(key, None)  # a buffer newer than the checkpoint: it resumes at its start
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

    def _scheduled(self) -> bool:
        return self.lr_schedule not in (None, "constant") or self.warmup_steps > 0

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


def qualname(obj: Any) -> str:
    """``module.QualifiedName`` of a class or function (stored in checkpoints to compare runs)."""
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', type(obj).__name__)}"


def _legacy_qualname(obj: Any) -> str:
    # Checkpoints before 2026-12 stored ``module.type`` (a misspelt attribute): still accepted.
    return f"{getattr(obj, '__module__', '?')}.{type(obj).__name__}"


def same_name(saved: Any, obj: Any) -> bool:
    """Whether a name stored in a checkpoint denotes ``obj`` (its qualname, or the legacy form)."""
    return saved in (qualname(obj), _legacy_qualname(obj))


def _normalise(value: Any) -> Any:
    """Tuples and lists compare equal (a checkpoint may hold either)."""
    if isinstance(value, (list, tuple)):
        return [_normalise(v) for v in value]
    if isinstance(value, dict):
        return {k: _normalise(v) for k, v in value.items()}
    return value


def _state_added_later(module: torch.nn.Module) -> set[str]:
    """State-dict keys that modules declare as newer than some checkpoints (``STATE_ADDED_LATER``):
    their ``_load_from_state_dict`` fills them in when absent, so a run may resume without them."""
    keys = set()
    for prefix, sub in module.named_modules():
        for name in getattr(sub, "STATE_ADDED_LATER", ()):
            keys.add(f"{prefix}.{name}" if prefix else name)
    return keys
