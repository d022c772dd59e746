"""The checks of a batch of sequences that every driver makes once: :func:`check_sequence_args`.

``x`` ``[batch, T, *obs_shape]``, ``lengths`` ``[batch]`` (integers, ``1 <= lengths <= T`` while
validation is on) and side ``inputs`` ``[batch, T, ...]``; the validity mask they give,
:func:`length_mask`. (Re-exported by :mod:`bbvae.sequential.base`.)
"""

from __future__ import annotations

import torch

from bbvae._validation import check_tensor, is_validation_enabled, shape_str

__all__ = ["check_sequence_args", "length_mask"]


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
    return batch, n_steps, list(length_mask(lengths, n_steps, x.device).unbind(1))


def length_mask(lengths: torch.Tensor, n_steps: int, device: torch.device) -> torch.Tensor:
    """``[batch, T]`` bool, True where ``t < lengths[b]`` (no checks: ``lengths`` ``[batch]``)."""
    return torch.arange(n_steps, device=device).unsqueeze(0) < lengths.to(device).unsqueeze(1)
