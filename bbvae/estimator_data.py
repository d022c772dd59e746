"""What :class:`~bbvae.VAE` accepts as data: rows ``[N, *obs_shape]``, checked before training.

:func:`as_rows` turns a Tensor, numpy array or nested list into a dense tensor of the model's
floating dtype (integer and boolean data are cast, as a Bernoulli model's 0/1 data often come),
and refuses with an error naming the argument what no model can use: sparse matrices, strings,
objects that are not numbers, complex numbers, a scalar, a 1-D array, no rows, NaN or infinite
values. A torch ``Dataset`` or ``DataLoader`` passes through as it is (the trainer casts its float
batches). :func:`check_network_takes` runs the inference network on one row, so that data of the
wrong width is reported with the user's array shape rather than a batch shape deep in training.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, IterableDataset

from bbvae._validation import as_numeric_tensor, shape_str

__all__ = ["as_rows", "check_network_takes", "row_shape"]


def as_rows(X, name: str, where: str, like: nn.Module) -> torch.Tensor | Dataset | DataLoader:
    """``X`` as a tensor ``[N, *obs_shape]`` of ``like``'s floating dtype (Datasets pass through)."""
    if isinstance(X, (Dataset, DataLoader)):
        return X  # rows as they come (float batches take the model's dtype in the trainer)
    tensor = as_numeric_tensor(name, X, where)
    if tensor is None:
        raise TypeError(
            f"{where}: expected {name} to be a Tensor, numpy array or nested list [N, *obs_shape], a torch "
            f"Dataset of rows or a DataLoader, got {type(X).__name__}"
        )
    shape = shape_str(list(tensor.shape))
    if tensor.dim() == 0:
        raise ValueError(f"{where}: expected {name} of shape [N, *obs_shape], got a scalar (shape [])")
    if tensor.dim() == 1:
        n = tensor.shape[0]
        raise ValueError(
            f"{where}: expected {name} of shape [N, *obs_shape], got a 1-D array {shape}; reshape it to "
            f"[{n}, 1] if it is {n} rows of one feature, or [1, {n}] if it is one row"
        )
    if tensor.shape[0] == 0:
        raise ValueError(f"{where}: {name} has no rows (shape {shape}); at least one row is needed")
    if tensor[0].numel() == 0:  # (in scikit-learn's words, for its checks)
        raise ValueError(
            f"{where}: {name} has rows of shape {shape_str(list(tensor.shape[1:]))}, with no values: "
            f"{name} has 0 feature(s) (shape={tuple(tensor.shape)}) while a minimum of 1 is required."
        )
    param = next((p for p in like.parameters() if p.is_floating_point()), None)
    dtype = param.dtype if param is not None else torch.get_default_dtype()
    if tensor.is_floating_point():
        bad = ~torch.isfinite(tensor)
        if bool(bad.any()):
            rows = bad.reshape(tensor.shape[0], -1).any(dim=1).nonzero().flatten().tolist()
            n_nan, n_inf = int(torch.isnan(tensor).sum()), int(torch.isinf(tensor).sum())
            more = " ..." if len(rows) > 10 else ""
            raise ValueError(
                f"{where}: {name} holds NaN or infinite values ({n_nan} NaN, {n_inf} inf; shape {shape}) in "
                f"row(s) {rows[:10]}{more}; clean the data first"
            )
    return tensor.to(dtype)  # integer and boolean data are cast too


def row_shape(X, where: str) -> tuple[int, ...]:
    """The shape of one data point of a Tensor ``[N, ...]``, a Dataset of rows or a DataLoader."""
    if isinstance(X, torch.Tensor):
        return tuple(X.shape[1:])
    if isinstance(X, DataLoader):
        if isinstance(X.dataset, IterableDataset) or X.batch_size is None:
            batch = next(iter(X))
            batch = batch[0] if isinstance(batch, (list, tuple)) else batch
            return tuple(torch.as_tensor(batch).shape[1:])
        X = X.dataset
    if len(X) == 0:
        raise ValueError(f"{where}: the Dataset holds no data point")
    row = X[0]
    row = row[0] if isinstance(row, (list, tuple)) and len(row) == 1 else row
    if not isinstance(row, (torch.Tensor, np.ndarray)):
        raise TypeError(
            f"{where}: expected the Dataset's items to be Tensors [*obs_shape], got {type(row).__name__}"
        )
    return tuple(torch.as_tensor(row).shape)


def check_network_takes(X, inf_net: nn.Module, name: str, where: str) -> None:
    """Run ``inf_net`` on the first row of ``X`` (eval mode, no gradient); a failure names ``X``'s shape.

    The networks of a VAE have a fixed input width: data of another shape fails in their first
    layer, with a message about one batch. This reports it before training, in the user's terms.
    """
    if not isinstance(X, torch.Tensor):
        return
    param = next(iter(inf_net.parameters()), None)
    first = X[:1] if param is None else X[:1].to(param.device)
    training = inf_net.training
    try:
        with torch.no_grad():
            inf_net.eval()
            inf_net(first)
    except (ValueError, RuntimeError, TypeError) as exc:
        raise ValueError(
            f"{where}: {name} has rows of shape {shape_str(list(X.shape[1:]))} ({name} is "
            f"{shape_str(list(X.shape))}), which inf_net ({type(inf_net).__name__}) does not take: {exc}"
        ) from exc
    finally:
        inf_net.train(training)
