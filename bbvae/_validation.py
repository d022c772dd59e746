"""Input checks shared by the package, and the flag that gates the costly ones.

Cheap checks (shapes, types) always run. Checks that read tensor *values*
(NaN scans) force a device synchronisation on accelerators, so they run only
while validation is enabled. The flag defaults to ``__debug__`` as in
``torch.distributions``; switch it off with ``bbvae.set_validation(False)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

_VALIDATE = __debug__


def set_validation(enabled: bool) -> None:
    """Turn value checks (NaN scans of log-weights and similar) on or off globally."""
    global _VALIDATE
    if not isinstance(enabled, bool):
        raise TypeError(f"set_validation: expected a bool, got {type(enabled).__name__}")
    _VALIDATE = enabled


def is_validation_enabled() -> bool:
    """Whether value checks are on (see :func:`set_validation`)."""
    return _VALIDATE


def shape_str(shape: Sequence[int | str]) -> str:
    """Format a shape the way error messages in bbvae print it: ``[32, 784]``."""
    return "[" + ", ".join(str(s) for s in shape) + "]"


def check_tensor(name: str, value, where: str) -> torch.Tensor:
    """Raise a TypeError naming ``name`` unless ``value`` is a tensor."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{where}: expected {name} to be a torch.Tensor, got {type(value).__name__}")
    return value


def check_shape(name: str, value: torch.Tensor, expected: Sequence[int | str | None], where: str) -> None:
    """Check ``value.shape`` against ``expected``; ``None`` or a string matches any size.

    Strings name the dimension in the message, e.g. ``("batch", 784)`` prints as
    ``[batch, 784]``.
    """
    ok = value.dim() == len(expected) and all(
        e is None or isinstance(e, str) or e == s for e, s in zip(expected, value.shape)
    )
    if not ok:
        shown = [("*" if e is None else e) for e in expected]
        raise ValueError(
            f"{where}: expected {name} of shape {shape_str(shown)}, got {shape_str(list(value.shape))}"
        )


def check_no_nan(name: str, value: torch.Tensor, where: str) -> None:
    """Raise a ValueError naming ``name`` if ``value`` holds a NaN (only while validating).

    ``-inf`` entries are allowed: a log-weight of ``-inf`` is a sample of zero weight.
    """
    if _VALIDATE and bool(torch.isnan(value).any()):
        n_bad = int(torch.isnan(value).sum())
        raise ValueError(
            f"{where}: {name} contains {n_bad} NaN value(s) out of {value.numel()} "
            f"(shape {shape_str(list(value.shape))}); check the model's parameters and inputs"
        )


def check_positive_int(name: str, value, where: str, minimum: int = 1) -> int:
    """Return ``value`` if it is an int >= ``minimum``, else raise naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{where}: expected {name} to be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{where}: expected {name} >= {minimum}, got {value}")
    return value
