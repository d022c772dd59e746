"""The views that make a :class:`~bbvae.sequential.base.SequentialModel` usable by every loss.

``model.inf_net`` (:class:`SequentialInfNet`, q(z_{1:T} | x)) and ``model.gen_model``
(:class:`SequentialGenModel`, p(x_{1:T}, z_{1:T})) are an :class:`~bbvae.base.InfNet` and a
:class:`~bbvae.base.GenModel` sharing the model's parameters:
``IWAE(model.inf_net, model.gen_model, n_samples=K)(x, lengths=lengths)``.

* The views register the model as their child module (the model does *not* register the views), so
  ``loss.parameters()``, ``loss.to(...)`` and ``loss.train()`` reach the model; there is no cycle.
* ``model.gen_model.sample(n, length=None, inputs=None)`` takes the sequence ``length`` (or ``inputs``,
  whose dim 1 gives it; or, when neither is given, the ``T`` of the last batch the views saw, so RWS's
  sleep phase works).
* The views' cache is keyed by identity: ``q.log_prob(z)`` / ``gen_model(x, z).log_prob(x, z)`` reuse it
  when ``x`` is the tensor given to ``inf_net(x, ...)`` and ``z`` is the tensor drawn (or, for a ``z``
  without gradient, an unmodified alias such as ``z.detach()``); anything else is re-scored
  teacher-forced with :func:`~bbvae.sequential.base.run_particles` (with the ``lengths``/``inputs``
  last given for that ``x``; never with scheduled sampling, see :mod:`bbvae.sequential.scheduled`).
* ``inf_net(x, lengths=..., inputs=...)`` checks the sequence arguments once and keeps the validity
  masks; drawing and scoring for that ``x`` reuse them instead of checking again.
* ``log_prior`` / ``log_likelihood`` of the generative view raise NotImplementedError: the step gives
  the joint ``log p(x_t, z_t | past)`` only.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import NamedTuple

import torch

from bbvae._validation import check_positive_int
from bbvae.base import GenModel, InfNet, NotFittedError
from bbvae.sequential.base import (
    ParticleRun,
    SequentialModel,
    check_sequence_args,
    generate,
    run_particles,
    run_particles_unchecked,
)
from bbvae.sequential.scheduled import teacher_forcing

__all__ = ["SequentialGenModel", "SequentialInfNet", "get_sequential_model"]


class _Cache(NamedTuple):
    x: torch.Tensor
    z: torch.Tensor
    log_p: torch.Tensor
    log_q: torch.Tensor
    version: int  # z._version when cached: an in-place change of z invalidates the cache


class _Context(NamedTuple):
    x: torch.Tensor
    lengths: torch.Tensor | None
    inputs: torch.Tensor | None
    checked: bool = False  # whether check_sequence_args passed on (x, lengths, inputs)
    masks: list[torch.Tensor] | None = None  # what it returned: T tensors [batch] bool, or None


class _View:
    """Shared plumbing of the two views: the context and particle cache live on the model."""

    model: SequentialModel

    def _context(self, x) -> _Context:
        context = self.model.__dict__.get("_seq_context")
        if context is None or context.x is not x:
            return _Context(x, None, None)
        return context

    def _score(self, x, z, detached: bool = False) -> ParticleRun:
        """Score given latents ``z`` ``[batch, K, T, *latent_shape]`` teacher-forced (and cache it)."""
        cache = self.model.__dict__.get("_seq_cache")
        if self.model.__dict__.get("_ss_drawn") and cache is not None and cache.x is x:
            raise ValueError(
                f"{type(self.model).__name__}: the latents drawn for this batch under scheduled sampling "
                "cannot be re-scored (their fed-back history was random, and scoring is teacher-forced); "
                "estimators that re-score them (STL, DReG) do not combine with scheduled sampling: use "
                "the pathwise or score-function gradients (IWAE/ELBO 'reparam', FIVO, VIMCO, NVIL, RWS)"
            )
        with teacher_forcing(self.model):
            return self._score_teacher_forced(x, z, detached)

    def _score_teacher_forced(self, x, z, detached: bool) -> ParticleRun:
        context = self._context(x)
        k = z.shape[1] if z.dim() >= 2 else 1
        if detached:
            params = {name: p.detach() for name, p in self.model.named_parameters()}
            run = torch.func.functional_call(
                self.model,
                params,
                (x,),
                {"n_particles": k, "lengths": context.lengths, "inputs": context.inputs, "z": z},
            )
            return run
        run = self._run(context, k, z=z, reparametrize=True)
        self.model._seq_cache = _Cache(x, z, run.log_p, run.log_q, z._version)
        return run

    def _run(self, context: _Context, n_particles: int, z, reparametrize: bool) -> ParticleRun:
        """Particles for ``context``'s data, checked only if the view did not check them already."""
        if not context.checked:
            return run_particles(
                self.model,
                context.x,
                n_particles,
                lengths=context.lengths,
                inputs=context.inputs,
                z=z,
                reparametrize=reparametrize,
            )
        return run_particles_unchecked(
            self.model,
            context.x,
            n_particles,
            context.lengths,
            context.inputs,
            z,
            reparametrize,
            context.masks,
            "run_particles",
        )

    def _cached(self, x, z) -> _Cache | None:
        cache = self.model.__dict__.get("_seq_cache")
        if cache is None or cache.x is not x or not isinstance(z, torch.Tensor):
            return None
        if z._version != cache.version:
            return None
        if cache.z is z or (not cache.z.requires_grad and not z.requires_grad and _same_tensor(cache.z, z)):
            return cache
        return None


def _same_tensor(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether ``b`` is ``a`` or an unmodified alias of it (e.g. ``a.detach()``)."""
    return (
        a.data_ptr() == b.data_ptr()
        and a.shape == b.shape
        and a.stride() == b.stride()
        and a.dtype == b.dtype
        and a.device == b.device
    )


class SequentialInfNet(_View, InfNet):
    """q(z_{1:T} | x_{1:T}) of a :class:`SequentialModel` as an :class:`~bbvae.base.InfNet`.

    ``q = model.inf_net(x, lengths=..., inputs=...)`` stores the context; ``q.rsample(K)`` /
    ``q.sample(K)`` run :func:`run_particles` once and cache ``(z, log_q, log_p)``; ``q.log_prob(z)``
    returns the cached ``log_q`` when ``z`` is the cached tensor, else scores ``z`` teacher-forced.
    ``sample(K)`` detaches ``z`` but keeps ``log_q``'s gradient in the parameters (score-function
    estimators). Latents are ``[batch, K, T, *latent_shape]`` and log-densities ``[batch, K]``.

    Attributes:
        model: the :class:`SequentialModel` viewed (a registered child module).
    """

    def __init__(self, model: SequentialModel) -> None:
        super().__init__()
        self.model = model
        self._detached = False

    def forward(
        self, x: torch.Tensor, lengths: torch.Tensor | None = None, inputs: torch.Tensor | None = None
    ):
        _, _, masks = check_sequence_args(x, lengths, inputs, f"{type(self.model).__name__}.inf_net")
        self.model._seq_context = _Context(x, lengths, inputs, True, masks)
        self.model._seq_cache = None
        return {"x": x}

    @property
    def has_rsample(self) -> bool:
        return bool(self.model.has_rsample)

    def distribution(self):
        raise NotImplementedError(
            f"{type(self.model).__name__}.inf_net: q(z_1:T | x) of a sequence model is not a single torch "
            "Distribution; use sample / rsample / log_prob (analytic KL is not available)"
        )

    def _draw(self, n_samples: int, reparametrize: bool, method: str) -> torch.Tensor:
        self._require_forward(method)
        check_positive_int("n_samples", n_samples, f"{type(self.model).__name__}.inf_net.{method}")
        context = self.model.__dict__.get("_seq_context")
        x = context.x
        run = self._run(context, n_samples, z=None, reparametrize=reparametrize)
        z = run.z if reparametrize else run.z.detach()
        self.model._seq_cache = _Cache(x, z, run.log_p, run.log_q, z._version)
        return z

    def rsample(self, n_samples: int = 1) -> torch.Tensor:
        """Reparametrized particles ``[batch, K, T, *latent_shape]`` (one pass of the recurrence)."""
        if not self.model.has_rsample:
            raise TypeError(
                f"{type(self.model).__name__}.inf_net.rsample: the latents cannot be reparametrized "
                "(has_rsample = False); use a score-function estimator (ELBO(estimator='score'), VIMCO, "
                "NVIL, RWS)"
            )
        return self._draw(n_samples, True, "rsample")

    def sample(self, n_samples: int = 1) -> torch.Tensor:
        """Particles ``[batch, K, T, *latent_shape]`` without a gradient path through ``z``."""
        return self._draw(n_samples, False, "sample")

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """``log q(z | x)`` ``[batch, K]`` summed over valid steps (cached when ``z`` was just drawn)."""
        self._require_forward("log_prob")
        x = self.model._seq_context.x
        if self._detached:
            return self._score(x, z, detached=True).log_q
        cache = self._cached(x, z)
        if cache is not None:
            return cache.log_q
        return self._score(x, z).log_q

    @contextlib.contextmanager
    def params_detached(self) -> Iterator[SequentialInfNet]:
        """Within the block, ``log_prob`` re-scores ``z`` with all of the model's parameters detached.

        (The model's q and p may share parameters, e.g. a recurrence; all of them are detached.)
        """
        self._require_forward("params_detached")
        self._detached = True
        try:
            yield self
        finally:
            self._detached = False

    def __sklearn_is_fitted__(self) -> bool:
        return self.model.__dict__.get("_seq_context") is not None and "params_" in vars(self)


class SequentialGenModel(_View, GenModel):
    """p(x_{1:T}, z_{1:T}) of a :class:`SequentialModel` as a :class:`~bbvae.base.GenModel`.

    ``model.gen_model(x, z).log_prob(x, z)`` returns the ``log_p`` cached by the inference view
    when ``x`` and ``z`` are the tensors it just used; otherwise it scores ``z`` teacher-forced (with
    the ``lengths``/``inputs`` given to the inference view for this ``x``, or to this call).
    ``sample(n, length)`` draws sequences ancestrally (see :func:`generate`).

    Attributes:
        model: the :class:`SequentialModel` viewed (a registered child module).
    """

    def __init__(self, model: SequentialModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, x, z, lengths: torch.Tensor | None = None, inputs: torch.Tensor | None = None):
        if x is not None and (lengths is not None or inputs is not None):
            _, _, masks = check_sequence_args(x, lengths, inputs, f"{type(self.model).__name__}.gen_model")
            self.model._seq_context = _Context(x, lengths, inputs, True, masks)
        return {"x": x, "z": z}

    def log_prob(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """Joint ``log p(x, z)`` ``[batch, K]`` summed over valid steps."""
        if "params_" not in vars(self):
            raise NotFittedError(
                f"{type(self.model).__name__}.gen_model.log_prob: call the view first, e.g. "
                "model.gen_model(x, z).log_prob(x, z)"
            )
        cache = self._cached(x, z)
        if cache is not None:
            return cache.log_p
        return self._score(x, z).log_p

    def log_prior(self, z):
        raise NotImplementedError(
            f"{type(self.model).__name__}.gen_model: the step contract gives the joint "
            "log p(x_t, z_t | past) only; use log_prob(x, z)"
        )

    def log_likelihood(self, x, z):
        self.log_prior(z)

    def sample(
        self, n: int = 1, length: int | None = None, inputs: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Ancestral samples ``(x [n, T, *obs_shape], z [n, T, *latent_shape])`` (see :func:`generate`).

        Without ``length`` or ``inputs``, ``T`` is that of the last batch given to the views (so
        that RWS's sleep phase draws sequences as long as the data).
        """
        if length is None and inputs is None:
            context = self.model.__dict__.get("_seq_context")
            if context is not None:
                length = context.x.shape[1]
        return generate(self.model, n, length=length, inputs=inputs)


def get_sequential_model(inf_net, gen_model, where: str) -> SequentialModel:
    """The model behind a pair of sequential views; TypeError/ValueError when they are not."""
    if not isinstance(inf_net, SequentialInfNet):
        raise TypeError(
            f"{where}: expected inf_net to be a sequential view (model.inf_net of a SequentialModel), "
            f"got {type(inf_net).__name__}"
        )
    model = inf_net.model
    if gen_model is not None and not (isinstance(gen_model, SequentialGenModel) and gen_model.model is model):
        raise TypeError(
            f"{where}: expected gen_model to be the same model's view (model.gen_model), got "
            f"{type(gen_model).__name__}"
            + ("" if not isinstance(gen_model, SequentialGenModel) else " of another model")
        )
    return model
