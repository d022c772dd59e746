"""Random streams of training: :func:`set_seed` and the forked generator evaluation runs on."""

from __future__ import annotations

import contextlib
import random

import numpy as np
import torch

__all__ = ["forked_rng", "set_seed"]


def set_seed(seed: int) -> None:
    """Seed torch (CPU and every CUDA device), numpy's global generator and Python's ``random``."""
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"set_seed: expected seed to be an int, got {type(seed).__name__}")
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


@contextlib.contextmanager
def forked_rng(seed: int, device: torch.device):
    """Run the block on a seeded copy of the global generators, restoring them afterwards."""
    cuda = (
        [device.index if device.index is not None else torch.cuda.current_device()]
        if device.type == "cuda"
        else []
    )
    with torch.random.fork_rng(devices=cuda):
        torch.default_generator.manual_seed(seed)
        for index in cuda:
            torch.cuda.default_generators[index].manual_seed(seed)
        yield
