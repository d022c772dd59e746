"""The sequential step contract: ``SequentialModel``, ``StepOutput``, ``run_particles`` and the views.

Deviations from / additions to the written contract (notes/seq_contract.md):

* ``run_particles`` returns a :class:`ParticleRun` named tuple ``(log_p, log_q, z)`` in that order.
* ``SequentialModel.forward(x, n_particles=1, lengths=None, inputs=None, z=None, reparametrize=True)``
  is defined here and simply calls :func:`run_particles`; subclasses must not override it (the views
  use it with ``torch.func.functional_call`` to score with detached parameters, for STL and DReG).
* The views register the model as their child module (the model does *not* register the views), so
  ``loss.parameters()``, ``loss.to(...)`` and ``loss.train()`` reach the model; there is no cycle.
* ``model.gen_model.sample(n, length=None, inputs=None)`` takes the sequence ``length`` (or ``inputs``,
  whose dim 1 gives it; or, when neither is given, the ``T`` of the last batch the views saw, so RWS's
  sleep phase works); it returns ``(x [n, T, *obs_shape], z [n, T, *latent_shape])``. The same is
  available as :func:`generate` (which calls ``generate_init(n, 1, like)`` with ``like`` a parameter
  of the model, and squeezes the sample dim).
* The views' cache is keyed by identity: ``q.log_prob(z)`` / ``gen_model(x, z).log_prob(x, z)`` reuse it
  when ``x`` is the tensor given to ``inf_net(x, ...)`` and ``z`` is the tensor drawn (or, for a ``z``
  without gradient, an unmodified alias such as ``z.detach()``); anything else is re-scored
  teacher-forced with :func:`run_particles` (with the ``lengths``/``inputs`` last given for that ``x``).
* ``lengths`` must satisfy ``1 <= lengths <= T`` (checked while validation is on).
* ``log_prior`` / ``log_likelihood`` of the generative view raise NotImplementedError: the step gives
  the joint ``log p(x_t, z_t | past)`` only.

Data: ``x`` ``[batch, T, *obs_shape]`` (float, or long ``[batch, T]`` for categorical observations),
``lengths`` ``[batch]`` long with ``1 <= lengths <= T`` (``None``: all ``T``), optional side ``inputs``
``[batch, T, ...]``. Steps past a sequence's length contribute nothing to any bound.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NamedTuple

import torch
from torch import nn

from bbvae._validation import check_positive_int, check_tensor, is_validation_enabled, shape_str
from bbvae.base import GenModel, InfNet, NotFittedError

State = Any  # a pytree: tensor | tuple | list | dict of those (| None); leaves [batch, n_particles, ...]


class StepOutput(NamedTuple):
    """What :meth:`SequentialModel.step` returns.

    Attributes:
        state: the advanced state, a pytree whose leaves are ``[batch, n_particles, ...]``.
        z: the latent ``z_t``, ``[batch, n_particles, *latent_shape]``.
        log_p: ``log p(x_t, z_t | past)`` (emission of ``x_t`` plus the prior of ``z_t``),
            ``[batch, n_particles]``.
        log_q: ``log q(z_t | past, x)``, ``[batch, n_particles]``.
    """

    state: State
    z: torch.Tensor
    log_p: torch.Tensor
    log_q: torch.Tensor


class ParticleRun(NamedTuple):
    """What :func:`run_particles` returns.

    Attributes:
        log_p: ``[batch, K]`` log p(x, z) summed over each sequence's valid steps.
        log_q: ``[batch, K]`` log q(z | x) summed over each sequence's valid steps.
        z: ``[batch, K, T, *latent_shape]`` the latents of every step (entries past a sequence's
            length are whatever the model proposed there; they are never scored).
    """

    log_p: torch.Tensor
    log_q: torch.Tensor
    z: torch.Tensor


# ------------------------------------------------------------------------------------ pytrees
def tree_map(fn: Callable[[torch.Tensor], torch.Tensor], tree: State) -> State:
    """Apply ``fn`` to every tensor leaf of ``tree`` (tensor, tuple, named tuple, list, dict, None)."""
    if isinstance(tree, torch.Tensor):
        return fn(tree)
    if isinstance(tree, tuple) and hasattr(tree, "_fields"):
        return type(tree)(*(tree_map(fn, leaf) for leaf in tree))
    if isinstance(tree, (tuple, list)):
        return type(tree)(tree_map(fn, leaf) for leaf in tree)
    if isinstance(tree, dict):
        return {key: tree_map(fn, leaf) for key, leaf in tree.items()}
    return tree  # None, ints, strings: not particle data


def tree_where(keep_new: torch.Tensor, new: State, old: State) -> State:
    """Leafwise ``where(keep_new[b], new, old)`` for pytrees with leaves ``[batch, K, ...]``."""
    if isinstance(new, torch.Tensor):
        return torch.where(keep_new.reshape(-1, *([1] * (new.dim() - 1))), new, old)
    if isinstance(new, tuple) and hasattr(new, "_fields"):
        return type(new)(*(tree_where(keep_new, a, b) for a, b in zip(new, old)))
    if isinstance(new, (tuple, list)):
        return type(new)(tree_where(keep_new, a, b) for a, b in zip(new, old))
    if isinstance(new, dict):
        return {key: tree_where(keep_new, value, old[key]) for key, value in new.items()}
    return new


def gather_particles(leaf: torch.Tensor, ancestors: torch.Tensor) -> torch.Tensor:
    """``leaf[b, ancestors[b, k], ...]`` for a leaf ``[batch, K, ...]`` and ancestors ``[batch, K]``."""
    index = ancestors.reshape(*ancestors.shape, *([1] * (leaf.dim() - 2)))
    return torch.gather(leaf, 1, index.expand(*ancestors.shape, *leaf.shape[2:]))


# ----------------------------------------------------------------------------------- the model
class SequentialModel(nn.Module):
    """Base of every sequence model that the sequential drivers (``run_particles``, ``smc``) run.

    A subclass implements :meth:`encode`, :meth:`init_state`, :meth:`step` and, to generate,
    :meth:`generate_init` and :meth:`generate_step`; optionally ``exact_log_prob(x, lengths=None)``
    ``-> [batch]``. It sets the class (or instance) attributes ``has_rsample`` and ``latent_shape``.
    ``forward`` is reserved: it runs :func:`run_particles`.

    The views :attr:`inf_net` and :attr:`gen_model` make the model usable by every
    :class:`~bbvae.losses.Loss`: ``IWAE(model.inf_net, model.gen_model, n_samples=K)(x, lengths=lengths)``.
    """

    #: Whether z_t ~ q is reparametrizable (False for discrete latents).
    has_rsample: bool = True
    #: Per-step latent shape: ``()``, ``(d,)``, ...
    latent_shape: tuple[int, ...] = ()

    # ------------------------------------------------------------------------ subclass hooks
    def encode(self, x: torch.Tensor, lengths: torch.Tensor | None = None, inputs=None) -> Sequence:
        """Everything that depends on ``x`` (and ``inputs``) alone, computed once per sequence.

        Batched ops over ``[batch, T, ...]`` (an MLP of ``x_t``, SRNN's backward RNN), returned as a
        length-``T`` list of per-step items taken with ``.unbind(1)`` (never ``x[:, t]`` in a loop).
        Items have no particle dim; :meth:`step` broadcasts them with ``unsqueeze(1)``. Each item
        carries ``x_t`` itself for scoring.
        """
        raise NotImplementedError(f"{type(self).__name__} must implement encode(x, lengths, inputs)")

    def init_state(self, encoded: Sequence, n_particles: int) -> State:
        """The state before the first step: a pytree with leaves ``[batch, n_particles, ...]``."""
        raise NotImplementedError(f"{type(self).__name__} must implement init_state(encoded, n_particles)")

    def step(self, state: State, encoded_t, z: torch.Tensor | None = None, reparametrize: bool = True):
        """Propose ``z_t ~ q`` (or score the given ``z`` ``[batch, K, *latent_shape]``), weigh, advance.

        Draws with ``rsample`` when ``reparametrize`` and ``has_rsample``, otherwise with ``sample``
        (no gradient path through ``z_t``; ``log_q`` keeps its gradient in the parameters). A model
        whose q and p share a recurrence runs it once per step.

        Returns:
            :class:`StepOutput` ``(state, z, log_p, log_q)``.
        """
        raise NotImplementedError(f"{type(self).__name__} must implement step(state, encoded_t, z, ...)")

    def reorder(self, state: State, ancestors: torch.Tensor) -> State:
        """Resample the particles: ``ancestors`` ``[batch, K]`` long; gathers every leaf along dim 1."""
        return tree_map(lambda leaf: gather_particles(leaf, ancestors), state)

    def generate_init(self, batch_size: int, n_samples: int, like: torch.Tensor) -> State:
        """The generation state (leaves ``[batch_size, n_samples, ...]``) on ``like``'s device/dtype."""
        raise NotImplementedError(f"{type(self).__name__} does not implement generation (generate_init)")

    def generate_step(self, state: State, inputs_t: torch.Tensor | None = None):
        """One ancestral step: ``(state, x_t [batch, n, *obs_shape], z_t [batch, n, *latent_shape])``."""
        raise NotImplementedError(f"{type(self).__name__} does not implement generation (generate_step)")

    # ---------------------------------------------------------------------------- driver
    def forward(
        self,
        x: torch.Tensor,
        n_particles: int = 1,
        lengths: torch.Tensor | None = None,
        inputs: torch.Tensor | None = None,
        z: torch.Tensor | None = None,
        reparametrize: bool = True,
    ) -> ParticleRun:
        """Same as :func:`run_particles` (reserved; do not override)."""
        return run_particles(
            self, x, n_particles, lengths=lengths, inputs=inputs, z=z, reparametrize=reparametrize
        )

    # ----------------------------------------------------------------------------- views
    @property
    def inf_net(self) -> SequentialInfNet:
        """q(z_{1:T} | x) as an :class:`~bbvae.base.InfNet` sharing this model's parameters."""
        return self._views()[0]

    @property
    def gen_model(self) -> SequentialGenModel:
        """p(x_{1:T}, z_{1:T}) as a :class:`~bbvae.base.GenModel` sharing this model's parameters."""
        return self._views()[1]

    def _views(self) -> tuple[SequentialInfNet, SequentialGenModel]:
        views = self.__dict__.get("_seq_views")
        if views is None:
            views = (SequentialInfNet(self), SequentialGenModel(self))
            # A tuple is not a Module, so nn.Module stores it in __dict__ without registering it:
            # the views hold the model as a child, the model does not hold the views.
            self._seq_views = views
        return views

    def __getstate__(self):
        state = super().__getstate__()
        state.pop("_seq_views", None)
        state.pop("_seq_context", None)
        state.pop("_seq_cache", None)
        return state


# ------------------------------------------------------------------------------- validation
def check_sequence_args(x, lengths, inputs, where: str) -> tuple[int, int, list[torch.Tensor] | None]:
    """Check ``x`` ``[batch, T, ...]``, ``lengths`` ``[batch]`` long and ``inputs`` ``[batch, T, ...]``.

    Returns:
        ``(batch, T, masks)`` where ``masks`` is the ``[batch, T]`` validity mask unbound along time
        (a list of ``T`` ``[batch]`` bool tensors), or ``None`` when ``lengths`` is ``None``.
    """
    check_tensor("x", x, where)
    if x.dim() < 2:
        raise ValueError(
            f"{where}: expected x of shape [batch, T, *obs_shape], got {shape_str(list(x.shape))}"
        )
    batch, n_steps = x.shape[0], x.shape[1]
    if n_steps < 1:
        raise ValueError(
            f"{where}: expected at least one time step, got x of shape {shape_str(list(x.shape))}"
        )
    if inputs is not None:
        check_tensor("inputs", inputs, where)
        if inputs.dim() < 2 or tuple(inputs.shape[:2]) != (batch, n_steps):
            raise ValueError(
                f"{where}: expected inputs of shape [{batch}, {n_steps}, ...] (batch and time of x), "
                f"got {shape_str(list(inputs.shape))}"
            )
    if lengths is None:
        return batch, n_steps, None
    check_tensor("lengths", lengths, where)
    if lengths.dtype not in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8):
        raise TypeError(f"{where}: expected lengths to be an integer tensor, got dtype {lengths.dtype}")
    if tuple(lengths.shape) != (batch,):
        raise ValueError(
            f"{where}: expected lengths of shape [{batch}] (one per sequence), "
            f"got {shape_str(list(lengths.shape))}"
        )
    if is_validation_enabled():
        bad = (lengths < 1) | (lengths > n_steps)
        if bool(bad.any()):
            i = int(bad.nonzero()[0, 0])
            raise ValueError(
                f"{where}: expected 1 <= lengths <= T = {n_steps}, got lengths[{i}] = {int(lengths[i])}"
            )
    steps = torch.arange(n_steps, device=lengths.device)
    mask = steps.unsqueeze(0) < lengths.unsqueeze(1)  # [batch, T]
    return batch, n_steps, list(mask.to(x.device).unbind(1))


def _check_step_output(model, out, batch: int, n_particles: int, where: str) -> None:
    if not isinstance(out, StepOutput):
        if isinstance(out, tuple) and len(out) == 4:
            out = StepOutput(*out)
        else:
            raise TypeError(
                f"{where}: {type(model).__name__}.step must return a StepOutput, got {type(out).__name__}"
            )
    latent_shape = tuple(model.latent_shape)
    expected_z = (batch, n_particles, *latent_shape)
    if tuple(out.z.shape) != expected_z:
        raise ValueError(
            f"{where}: {type(model).__name__}.step returned z of shape {shape_str(list(out.z.shape))}, "
            f"expected {shape_str(list(expected_z))} = [batch, n_particles, *latent_shape]"
        )
    for name, value in (("log_p", out.log_p), ("log_q", out.log_q)):
        if tuple(value.shape) != (batch, n_particles):
            raise ValueError(
                f"{where}: {type(model).__name__}.step returned {name} of shape "
                f"{shape_str(list(value.shape))}, "
                f"expected [{batch}, {n_particles}] = [batch, n_particles]"
            )
    return out


def _check_model(model, where: str) -> None:
    if not isinstance(model, SequentialModel):
        raise TypeError(f"{where}: expected model to be a SequentialModel, got {type(model).__name__}")


# ------------------------------------------------------------------------------------ driver
def run_particles(
    model: SequentialModel,
    x: torch.Tensor,
    n_particles: int,
    lengths: torch.Tensor | None = None,
    inputs: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    reparametrize: bool = True,
) -> ParticleRun:
    """Run ``n_particles`` independent particles through the model, without resampling.

    Args:
        model: a :class:`SequentialModel`.
        x: ``[batch, T, *obs_shape]`` observations.
        n_particles: ``K``.
        lengths: ``[batch]`` long, or ``None`` for all ``T``.
        inputs: optional side inputs ``[batch, T, ...]``.
        z: ``[batch, K, T, *latent_shape]`` latents to score (teacher forcing) instead of proposing.
        reparametrize: propose with ``rsample`` (when the model has it) rather than ``sample``.

    Returns:
        :class:`ParticleRun` ``(log_p [batch, K], log_q [batch, K], z [batch, K, T, *latent_shape])``,
        the log-densities summed over each sequence's valid steps.
    """
    where = "run_particles"
    _check_model(model, where)
    check_positive_int("n_particles", n_particles, where)
    batch, n_steps, masks = check_sequence_args(x, lengths, inputs, where)
    z_steps: Sequence = [None] * n_steps
    if z is not None:
        check_tensor("z", z, where)
        expected = (batch, n_particles, n_steps, *tuple(model.latent_shape))
        if tuple(z.shape) != expected:
            raise ValueError(
                f"{where}: expected z of shape {shape_str(list(expected))} = [batch, K, T, *latent_shape], "
                f"got {shape_str(list(z.shape))}"
            )
        z_steps = z.unbind(2)
    encoded = encode_checked(model, x, lengths, inputs, n_steps, where)
    state = model.init_state(encoded, n_particles)
    log_p = log_q = None
    zs = []
    for t, (encoded_t, z_t) in enumerate(zip(encoded, z_steps)):
        out = model.step(state, encoded_t, z=z_t, reparametrize=reparametrize)
        if t == 0:
            out = _check_step_output(model, out, batch, n_particles, where)
        lp, lq = out.log_p, out.log_q
        if masks is not None:
            valid = masks[t].unsqueeze(1)  # [batch, 1]
            lp = torch.where(valid, lp, 0.0)
            lq = torch.where(valid, lq, 0.0)
        log_p = lp if log_p is None else log_p + lp
        log_q = lq if log_q is None else log_q + lq
        zs.append(out.z)
        state = out.state
    return ParticleRun(log_p, log_q, torch.stack(zs, dim=2))


def encode_checked(model, x, lengths, inputs, n_steps: int, where: str) -> Sequence:
    """``model.encode(x, lengths, inputs)``, checked to give one item per time step."""
    encoded = model.encode(x, lengths=lengths, inputs=inputs)
    if len(encoded) != n_steps:
        raise ValueError(
            f"{where}: {type(model).__name__}.encode returned {len(encoded)} steps for x with T = {n_steps}; "
            "it must return one item per time step (use .unbind(1))"
        )
    return encoded


@torch.no_grad()
def generate(
    model: SequentialModel, n: int, length: int | None = None, inputs: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Ancestral sampling of ``n`` sequences of ``length`` steps.

    Args:
        model: a :class:`SequentialModel` implementing ``generate_init`` / ``generate_step``.
        n: number of sequences.
        length: ``T``; may be omitted when ``inputs`` is given.
        inputs: optional side inputs ``[n, T, ...]``.

    Returns:
        ``(x [n, T, *obs_shape], z [n, T, *latent_shape])``.
    """
    where = "generate"
    _check_model(model, where)
    check_positive_int("n", n, where)
    if inputs is not None:
        check_tensor("inputs", inputs, where)
        if inputs.dim() < 2 or inputs.shape[0] != n or (length is not None and inputs.shape[1] != length):
            raise ValueError(
                f"{where}: expected inputs of shape [{n}, {length if length is not None else 'T'}, ...], "
                f"got {shape_str(list(inputs.shape))}"
            )
        length = inputs.shape[1]
    if length is None:
        raise ValueError(f"{where}: give the sequence length (length=T) or side inputs [n, T, ...]")
    check_positive_int("length", length, where)
    like = next(iter(model.parameters()), None)
    if like is None:
        like = next(iter(model.buffers()), None)
    if like is None:
        raise ValueError(
            f"{where}: {type(model).__name__} has no parameters or buffers to take device/dtype from"
        )
    state = model.generate_init(n, 1, like)
    input_steps = inputs.unbind(1) if inputs is not None else [None] * length
    xs, zs = [], []
    for inputs_t in input_steps:
        state, x_t, z_t = model.generate_step(state, inputs_t.unsqueeze(1) if inputs_t is not None else None)
        xs.append(x_t.squeeze(1))
        zs.append(z_t.squeeze(1))
    return torch.stack(xs, dim=1), torch.stack(zs, dim=1)


# ------------------------------------------------------------------------------------- views
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
        run = run_particles(self.model, x, k, lengths=context.lengths, inputs=context.inputs, z=z)
        self.model._seq_cache = _Cache(x, z, run.log_p, run.log_q, z._version)
        return run

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
        check_sequence_args(x, lengths, inputs, f"{type(self.model).__name__}.inf_net")
        self.model._seq_context = _Context(x, lengths, inputs)
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
        run = run_particles(
            self.model,
            x,
            n_samples,
            lengths=context.lengths,
            inputs=context.inputs,
            reparametrize=reparametrize,
        )
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
            check_sequence_args(x, lengths, inputs, f"{type(self.model).__name__}.gen_model")
            self.model._seq_context = _Context(x, lengths, inputs)
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
