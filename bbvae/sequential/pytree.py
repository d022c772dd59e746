"""Particle pytrees: a model's state is a tensor, tuple, named tuple, list or dict of those.

Every leaf is ``[batch, n_particles, ...]``; these helpers map over leaves, select between two
states per sequence and gather particles by their ancestors (resampling).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

State = Any  # a pytree: tensor | tuple | list | dict of those (| None); leaves [batch, n_particles, ...]


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
