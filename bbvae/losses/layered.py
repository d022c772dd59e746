"""The layered-Bernoulli protocol: q(z|x) = q(z_1|x) q(z_2|z_1) ... q(z_L|z_{L-1}).

A q follows it when it has ``layer_sizes`` (the tuple ``(L_1, ..., L_L)``) and
``layer_logits(index, previous)``: the first layer's logits ``[batch, L_1]`` for ``index = 0``
(``previous = []``), and for ``index >= 1`` the logits ``[batch, K, L_{index+1}]`` of layer
``index`` given the list of the earlier layers' values, each ``[batch, K, L_j]``. Its latents are
the layers concatenated, ``z_1`` first: ``[batch, K, sum(layer_sizes)]``.
:class:`bbvae.models.LayeredBernoulliInfNet` is the shipped one. ARM, DisARM, ARMS, REBAR and
RELAX read the layers and apply their estimator layer by layer; the score-function losses only
need ``sample`` and ``log_prob``.
"""

from __future__ import annotations

import torch

from bbvae._validation import shape_str

__all__ = ["layer_logits", "layer_sizes_of", "sample_layers"]


def layer_sizes_of(q) -> tuple[int, ...] | None:
    """``q.layer_sizes`` when ``q`` follows the layered protocol, else ``None``."""
    sizes = getattr(q, "layer_sizes", None)
    if sizes is None or not callable(getattr(q, "layer_logits", None)):
        return None
    return tuple(int(s) for s in sizes)


def layer_logits(q, index: int, previous: list[torch.Tensor], batch: int, where: str) -> torch.Tensor:
    """``q.layer_logits(index, previous)`` with its shape checked.

    ``[batch, L_1]`` for ``index = 0``; ``[batch, K, L_{index+1}]`` for ``index >= 1``, ``K`` that of
    ``previous``.
    """
    size = q.layer_sizes[index]
    logits = q.layer_logits(index, previous)
    expected = [batch, size] if index == 0 else [*previous[0].shape[:2], size]
    if not isinstance(logits, torch.Tensor) or list(logits.shape) != expected:
        got = shape_str(list(logits.shape)) if isinstance(logits, torch.Tensor) else type(logits).__name__
        what = "[batch, L_1]" if index == 0 else f"[batch, K, L_{index + 1}]"
        raise ValueError(
            f"{where}: expected inf_net.layer_logits({index}, ...) of shape {shape_str(expected)} = "
            f"{what}, got {got}"
        )
    return logits


def sample_layers(q, prefix: list[torch.Tensor], batch: int, where: str) -> list[torch.Tensor]:
    """Complete ``prefix`` (the first layers, each ``[batch, K, L_j]``) by ancestral sampling.

    Returns the list of all layers, ``prefix`` first; the new ones carry no gradient.
    """
    layers = list(prefix)
    with torch.no_grad():
        for index in range(len(prefix), len(q.layer_sizes)):
            probs = torch.sigmoid(layer_logits(q, index, layers, batch, where))
            layers.append(torch.bernoulli(probs))
    return layers
