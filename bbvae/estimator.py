"""scikit-learn-style estimator for static latent-variable models: :class:`VAE`.

``VAE(inf_net, gen_model, loss="iwae", ...)`` stores its hyper-parameters; ``fit(X)`` trains copies
of the two networks with a :class:`~bbvae.training.Trainer` and returns the estimator;
``score_samples(X)`` / ``score(X)`` estimate log p(x); ``sample(n)`` draws from the trained model.
The sequence-model counterpart is :class:`bbvae.sequential.estimator.SequenceModel`; the parameter
contract both follow (and the helpers re-exported here) is in :mod:`bbvae.estimator_base`.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, IterableDataset

from bbvae._validation import shape_str
from bbvae.estimator_base import (
    EstimatorMixin,
    check_choice,
    check_float,
    check_int,
    check_is_fitted,
    check_random_state,
    make_trainer,
    resolve_device,
    split_callbacks,
    trainer_results,
)
from bbvae.evaluation import log_likelihood
from bbvae.losses.base import Loss
from bbvae.training import Callback, set_seed

__all__ = [
    "VAE",
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
        weight_decay: decoupled weight decay (AdamW; with ``optimizer="adam"`` the optimizer
            becomes AdamW).
        lr_schedule: ``None``, ``"plateau"``, ``"cosine"``, ``"step"`` or a callable
            ``optimizer -> scheduler``; see :class:`~bbvae.training.Trainer`.
        lr_schedule_kwargs: keywords of the scheduler.
        warmup_steps: linear learning-rate warm-up over the first steps.
        ema_decay: keep an exponential moving average of the weights with this decay; validation,
            model selection and the fitted model use the average.
        n_samples_eval: importance samples per data point in :meth:`score_samples`.
        eval_every: steps between validations on ``X_valid`` (None: once per epoch).
        patience: early stopping after this many validations without improvement (None: never).
        restore_best: with validation data, the fitted model is the best-validation one
            (``best_step_``), not the last iterate.
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
        weight_decay: float = 0.0,
        lr_schedule: str | Callable | None = None,
        lr_schedule_kwargs: dict | None = None,
        warmup_steps: int = 0,
        ema_decay: float | None = None,
        n_samples_eval: int = 100,
        eval_every: int | None = None,
        patience: int | None = None,
        restore_best: bool = True,
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
        self.weight_decay = weight_decay
        self.lr_schedule = lr_schedule
        self.lr_schedule_kwargs = lr_schedule_kwargs
        self.warmup_steps = warmup_steps
        self.ema_decay = ema_decay
        self.n_samples_eval = n_samples_eval
        self.eval_every = eval_every
        self.patience = patience
        self.restore_best = restore_best
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
        check_float("weight_decay", self.weight_decay, where, strict=False)
        check_int("warmup_steps", self.warmup_steps, where, minimum=0)
        check_int("log_every", self.log_every, where)
        check_int("checkpoint_every", self.checkpoint_every, where)
        check_random_state(self.random_state, where)
        return loss_cls, resolve_device(self.device, where)

    def _as_data(self, X, where: str, like: nn.Module) -> torch.Tensor | Dataset | DataLoader:
        if isinstance(X, (Dataset, DataLoader)):
            return X  # rows as they come (float batches take the model's dtype in the trainer)
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
                ``gen_model``'s parameters and must be finite), or a torch ``Dataset`` of rows
                ``[*obs_shape]`` or a ``DataLoader`` of batches ``[B, *obs_shape]`` (its sampler,
                workers and pinning decide the batches).
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
        obs_shape = _row_shape(X, where)
        if X_valid is not None:
            X_valid = self._as_data(X_valid, where, gen_model)
            if _row_shape(X_valid, where) != obs_shape:
                raise ValueError(
                    f"{where}: X_valid rows have shape {shape_str(list(_row_shape(X_valid, where)))}, "
                    f"but X rows have {shape_str(list(obs_shape))}"
                )
        loss = loss_cls(inf_net, gen_model, n_samples=self.n_samples, **(self.loss_options or {}))
        trainer = make_trainer(self, loss, where)  # checks the callbacks first
        self.inf_net_, self.gen_model_, self.loss_ = inf_net, gen_model, loss
        self.obs_shape_ = obs_shape
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


def _row_shape(X, where: str) -> tuple[int, ...]:
    """The shape of one data point of a Tensor ``[N, ...]``, a Dataset of rows or a DataLoader."""
    if isinstance(X, torch.Tensor):
        return tuple(X.shape[1:])
    if isinstance(X, DataLoader):
        if isinstance(X.dataset, IterableDataset) or X.batch_size is None:
            batch = next(iter(X))
            batch = batch[0] if isinstance(batch, (list, tuple)) else batch
            return tuple(torch.as_tensor(batch).shape[1:])
        X = X.dataset
    if len(X) == 0:
        raise ValueError(f"{where}: the Dataset holds no data point")
    row = X[0]
    row = row[0] if isinstance(row, (list, tuple)) and len(row) == 1 else row
    if not isinstance(row, (torch.Tensor, np.ndarray)):
        raise TypeError(
            f"{where}: expected the Dataset's items to be Tensors [*obs_shape], got {type(row).__name__}"
        )
    return tuple(torch.as_tensor(row).shape)


def _device_of(module: nn.Module, default: torch.Tensor) -> torch.device:
    param = next(iter(module.parameters()), None)
    return param.device if param is not None else default.device
