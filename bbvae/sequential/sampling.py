"""Sampling sequences from a :class:`~bbvae.sequential.base.SequentialModel`.

* :func:`sample_sequences`: unconditional ancestral sampling of whole sequences,
  ``x [n, length, *obs_shape]`` and ``z [n, length, *latent_shape]``.
* :func:`filter_prefix`: a particle filter over observed prefixes that returns the particles'
  final *states* and log-weights (what continuing a sequence needs).
* :func:`sample_continuations`: prefix-conditioned sampling. Each prefix is filtered, particles
  are drawn by their final weights (an approximate draw from ``p(state | prefix)``), and each
  drawn particle is continued ancestrally with ``generate_step``: samples
  ``[batch, n_samples, sample_len, *obs_shape]``.

A model's filtering state after a prefix is turned into its generation state by
``model.generation_state(state, prefix, lengths, inputs)`` when the model defines it (the models of
:mod:`bbvae.sequential.nets` do: SRNN, RNN and IndependentVAE rebuild their observation-only
recurrence there); otherwise the filtering state is used as is.
"""

from __future__ import annotations

import torch

from bbvae._validation import check_positive_int, check_tensor, shape_str
from bbvae.sequential.base import (
    State,
    _check_model,
    eval_mode,
    generate,
    tree_map,
)
from bbvae.sequential.smc import smc


def sample_sequences(
    model, n: int, length: int | None = None, inputs: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw ``n`` whole sequences ancestrally from the model (no gradient).

    Args:
        model: a :class:`~bbvae.sequential.base.SequentialModel` with ``generate_init`` /
            ``generate_step``.
        n: number of sequences.
        length: ``T`` (may be omitted when ``inputs`` is given).
        inputs: optional side inputs ``[n, T, d_in]``.

    Returns:
        ``(x [n, T, *obs_shape], z [n, T, *latent_shape])``.
    """
    return generate(model, n, length=length, inputs=inputs)


def _structure(tree: State):
    """The pytree's shape without its tensors: types and dict keys."""
    if isinstance(tree, torch.Tensor):
        return "tensor"
    if isinstance(tree, (tuple, list)):
        return (type(tree).__name__, tuple(_structure(leaf) for leaf in tree))
    if isinstance(tree, dict):
        return tuple(sorted((key, _structure(leaf)) for key, leaf in tree.items()))
    return type(tree).__name__


def _check_generation_structure(model, state: State, batch: int, n: int, where: str) -> None:
    """A model without ``generation_state`` must filter and generate with the same kind of state."""
    leaves: list[torch.Tensor] = []
    tree_map(lambda leaf: leaves.append(leaf) or leaf, state)
    like = next((leaf for leaf in leaves if leaf.is_floating_point()), None)
    if like is None:
        like = next(iter(model.parameters()), None)
    if like is None:
        return
    template = model.generate_init(batch, n, like)
    if _structure(template) != _structure(state):
        raise TypeError(
            f"{where}: {type(model).__name__}'s filtering state (from step) and generation state (from "
            "generate_init) differ in structure; define generation_state(state, x, lengths=None, "
            "inputs=None) on the model to turn the state after a prefix into a generation state"
        )


@torch.no_grad()
def filter_prefix(
    model,
    x: torch.Tensor,
    n_particles: int,
    lengths: torch.Tensor | None = None,
    inputs: torch.Tensor | None = None,
    resampling="multinomial",
    ess_threshold: float = 0.5,
) -> tuple[State, torch.Tensor]:
    """Run a particle filter over ``x`` and return the particles after each sequence's last step.

    The filter of :func:`bbvae.sequential.smc.smc` (resample where ESS < ``ess_threshold * K``),
    without gradients, keeping the model state: a sequence's state is frozen once its length is
    reached, so ``state`` is the state after its own last valid step.

    Args:
        model: a :class:`~bbvae.sequential.base.SequentialModel`.
        x: prefixes ``[batch, T, *obs_shape]``.
        n_particles: ``K``.
        lengths: ``[batch]`` long prefix lengths (``None``: all ``T``).
        inputs: side inputs ``[batch, T, ...]`` of the prefix steps.
        resampling: ``"multinomial"``, ``"systematic"``, ``"stratified"`` or a function
            ``(log_weights [B, K], generator=None) -> ancestors [B, K]``.
        ess_threshold: in ``[0, 1]``; 0 never resamples, 1 resamples at every step.

    Returns:
        ``(state, log_weights)``: the final particle states (leaves ``[batch, K, ...]``) and their
        log-weights ``[batch, K]`` since the last resampling.
    """
    result = smc(
        model,
        x,
        n_particles,
        resampling=resampling,
        ess_threshold=ess_threshold,
        lengths=lengths,
        inputs=inputs,
        reparametrize=False,
        return_state=True,
    )
    return result.state, result.log_weights


@torch.no_grad()
def sample_continuations(
    model,
    prefix: torch.Tensor,
    n_samples: int,
    sample_len: int,
    lengths: torch.Tensor | None = None,
    inputs: torch.Tensor | None = None,
    future_inputs: torch.Tensor | None = None,
    n_particles: int = 64,
    resampling="multinomial",
    ess_threshold: float = 0.5,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw ``n_samples`` continuations of each prefix, conditioned on the prefix.

    Filters each prefix with ``n_particles`` particles (:func:`filter_prefix`), draws
    ``n_samples`` particles per prefix from their final normalised weights (with replacement),
    then runs ``generate_step`` ``sample_len`` times from each.

    Args:
        model: a :class:`~bbvae.sequential.base.SequentialModel`.
        prefix: ``[batch, prefix_len, *obs_shape]`` observed beginnings.
        n_samples: continuations per prefix.
        sample_len: steps to generate after each prefix.
        lengths: ``[batch]`` long prefix lengths (``None``: all ``prefix_len``); each
            continuation starts right after its own prefix.
        inputs: side inputs of the prefix steps ``[batch, prefix_len, d_in]``.
        future_inputs: side inputs of the generated steps ``[batch, sample_len, d_in]``.
        n_particles: particles of the filter.
        resampling, ess_threshold: see :func:`filter_prefix`.

    Returns:
        ``(x [batch, n_samples, sample_len, *obs_shape], z [batch, n_samples, sample_len,
        *latent_shape])``.
    """
    where = "sample_continuations"
    _check_model(model, where)
    check_positive_int("n_samples", n_samples, where)
    check_positive_int("sample_len", sample_len, where)
    check_tensor("prefix", prefix, where)
    batch = prefix.shape[0]
    if future_inputs is not None:
        check_tensor("future_inputs", future_inputs, where)
        if future_inputs.dim() < 2 or tuple(future_inputs.shape[:2]) != (batch, sample_len):
            raise ValueError(
                f"{where}: expected future_inputs of shape [{batch}, {sample_len}, ...], "
                f"got {shape_str(list(future_inputs.shape))}"
            )
    with eval_mode(model):
        return _continue(
            model,
            prefix,
            n_samples,
            sample_len,
            lengths,
            inputs,
            future_inputs,
            n_particles,
            resampling,
            ess_threshold,
            batch,
            where,
        )


def _continue(
    model,
    prefix,
    n_samples,
    sample_len,
    lengths,
    inputs,
    future_inputs,
    n_particles,
    resampling,
    ess_threshold,
    batch,
    where,
):
    state, log_w = filter_prefix(
        model,
        prefix,
        n_particles,
        lengths=lengths,
        inputs=inputs,
        resampling=resampling,
        ess_threshold=ess_threshold,
    )
    picked = torch.multinomial(torch.softmax(log_w, dim=1), n_samples, replacement=True)  # [batch, n_samples]
    state = model.reorder(state, picked)  # leaves [batch, n_samples, ...]
    to_generation = getattr(model, "generation_state", None)
    if to_generation is not None:
        state = to_generation(state, prefix, lengths=lengths, inputs=inputs)
    else:
        _check_generation_structure(model, state, batch, n_samples, where)
    steps = future_inputs.unbind(1) if future_inputs is not None else [None] * sample_len
    xs, zs = [], []
    for inputs_t in steps:
        u = (
            inputs_t.unsqueeze(1).expand(batch, n_samples, *inputs_t.shape[1:])
            if inputs_t is not None
            else None
        )
        state, x_t, z_t = model.generate_step(state, u)
        xs.append(x_t)
        zs.append(z_t)
    return torch.stack(xs, dim=2), torch.stack(zs, dim=2)
