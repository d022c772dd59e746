"""scikit-learn-style estimators: ``VAE`` for static latent-variable models, and the parameter mixin.

``VAE(inf_net, gen_model, loss="iwae", ...)`` stores its hyper-parameters; ``fit(X)`` trains copies
of the two networks with a :class:`~bbvae.training.Trainer` and returns the estimator;
``score_samples(X)`` / ``score(X)`` estimate log p(x); ``sample(n)`` draws from the trained model.
The sequence-model counterpart is :class:`bbvae.sequential.estimator.SequenceModel`.

The contract follows scikit-learn's (``sklearn/base.py``, ``sklearn/mixture/_base.py``):

* ``__init__`` only stores its keyword arguments, unchanged, under the same names, so
  :meth:`EstimatorMixin.get_params` / :meth:`EstimatorMixin.set_params` read them back from the
  signature and ``sklearn.base.clone`` works (scikit-learn is not a dependency);
* hyper-parameters are validated in ``fit``, not in ``__init__``;
* what is learned from data ends in ``_`` (``inf_net_``, ``loss_history_``, ``n_iter_``...);
* ``score_samples`` / ``score`` / ``sample`` before ``fit`` raise :class:`~bbvae.NotFittedError`.
"""

from __future__ import annotations

import copy
import inspect
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from bbvae._validation import shape_str
from bbvae.base import NotFittedError
from bbvae.evaluation import log_likelihood
from bbvae.losses.base import Loss
from bbvae.training import Callback, Trainer, set_seed

__all__ = ["VAE", "EstimatorMixin", "check_is_fitted"]


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
    trainer = Trainer(
        loss,
        optimizer=estimator.optimizer,
        learning_rate=estimator.learning_rate,
        batch_size=estimator.batch_size,
        max_steps=estimator.max_steps,
        max_epochs=estimator.max_epochs,
        clip_grad_norm=estimator.clip_grad_norm,
        log_every=estimator.log_every,
        checkpoint_every=estimator.checkpoint_every,
        eval_every=estimator.eval_every,
        patience=estimator.patience,
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


# ============================================================================ VAE
def _loss_classes() -> dict[str, type[Loss]]:
    from bbvae.losses.elbo import ELBO
    from bbvae.losses.iwae import IWAE
    from bbvae.losses.nvil import NVIL
    from bbvae.losses.rws import RWS
    from bbvae.losses.vimco import VIMCO

    return {"elbo": ELBO, "iwae": IWAE, "vimco": VIMCO, "nvil": NVIL, "rws": RWS}


class VAE(EstimatorMixin):
    """A latent-variable model ``p(x, z)`` with inference network ``q(z|x)``, fit by a bbvae loss.

    ``fit`` trains **deep copies** of ``inf_net`` and ``gen_model`` (sklearn's clone semantics): the
    modules passed to the constructor are never modified, and the trained ones are ``inf_net_`` and
    ``gen_model_``. Fitting again starts afresh from the constructor's modules.

    Args:
        inf_net: the inference network q(z|x), an :class:`~bbvae.InfNet`.
        gen_model: the generative model p(x, z), a :class:`~bbvae.GenModel`.
        loss: ``"elbo"``, ``"iwae"``, ``"vimco"``, ``"nvil"``, ``"rws"``, or a
            :class:`~bbvae.losses.Loss` subclass (called as ``loss(inf_net, gen_model, n_samples,
            **loss_options)``).
        n_samples: Monte Carlo samples of z per data point in the loss (K; at least 2 for VIMCO
            and RWS).
        loss_options: further keyword arguments of the loss (e.g. ``{"estimator": "dreg"}``).
        optimizer: ``"adam"``, ``"adamw"``, ``"sgd"``, ``"rmsprop"``, ``"adagrad"`` or a factory
            ``(params, lr=...) -> Optimizer``.
        learning_rate: the optimizer's learning rate.
        batch_size: rows per step.
        max_steps: stop after this many optimizer steps (None: no limit by steps).
        max_epochs: stop after this many passes over the data (None: no limit by epochs). At
            least one of the two must be set.
        clip_grad_norm: clip the gradient 2-norm to this value (None: no clipping).
        n_samples_eval: importance samples per data point in :meth:`score_samples`.
        eval_every: steps between validations on ``X_valid`` (None: once per epoch).
        patience: early stopping after this many validations without improvement (None: never).
        log_every: steps between logging points, where ``loss_history_`` is updated and the
            callbacks run.
        checkpoint_every: steps between the trainer's checkpoints (``logdir/last.pt``).
        device: where to train and evaluate (``"cpu"``, ``"cuda"``, ...); None keeps the modules
            where they are.
        logdir: directory for the trainer's checkpoints and log (None: nothing written).
        progress: show a progress bar.
        callbacks: functions ``fn(estimator)`` called at every logging point, where
            ``estimator.loss_history_`` and ``estimator.n_iter_`` hold the progress so far (return
            True to stop training), and/or :class:`~bbvae.training.Callback` objects.
        random_state: int seeding torch, numpy and ``random`` at the start of :meth:`fit` (and the
            batch order); None draws a seed (stored in ``seed_``).

    Attributes:
        inf_net_ (InfNet): the trained copy of ``inf_net``.
        gen_model_ (GenModel): the trained copy of ``gen_model``.
        loss_ (Loss): the loss object that was optimised (holds ``inf_net_`` and ``gen_model_``).
        trainer_ (Trainer): the trainer that ran.
        loss_history_ (list[float]): the training loss (negative bound, batch mean) of every step.
        valid_history_ (list[float]): validation bounds (nats per data point), if ``X_valid`` was given.
        n_iter_ (int): optimizer steps taken.
        n_epochs_ (int): complete passes over the data.
        stop_reason_ (str): why training stopped (``"max_steps"``, ``"max_epochs"``, ...).
        seed_ (int): the seed used.
        obs_shape_ (tuple[int, ...]): the shape of one data point seen in ``fit``.
    """

    def __init__(
        self,
        inf_net: nn.Module,
        gen_model: nn.Module,
        loss: str | type[Loss] = "iwae",
        n_samples: int = 5,
        loss_options: dict[str, Any] | None = None,
        optimizer: str | Callable = "adam",
        learning_rate: float = 1e-3,
        batch_size: int = 64,
        max_steps: int | None = 1000,
        max_epochs: int | None = None,
        clip_grad_norm: float | None = None,
        n_samples_eval: int = 100,
        eval_every: int | None = None,
        patience: int | None = None,
        log_every: int = 50,
        checkpoint_every: int = 1000,
        device: str | torch.device | None = None,
        logdir: str | None = None,
        progress: bool = False,
        callbacks: Sequence[Callable | Callback] | None = None,
        random_state: int | None = None,
    ) -> None:
        self.inf_net = inf_net
        self.gen_model = gen_model
        self.loss = loss
        self.n_samples = n_samples
        self.loss_options = loss_options
        self.optimizer = optimizer
        self.learning_rate = learning_rate
        self.batch_size = batch_size
        self.max_steps = max_steps
        self.max_epochs = max_epochs
        self.clip_grad_norm = clip_grad_norm
        self.n_samples_eval = n_samples_eval
        self.eval_every = eval_every
        self.patience = patience
        self.log_every = log_every
        self.checkpoint_every = checkpoint_every
        self.device = device
        self.logdir = logdir
        self.progress = progress
        self.callbacks = callbacks
        self.random_state = random_state

    # ------------------------------------------------------------------ validation
    def _validate_params(self) -> tuple[type[Loss], torch.device | None]:
        where = type(self).__name__
        for name in ("inf_net", "gen_model"):
            value = getattr(self, name)
            if not isinstance(value, nn.Module) or not callable(getattr(value, "log_prob", None)):
                expected = "an InfNet" if name == "inf_net" else "a GenModel"
                raise TypeError(f"{where}: expected {name} to be {expected}, got {type(value).__name__}")
        classes = _loss_classes()
        if isinstance(self.loss, str):
            loss_cls = classes.get(self.loss)
            if loss_cls is None:
                raise ValueError(
                    f"{where}: expected loss in {tuple(classes)} or a Loss subclass, got {self.loss!r}"
                )
        elif isinstance(self.loss, type) and issubclass(self.loss, nn.Module):
            loss_cls = self.loss
        else:
            raise TypeError(
                f"{where}: expected loss to be a name in {tuple(classes)} or a Loss subclass, "
                f"got {type(self.loss).__name__}"
            )
        check_int("n_samples", self.n_samples, where)
        min_samples = getattr(loss_cls, "min_samples", 1)
        if self.n_samples < min_samples:
            raise ValueError(
                f"{where}: loss {loss_cls.__name__} needs n_samples >= {min_samples}, got {self.n_samples}"
            )
        if self.loss_options is not None and not isinstance(self.loss_options, dict):
            raise TypeError(
                f"{where}: expected loss_options to be a dict or None, got {type(self.loss_options).__name__}"
            )
        check_float("learning_rate", self.learning_rate, where)
        check_int("batch_size", self.batch_size, where)
        check_int("max_steps", self.max_steps, where, optional=True)
        check_int("max_epochs", self.max_epochs, where, optional=True)
        if self.max_steps is None and self.max_epochs is None:
            raise ValueError(f"{where}: set max_steps or max_epochs (or both), got neither")
        if self.clip_grad_norm is not None:
            check_float("clip_grad_norm", self.clip_grad_norm, where)
        check_int("n_samples_eval", self.n_samples_eval, where)
        check_int("eval_every", self.eval_every, where, optional=True)
        check_int("patience", self.patience, where, optional=True)
        check_int("log_every", self.log_every, where)
        check_int("checkpoint_every", self.checkpoint_every, where)
        check_random_state(self.random_state, where)
        return loss_cls, resolve_device(self.device, where)

    def _as_data(self, X, where: str, like: nn.Module) -> torch.Tensor:
        if isinstance(X, np.ndarray):
            X = torch.as_tensor(X)
        if not isinstance(X, torch.Tensor):
            raise TypeError(
                f"{where}: expected X to be a Tensor or numpy array [N, ...], got {type(X).__name__}"
            )
        if X.dim() == 0 or X.shape[0] == 0:
            raise ValueError(f"{where}: expected X of shape [N >= 1, ...], got {shape_str(list(X.shape))}")
        if X.is_floating_point():
            if not bool(torch.isfinite(X).all()):
                raise ValueError(f"{where}: X holds NaN or infinite values; clean the data first")
            param = next(iter(like.parameters()), None)
            if param is not None and param.is_floating_point():
                X = X.to(param.dtype)  # float data take the model's dtype
        return X

    # ------------------------------------------------------------------ fit
    def fit(self, X, y=None, X_valid=None, resume: bool | str = False) -> VAE:
        """Train copies of ``inf_net`` and ``gen_model`` on the rows of ``X``.

        Args:
            X: data ``[N, *obs_shape]`` (Tensor or numpy array; floats take the dtype of
                ``gen_model``'s parameters and must be finite).
            y: ignored (scikit-learn API).
            X_valid: optional validation rows, evaluated every ``eval_every`` steps (or every
                epoch) for ``valid_history_`` and early stopping.
            resume: continue from ``logdir/last.pt`` (``True``), if present (``"auto"``), or from
                a checkpoint path; see :meth:`bbvae.training.Trainer.fit`.

        Returns:
            self.
        """
        where = f"{type(self).__name__}.fit"
        loss_cls, device = self._validate_params()
        if self.random_state is not None:
            set_seed(self.random_state)
        inf_net = copy.deepcopy(self.inf_net)
        gen_model = copy.deepcopy(self.gen_model)
        if device is not None:
            inf_net.to(device)
            gen_model.to(device)
        X = self._as_data(X, where, gen_model)
        if X_valid is not None:
            X_valid = self._as_data(X_valid, where, gen_model)
            if X_valid.shape[1:] != X.shape[1:]:
                raise ValueError(
                    f"{where}: X_valid rows have shape {shape_str(list(X_valid.shape[1:]))}, "
                    f"but X rows have {shape_str(list(X.shape[1:]))}"
                )
        loss = loss_cls(inf_net, gen_model, n_samples=self.n_samples, **(self.loss_options or {}))
        trainer = make_trainer(self, loss, where)  # checks the callbacks first
        self.inf_net_, self.gen_model_, self.loss_ = inf_net, gen_model, loss
        self.obs_shape_ = tuple(X.shape[1:])
        trainer.fit(X, X_valid, resume=resume)
        trainer_results(self, trainer)
        inf_net.eval()
        gen_model.eval()
        return self

    # ------------------------------------------------------------------ scoring
    def _check_rows(self, X, method: str) -> torch.Tensor:
        check_is_fitted(self, method)
        where = f"{type(self).__name__}.{method}"
        X = self._as_data(X, where, self.gen_model_)
        if tuple(X.shape[1:]) != self.obs_shape_:
            raise ValueError(
                f"{where}: expected X of shape {shape_str(['N', *self.obs_shape_])} (as in fit), "
                f"got {shape_str(list(X.shape))}"
            )
        return X

    def score_samples(self, X) -> torch.Tensor:
        """Importance-sampled estimate of log p(x) for every row (``n_samples_eval`` samples, IWAE).

        A stochastic lower bound of log p(x) in expectation, exact when q(z|x) is the posterior.

        Args:
            X: ``[N, *obs_shape]``.

        Returns:
            ``[N]`` float64 tensor on the CPU, nats per row.
        """
        X = self._check_rows(X, "score_samples")
        device = _device_of(self.gen_model_, X)
        chunk = max(self.batch_size, 256)
        samples_chunk = min(self.n_samples_eval, 500)
        modes = (self.inf_net_.training, self.gen_model_.training)
        self.inf_net_.eval()
        self.gen_model_.eval()
        out = []
        try:
            for rows in X.split(chunk):
                ll = log_likelihood(
                    self.inf_net_,
                    self.gen_model_,
                    rows.to(device),
                    n_samples=self.n_samples_eval,
                    chunk_size=samples_chunk,
                )
                out.append(ll.detach().double().cpu())
        finally:
            self.inf_net_.train(modes[0])
            self.gen_model_.train(modes[1])
        return torch.cat(out)

    def score(self, X, y=None) -> float:
        """The mean of :meth:`score_samples` over the rows of ``X`` (nats per data point)."""
        return float(self.score_samples(X).mean())

    @torch.no_grad()
    def sample(self, n: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw ``n`` joint samples from the trained generative model.

        Returns:
            ``(x [n, *obs_shape], z [n, *latent_shape])`` on the CPU.
        """
        check_is_fitted(self, "sample")
        check_int("n", n, f"{type(self).__name__}.sample")
        x, z = self.gen_model_.sample(n)
        return x.cpu(), z.cpu()


def _device_of(module: nn.Module, default: torch.Tensor) -> torch.device:
    param = next(iter(module.parameters()), None)
    return param.device if param is not None else default.device
