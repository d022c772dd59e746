"""What every bbvae estimator shares: the scikit-learn parameter contract and the Trainer glue.

The contract follows scikit-learn's (``sklearn/base.py``, ``sklearn/mixture/_base.py``):

* ``__init__`` only stores its keyword arguments, unchanged, under the same names, so
  :meth:`EstimatorMixin.get_params` / :meth:`EstimatorMixin.set_params` read them back from the
  signature and ``sklearn.base.clone`` works (scikit-learn is not a dependency);
* hyper-parameters are validated in ``fit``, not in ``__init__`` (the ``check_*`` helpers here);
* what is learned from data ends in ``_`` (``inf_net_``, ``loss_history_``, ``n_iter_``...);
* ``score_samples`` / ``score`` / ``sample`` before ``fit`` raise :class:`~bbvae.NotFittedError`
  (:func:`check_is_fitted`).

:func:`make_trainer` builds the :class:`~bbvae.training.Trainer` an estimator's hyper-parameters
describe and :func:`trainer_results` copies a finished trainer's histories onto the estimator.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from bbvae.base import NotFittedError
from bbvae.losses.base import Loss
from bbvae.training import Callback, Trainer

__all__ = [
    "EstimatorMixin",
    "check_choice",
    "check_float",
    "check_int",
    "check_is_fitted",
    "check_random_state",
    "make_trainer",
    "resolve_device",
    "split_callbacks",
    "trainer_results",
]


# ============================================================================ parameters
class EstimatorMixin:
    """``get_params`` / ``set_params`` / ``repr`` read from the signature of ``__init__`` (as in sklearn).

    A subclass's ``__init__`` takes explicit keyword parameters only (no ``*args`` or
    ``**kwargs``) and stores each, unchanged, as an attribute of the same name.
    """

    @classmethod
    def _get_param_names(cls) -> list[str]:
        init = cls.__init__
        if init is object.__init__:
            return []
        names = []
        for p in inspect.signature(init).parameters.values():
            if p.name == "self":
                continue
            if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
                raise TypeError(
                    f"{cls.__name__}: an estimator's __init__ must name its parameters explicitly, got {p}"
                )
            names.append(p.name)
        return sorted(names)

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """The hyper-parameters as ``{name: value}``.

        Args:
            deep: also return the parameters of nested estimators (objects with ``get_params``) as
                ``name__parameter``.
        """
        out: dict[str, Any] = {}
        for name in self._get_param_names():
            value = getattr(self, name)
            if deep and hasattr(value, "get_params") and not isinstance(value, type):
                out.update((f"{name}__{k}", v) for k, v in value.get_params().items())
            out[name] = value
        return out

    def set_params(self, **params: Any):
        """Set hyper-parameters (``name=value``, or ``name__parameter=value`` for a nested estimator).

        Returns:
            self.

        Raises:
            ValueError: a name is not a parameter of this estimator.
        """
        if not params:
            return self
        valid = self.get_params(deep=True)
        nested: dict[str, dict[str, Any]] = {}
        for key, value in params.items():
            name, sep, sub = key.partition("__")
            if name not in valid:
                raise ValueError(
                    f"{type(self).__name__}.set_params: invalid parameter {name!r}; valid parameters are "
                    f"{sorted(self._get_param_names())}"
                )
            if sep:
                nested.setdefault(name, {})[sub] = value
            else:
                setattr(self, name, value)
                valid[name] = value
        for name, sub_params in nested.items():
            valid[name].set_params(**sub_params)
        return self

    def __repr__(self) -> str:
        defaults = {
            p.name: p.default
            for p in inspect.signature(type(self).__init__).parameters.values()
            if p.default is not inspect.Parameter.empty
        }
        shown = []
        for name in self._get_param_names():
            value = getattr(self, name, None)
            if name in defaults and _same(value, defaults[name]):
                continue
            text = f"{type(value).__name__}(...)" if isinstance(value, nn.Module) else repr(value)
            shown.append(f"{name}={text}")
        return f"{type(self).__name__}({', '.join(shown)})"

    def __sklearn_is_fitted__(self) -> bool:
        return "loss_" in vars(self)

    def __sklearn_tags__(self):
        """scikit-learn's estimator tags (only scikit-learn >= 1.6 calls this, so it is imported here)."""
        from sklearn.utils import Tags, TargetTags

        return Tags(
            estimator_type="density_estimator",
            target_tags=TargetTags(required=False),
            non_deterministic=True,
        )


def _same(a: Any, b: Any) -> bool:
    if a is b:
        return True
    try:
        return bool(a == b) and type(a) is type(b)
    except Exception:  # tensors, arrays: compare by identity only
        return False


def check_is_fitted(estimator: Any, method: str) -> None:
    """Raise :class:`~bbvae.NotFittedError` unless ``estimator`` was fitted."""
    if not estimator.__sklearn_is_fitted__():
        name = type(estimator).__name__
        raise NotFittedError(
            f"This {name} instance is not fitted yet; call fit(X) before {method}() "
            f"(e.g. {name}(...).fit(X).{method}(...))"
        )


# ============================================================================ shared helpers
def check_choice(name: str, value: Any, choices: Sequence[str], where: str) -> str:
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{where}: expected {name} in {tuple(choices)}, got {value!r}")
    return value


def check_int(name: str, value: Any, where: str, minimum: int = 1, optional: bool = False) -> None:
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        expected = "an int or None" if optional else "an int"
        raise TypeError(f"{where}: expected {name} to be {expected}, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{where}: expected {name} >= {minimum}, got {value}")


def check_float(name: str, value: Any, where: str, low: float = 0.0, strict: bool = True) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise TypeError(f"{where}: expected {name} to be a finite number, got {value!r}")
    if value < low or (strict and value == low):
        raise ValueError(f"{where}: expected {name} {'>' if strict else '>='} {low}, got {value}")


def check_random_state(value: Any, where: str) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
        raise TypeError(f"{where}: expected random_state to be an int or None, got {type(value).__name__}")


def resolve_device(device: Any, where: str) -> torch.device | None:
    """``None`` or a valid, available ``torch.device``."""
    if device is None:
        return None
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"{where}: invalid device {device!r} ({exc})") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"{where}: device {device!r} requested, but CUDA is not available")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"{where}: device {device!r} requested, but MPS is not available")
    return dev


class _EstimatorCallback(Callback):
    """Mirrors the trainer's progress onto the estimator and calls the user's functions with it."""

    def __init__(self, estimator: Any, functions: list[Callable]) -> None:
        self.estimator = estimator
        self.functions = functions

    def _sync(self, trainer: Trainer) -> None:
        est = self.estimator
        est.loss_history_ = list(trainer.loss_history_)
        est.valid_history_ = list(trainer.valid_history_)
        est.n_iter_ = trainer.n_iter_

    def on_log(self, trainer: Trainer, record: dict[str, Any]) -> None:
        self._sync(trainer)
        for fn in self.functions:
            if fn(self.estimator) is True:
                trainer.stop_training = True


def split_callbacks(callbacks: Any, where: str) -> tuple[list[Callable], list[Callback]]:
    """User callbacks: plain functions ``fn(estimator)`` and :class:`~bbvae.training.Callback` objects."""
    if callbacks is None:
        return [], []
    if callable(callbacks) and not isinstance(callbacks, Callback):
        callbacks = [callbacks]
    if isinstance(callbacks, Callback):
        callbacks = [callbacks]
    functions, objects = [], []
    for cb in callbacks:
        if isinstance(cb, Callback):
            objects.append(cb)
        elif callable(cb):
            functions.append(cb)
        else:
            raise TypeError(
                f"{where}: expected callbacks to be functions fn(estimator) or bbvae.training.Callback "
                f"objects, got {type(cb).__name__}"
            )
    return functions, objects


def make_trainer(estimator: Any, loss: Loss, where: str, **extra: Any) -> Trainer:
    """The :class:`~bbvae.training.Trainer` an estimator's hyper-parameters describe.

    Also resets the estimator's histories; ``extra`` adds Trainer keywords (``evaluate_fn``).
    """
    functions, objects = split_callbacks(estimator.callbacks, where)
    estimator.loss_history_, estimator.valid_history_, estimator.n_iter_ = [], [], 0
    optimizer, optimizer_kwargs = estimator.optimizer, None
    weight_decay = getattr(estimator, "weight_decay", 0.0)
    if weight_decay:
        # decoupled weight decay (Loshchilov & Hutter): Adam's own weight_decay is an L2 penalty
        optimizer = "adamw" if optimizer == "adam" else optimizer
        optimizer_kwargs = {"weight_decay": weight_decay}
    trainer = Trainer(
        loss,
        optimizer=optimizer,
        optimizer_kwargs=optimizer_kwargs,
        learning_rate=estimator.learning_rate,
        batch_size=estimator.batch_size,
        max_steps=estimator.max_steps,
        max_epochs=estimator.max_epochs,
        clip_grad_norm=estimator.clip_grad_norm,
        log_every=estimator.log_every,
        checkpoint_every=estimator.checkpoint_every,
        eval_every=estimator.eval_every,
        patience=estimator.patience,
        restore_best=getattr(estimator, "restore_best", False),
        lr_schedule=getattr(estimator, "lr_schedule", None),
        lr_schedule_kwargs=getattr(estimator, "lr_schedule_kwargs", None),
        warmup_steps=getattr(estimator, "warmup_steps", 0),
        ema_decay=getattr(estimator, "ema_decay", None),
        logdir=estimator.logdir,
        seed=estimator.random_state,
        progress=bool(estimator.progress),
        callbacks=[_EstimatorCallback(estimator, functions), *objects],
        **extra,
    )
    estimator.trainer_ = trainer
    return trainer


def trainer_results(estimator: Any, trainer: Trainer) -> None:
    """Copy a finished trainer's histories onto the estimator."""
    estimator.trainer_ = trainer
    estimator.loss_history_ = list(trainer.loss_history_)
    estimator.valid_history_ = list(trainer.valid_history_)
    estimator.n_iter_ = trainer.n_iter_
    estimator.n_epochs_ = trainer.n_epochs_
    estimator.stop_reason_ = trainer.stop_reason_
    estimator.seed_ = trainer.seed_
    estimator.best_valid_ = trainer.best_valid_
    estimator.best_step_ = trainer.best_step_
