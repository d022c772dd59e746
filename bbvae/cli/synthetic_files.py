"""``--dataset-type synthetic --dataset-path FILE``: a ``.npz`` or ``.pt`` file of splits, checked up front.

The file holds ``train``, ``valid`` and ``test``, each an array ``[N, T, D]`` (with optional
``{split}_lengths`` ``[N]``, each in ``1..T``) or, in a ``.pt``, a list of ``[T_i, D]`` tensors.
Every split is read and checked before training (numbers, shapes, lengths, widths that agree, no
NaN or inf within the lengths), so that a bad entry is reported as one line naming the file, the
key and the index, not found at evaluation time.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from bbvae.cli.common import SPLITS, UsageError

__all__ = ["read_synthetic"]


def read_synthetic(path: Path) -> dict[str, list[torch.Tensor]]:
    """The splits of a synthetic-data file, every one checked before training (one line if bad)."""
    where = f"--dataset-path {str(path)!r}"
    if path.suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as npz:
                raw = {name: npz[name] for name in npz.files}
        except Exception as exc:
            raise UsageError(f"{where}: not a readable .npz file ({exc})") from None
    elif path.suffix == ".pt":
        try:
            raw = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            why = str(exc)
            if "WeightsUnpickler error:" in why:  # torch's advice to file an issue is not for data files
                why = "it may hold only tensors, numbers, strings, lists and dicts; "
                why += str(exc).split("WeightsUnpickler error:", 1)[1].strip().split("\n")[0]
            raise UsageError(f"{where}: not a readable .pt file ({why})") from None
    else:
        raise UsageError(f"{where}: synthetic data must be a .pt or .npz file")
    if not isinstance(raw, dict):
        raise UsageError(f"{where}: expected a dict of splits, got {type(raw).__name__}")
    out = {split: _read_split(raw, split, where) for split in SPLITS}
    width = {split: seqs[0].shape[1] for split, seqs in out.items()}
    if len(set(width.values())) > 1:
        raise UsageError(f"{where}: the splits' sequences differ in width D: {width}")
    return out


def _read_split(raw: dict, split: str, where: str) -> list[torch.Tensor]:
    """One split as ``[T_i, D]`` float tensors: numbers, lengths in 1..T, finite (else UsageError)."""
    from bbvae._validation import as_numeric_tensor

    if split not in raw:
        raise UsageError(f"{where}: missing the {split!r} split")
    value = raw[split]
    try:
        if isinstance(value, (np.ndarray, torch.Tensor)):
            x = as_numeric_tensor(split, value, where)
            if x.dim() != 3 or x.shape[0] == 0 or x.shape[1] == 0:
                raise UsageError(
                    f"{where}: expected {split} of shape [N >= 1, T >= 1, D], got {list(x.shape)}"
                )
            seqs = [row[:n] for row, n in zip(x.unbind(0), _lengths(raw, split, x.shape, where))]
        elif isinstance(value, (list, tuple)) and value:
            seqs = [as_numeric_tensor(f"{split}[{i}]", v, where) for i, v in enumerate(value)]
        else:
            raise UsageError(
                f"{where}: expected {split!r} to be an array [N, T, D] or a non-empty list of sequences"
            )
    except (TypeError, ValueError) as exc:
        raise UsageError(str(exc)) from None
    for i, seq in enumerate(seqs):
        if seq is None or seq.dim() != 2 or seq.shape[0] == 0:
            got = type(value[i]).__name__ if seq is None else f"shape {list(seq.shape)}"
            raise UsageError(f"{where}: expected {split}[{i}] to be a sequence [T >= 1, D], got {got}")
        if seq.shape[1] != seqs[0].shape[1]:
            raise UsageError(
                f"{where}: {split}[{i}] has width D={seq.shape[1]}, {split}[0] has {seqs[0].shape[1]}"
            )
        bad = ~torch.isfinite(seq.double())
        if bool(bad.any()):
            step = int(bad.any(dim=1).nonzero()[0])
            raise UsageError(
                f"{where}: the {split!r} split holds NaN or infinite values (first in sequence {i}, "
                f"step {step}); every split is checked before training"
            )
    return [seq.float() for seq in seqs]


def _lengths(raw: dict, split: str, shape: torch.Size, where: str) -> list[int]:
    """``{split}_lengths`` (one per sequence, each in 1..T), or T for every sequence."""
    key = f"{split}_lengths"
    n, t = shape[0], shape[1]
    if key not in raw:
        return [t] * n
    lengths = np.asarray(raw[key])
    if lengths.shape != (n,) or lengths.dtype.kind not in "iu":
        raise UsageError(
            f"{where}: expected {key} to be {n} integers (one per sequence of {split}), got an array of "
            f"shape {list(lengths.shape)} and dtype {lengths.dtype}"
        )
    for i, length in enumerate(lengths.tolist()):
        if not 1 <= length <= t:
            raise UsageError(f"{where}: {key}[{i}] = {length} is outside 1..{t} ({split} has T = {t} steps)")
    return lengths.tolist()
