"""Input checks shared by the package, and the flag that gates the costly ones.

Cheap checks (shapes, types) always run. Checks that read tensor *values*
(NaN scans) force a device synchronisation on accelerators, so they run only
while validation is enabled. The flag defaults to ``__debug__`` as in
``torch.distributions``; switch it off with ``bbvae.set_validation(False)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
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


def is_scipy_sparse(value) -> bool:
    """Whether ``value`` is a scipy.sparse matrix or array (scipy is not imported)."""
    return type(value).__module__.startswith("scipy.sparse")


def as_numeric_tensor(name: str, value, where: str) -> torch.Tensor | None:
    """``value`` (a Tensor, numpy array or nested list of numbers) as a dense real tensor.

    Returns None for any other type, which the caller reports in its own words. Raises a
    TypeError naming ``name`` for sparse matrices and tensors, and for arrays of strings, complex
    numbers or objects that are not numbers (an object array of numbers becomes float64, as in
    scikit-learn); a ValueError for a ragged nested list.
    """
    if is_scipy_sparse(value):
        raise TypeError(
            f"{where}: expected {name} to be a dense Tensor or array, got a scipy sparse matrix "
            f"({type(value).__name__}, shape {shape_str(list(value.shape))}); "
            f"densify it with {name}.toarray()"
        )
    if isinstance(value, torch.Tensor):
        tensor = value
        if tensor.layout != torch.strided:
            raise TypeError(
                f"{where}: expected {name} to be a dense Tensor, got a {tensor.layout} tensor of shape "
                f"{shape_str(list(tensor.shape))}; densify it with {name}.to_dense()"
            )
    elif isinstance(value, (np.ndarray, list, tuple)):
        try:
            array = np.asarray(value)
        except ValueError as exc:  # a ragged nested list
            raise ValueError(f"{where}: expected {name} to be a rectangular array, got {exc}") from None
        if array.dtype == object:
            try:
                array = array.astype(np.float64)
            except (TypeError, ValueError) as exc:
                kinds = sorted({type(v).__name__ for v in array.ravel()[:1000]})
                raise TypeError(
                    f"{where}: expected {name} to hold numbers, got a numpy array of dtype object holding "
                    f"{', '.join(kinds)} ({exc}); convert it to a numeric dtype first"
                ) from None
        if array.dtype.kind not in "biufc":
            raise TypeError(f"{where}: expected {name} to hold numbers, got an array of dtype {array.dtype}")
        if not array.dtype.isnative:  # big-endian data from another machine: torch takes native order
            array = array.astype(array.dtype.newbyteorder("="))
        tensor = torch.as_tensor(array)
    else:
        return None
    if tensor.is_complex():
        raise TypeError(f"{where}: expected {name} to hold real numbers, got dtype {tensor.dtype}")
    return tensor


def check_data(name: str, x: torch.Tensor, where: str, lengths=None) -> None:
    """Check a batch of data handed to a loss: dense, real, at least one data point, finite.

    The NaN/inf check (a sum over ``x``, and a device sync) runs only while validation is
    enabled; with ``lengths`` ``[batch]``, steps past each sequence's length (padding, often NaN)
    are not checked.
    """
    check_tensor(name, x, where)
    if x.layout != torch.strided:
        raise TypeError(f"{where}: expected {name} to be a dense Tensor, got a {x.layout} tensor")
    if x.is_complex():
        raise TypeError(f"{where}: expected {name} to hold real numbers, got dtype {x.dtype}")
    if x.dim() == 0 or x.shape[0] == 0:
        raise ValueError(
            f"{where}: expected {name} of shape [batch >= 1, ...], got {shape_str(list(x.shape))}"
        )
    if not (_VALIDATE and x.is_floating_point()):
        return
    padded = (
        isinstance(lengths, torch.Tensor)
        and x.dim() >= 2
        and tuple(lengths.shape) == (x.shape[0],)
        and not lengths.is_floating_point()
    )
    # A finite sum (one vectorised pass) means no NaN or inf; the element-wise scan, ten times
    # slower on a CPU, runs only when it is not (or when the sum overflows).
    if padded:  # only the valid steps count: sums per step [batch, T], padding set to 0
        valid = torch.arange(x.shape[1], device=x.device) < lengths.to(x.device).unsqueeze(1)
        total = x.reshape(*x.shape[:2], -1).sum(dim=-1).masked_fill(~valid, 0.0).sum()
    else:
        total = x.sum()
    if bool(torch.isfinite(total)):
        return
    scanned = x.masked_fill(~valid.view(*valid.shape, *([1] * (x.dim() - 2))), 0.0) if padded else x
    bad = ~torch.isfinite(scanned)
    if bool(bad.any()):
        rows = bad.reshape(x.shape[0], -1).any(dim=1).nonzero().flatten().tolist()
        n_nan, n_inf = int(torch.isnan(scanned).sum()), int(torch.isinf(scanned).sum())
        within = " within the lengths" if padded else ""
        raise ValueError(
            f"{where}: {name} holds NaN or infinite values{within} ({n_nan} NaN, {n_inf} inf; shape "
            f"{shape_str(list(x.shape))}) in data point(s) {rows[:10]}{' ...' if len(rows) > 10 else ''}; "
            "clean the data (padding past the sequences' ends is ignored when lengths= is given)"
        )


def check_dtype(name: str, x: torch.Tensor, module: torch.nn.Module, where: str) -> None:
    """Raise a TypeError unless ``x`` has the floating dtype of ``module``'s parameters."""
    param = next(iter(module.parameters()), None)
    if param is None or x.dtype == param.dtype:
        return
    raise TypeError(
        f"{where}: expected {name} of dtype {param.dtype} (the model's parameters'), got {x.dtype}; "
        f"cast it with {name}.to({param.dtype})"
    )
