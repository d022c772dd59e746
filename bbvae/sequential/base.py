"""The sequential step contract: ``SequentialModel``, ``StepOutput``, ``run_particles``, ``generate``.

A sequence model implements one time step (``step(state, x_t)``); the drivers here and in
:mod:`bbvae.sequential.smc` run it over whole sequences. The views that make a model usable by every
:class:`~bbvae.losses.Loss` (``model.inf_net`` / ``model.gen_model``) are in
:mod:`bbvae.sequential.views`; the particle pytree helpers in :mod:`bbvae.sequential.pytree`.

Deviations from / additions to the written contract (notes/seq_contract.md):

* ``run_particles`` returns a :class:`ParticleRun` named tuple ``(log_p, log_q, z)`` in that order.
* ``SequentialModel.forward(x, n_particles=1, lengths=None, inputs=None, z=None, reparametrize=True)``
  is defined here and simply calls :func:`run_particles`; subclasses must not override it (the views
  use it with ``torch.func.functional_call`` to score with detached parameters, for STL and DReG).
* ``model.gen_model.sample(n, length=None, inputs=None)`` and :func:`generate` (which calls
  ``generate_init(n, 1, like)`` with ``like`` a parameter of the model, and squeezes the sample dim)
  return ``(x [n, T, *obs_shape], z [n, T, *latent_shape])``.
* ``lengths`` must satisfy ``1 <= lengths <= T`` (checked while validation is on).

Data: ``x`` ``[batch, T, *obs_shape]`` (float, or long ``[batch, T]`` for categorical observations),
``lengths`` ``[batch]`` long with ``1 <= lengths <= T`` (``None``: all ``T``), optional side ``inputs``
``[batch, T, ...]``. Steps past a sequence's length contribute nothing to any bound.

Arguments are checked once per call: the public drivers check them (:func:`check_sequence_args`) and
hand the validity masks to the unchecked core, :func:`run_particles_unchecked`, which the views call
with the masks they computed when they were given the data.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, NamedTuple

import torch
from torch import nn

from bbvae._validation import check_positive_int, check_tensor, shape_str
from bbvae.sequential.chunks import resolve_chunks, run_steps
from bbvae.sequential.compiled import CompiledStep, model_step
from bbvae.sequential.pytree import State, gather_particles, tree_map, tree_where
from bbvae.sequential.sequence_args import check_sequence_args, length_mask

if TYPE_CHECKING:
    from bbvae.sequential.views import SequentialGenModel, SequentialInfNet

__all__ = [
    "ParticleRun",
    "SequentialModel",
    "State",
    "StepOutput",
    "check_sequence_args",
    "encode_checked",
    "eval_mode",
    "gather_particles",
    "generate",
    "length_mask",
    "run_particles_unchecked",
    "run_particles",
    "tree_map",
    "tree_where",
]

# Names that moved to bbvae.sequential.views, still importable from here.
_VIEW_NAMES = ("SequentialInfNet", "SequentialGenModel", "get_sequential_model")


def __getattr__(name: str):
    if name in _VIEW_NAMES:
        from bbvae.sequential import views

        return getattr(views, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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


# ----------------------------------------------------------------------------------- the model
class SequentialModel(nn.Module):
    """Base of every sequence model that the sequential drivers (``run_particles``, ``smc``) run.

    A subclass implements :meth:`encode`, :meth:`init_state`, :meth:`step` and, to generate,
    :meth:`generate_init` and :meth:`generate_step`; optionally ``exact_log_prob(x, lengths=None)``
    ``-> [batch]``. It sets the class (or instance) attributes ``has_rsample`` and ``latent_shape``.
    ``forward`` is reserved: it runs :func:`run_particles`. The drivers run long sequences in chunks
    of time steps when ``remat_chunk`` / ``tbptt_chunk`` are set (class or instance attributes).

    The views :attr:`inf_net` and :attr:`gen_model` make the model usable by every
    :class:`~bbvae.losses.Loss`: ``IWAE(model.inf_net, model.gen_model, n_samples=K)(x, lengths=lengths)``.
    """

    #: Whether z_t ~ q is reparametrizable (False for discrete latents).
    has_rsample: bool = True
    #: Per-step latent shape: ``()``, ``(d,)``, ...
    latent_shape: tuple[int, ...] = ()
    #: Activation checkpointing over chunks of this many time steps in every driver, hence every
    #: loss (``model.remat_chunk = 64``; ``None``: off): the same values and gradients, bounded
    #: memory, one more forward pass (:mod:`bbvae.sequential.chunks`).
    remat_chunk: int | None = None
    #: Truncated backpropagation through time: the state is detached every this many steps
    #: (``None``: off). The same values, a different (biased) gradient (:mod:`bbvae.sequential.chunks`).
    tbptt_chunk: int | None = None

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

    # ------------------------------------------------------------------------- compiling
    def compile_step(self, enabled: bool = True, **options) -> SequentialModel:
        """Opt in (``enabled=False``: out) to a ``torch.compile``-d :meth:`step`; returns ``self``.

        Every driver, hence every loss, then calls the compiled step; ``options`` go to
        ``torch.compile``. Details and caveats: :mod:`bbvae.sequential.compiled`.
        """
        if not enabled:
            self.__dict__.pop("_compiled_step", None)
            return self
        self.__dict__["_compiled_step"] = CompiledStep(self, options)
        return self

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
            from bbvae.sequential.views import SequentialGenModel, SequentialInfNet

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
        state.pop("_compiled_step", None)
        return state


# ------------------------------------------------------------------------------- validation
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
    remat_chunk: int | None = None,
    tbptt_chunk: int | None = None,
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
        remat_chunk: activation checkpointing: every this many time steps are one autograd node
            that keeps only its outputs and is recomputed (with the same draws) in the backward;
            the same values and gradients with the activations of one chunk alive instead of all
            ``T`` steps' (:mod:`bbvae.sequential.chunks`). ``None``: ``model.remat_chunk`` (default
            off).
        tbptt_chunk: truncated backpropagation through time: the recurrent state is detached
            every this many steps. The same values, a different (biased) gradient.
            ``None``: ``model.tbptt_chunk`` (default off).

    Returns:
        :class:`ParticleRun` ``(log_p [batch, K], log_q [batch, K], z [batch, K, T, *latent_shape])``,
        the log-densities summed over each sequence's valid steps.
    """
    where = "run_particles"
    _check_model(model, where)
    check_positive_int("n_particles", n_particles, where)
    _, _, masks = check_sequence_args(x, lengths, inputs, where)
    return run_particles_unchecked(
        model, x, n_particles, lengths, inputs, z, reparametrize, masks, where, remat_chunk, tbptt_chunk
    )


def run_particles_unchecked(
    model: SequentialModel,
    x: torch.Tensor,
    n_particles: int,
    lengths: torch.Tensor | None,
    inputs: torch.Tensor | None,
    z: torch.Tensor | None,
    reparametrize: bool,
    masks: list[torch.Tensor] | None,
    where: str,
    remat_chunk: int | None = None,
    tbptt_chunk: int | None = None,
) -> ParticleRun:
    """:func:`run_particles` for arguments already checked by :func:`check_sequence_args`.

    ``masks`` is what that check returned (``T`` tensors ``[batch]`` bool, or ``None``). Only what
    the caller cannot have checked is checked here: ``z`` against the model's latent shape, the
    number of encoded steps, the first step's output and the chunk sizes.
    """
    remat_chunk, tbptt_chunk = resolve_chunks(model, remat_chunk, tbptt_chunk, where)
    batch, n_steps = x.shape[0], x.shape[1]
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
    step_fn = model_step(model)

    def body(t: int, state: State, inputs_t):
        encoded_t, z_t = inputs_t
        out = step_fn(state, encoded_t, z=z_t, reparametrize=reparametrize)
        if t == 0:
            out = _check_step_output(model, out, batch, n_particles, where)
        return out.state, (out.log_p, out.log_q, out.z)

    params = list(model.parameters()) if remat_chunk is not None else ()
    _, outs = run_steps(body, state, list(zip(encoded, z_steps)), x, params, remat_chunk, tbptt_chunk)
    lps, lqs, zs = zip(*outs)
    # Masked and summed once after the loop: [batch, K, T] -> [batch, K].
    log_p, log_q = torch.stack(lps, dim=2), torch.stack(lqs, dim=2)
    if masks is not None:
        valid = torch.stack(masks, dim=1).unsqueeze(1)  # [batch, 1, T]
        zero = log_p.new_zeros(())
        log_p, log_q = torch.where(valid, log_p, zero), torch.where(valid, log_q, zero)
    return ParticleRun(log_p.sum(dim=2), log_q.sum(dim=2), torch.stack(zs, dim=2))


def encode_checked(model, x, lengths, inputs, n_steps: int, where: str) -> Sequence:
    """``model.encode(x, lengths, inputs)``, checked to give one item per time step."""
    encoded = model.encode(x, lengths=lengths, inputs=inputs)
    if len(encoded) != n_steps:
        raise ValueError(
            f"{where}: {type(model).__name__}.encode returned {len(encoded)} steps for x with T = {n_steps}; "
            "it must return one item per time step (use .unbind(1))"
        )
    return encoded


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Run the block with ``model`` in eval mode (no dropout), restoring its mode afterwards."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


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
    with eval_mode(model):
        for inputs_t in input_steps:
            u_t = inputs_t.unsqueeze(1) if inputs_t is not None else None
            state, x_t, z_t = model.generate_step(state, u_t)
            xs.append(x_t.squeeze(1))
            zs.append(z_t.squeeze(1))
    return torch.stack(xs, dim=1), torch.stack(zs, dim=1)
