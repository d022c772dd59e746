"""Checkpoints: atomic writes, safe loading, and the random-number-generator state they carry.

A checkpoint is a plain ``dict`` saved with :func:`torch.save`. :func:`save_checkpoint` writes it
to a temporary file in the destination's directory, flushes it and calls ``os.fsync``, then renames it
over the destination with :func:`os.replace`, which is atomic on POSIX and Windows: a crash or an
error mid-write leaves the previous checkpoint intact and never a half-written file under its
name. :func:`load_checkpoint` reads with ``weights_only=True`` (no arbitrary code runs), so a
checkpoint holds only tensors and built-in containers; :func:`capture_rng_state` stores numpy's
state in that form.

The :class:`~bbvae.training.Trainer` checkpoint layout (``format`` ``"bbvae.trainer"``):

==========================  ====================================================================
key                         content
==========================  ====================================================================
``format``, ``version``     ``"bbvae.trainer"``, ``2`` (version 1 checkpoints still resume)
``config``                  the trainer's settings (see :meth:`Trainer.config`)
``loss_class``              qualified class name of the loss
``param_shapes``            ``{name: [sizes]}`` of the loss's state dict
``model_state``             ``loss.state_dict()`` (inf_net, gen_model and loss-owned modules)
``optimizer_state``         ``optimizer.state_dict()``
``step``, ``epoch``         optimizer steps taken, epochs completed
``batch_in_epoch``          batches of the current epoch already used
``epoch_order``             the current epoch's batches as drawn when it began: ``{"indices",
                            "sizes"}`` long tensors (flat item indices, batch sizes), or None
``generator_state``         the shuffling generator's state now (version 1 kept instead
                            ``epoch_generator_state``, its state when the epoch began)
``rng``                     one :func:`capture_rng_state` dict per process (rank order)
``loss_history``            ``list[float]``, training loss (negative bound) of every step
``valid_history``, ...      validation bounds, the steps they were taken at, the best one
``elapsed``                 training seconds so far
==========================  ====================================================================
"""

from __future__ import annotations

import glob
import os
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    "CheckpointError",
    "capture_rng_state",
    "load_checkpoint",
    "remove_stale_temporaries",
    "restore_rng_state",
    "save_checkpoint",
]


class CheckpointError(ValueError):
    """A checkpoint is unreadable, not a bbvae checkpoint, or incompatible with the current run."""


def _file_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


_FILE_MODE = _file_mode()


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write ``state`` to ``path`` atomically.

    The data goes to a temporary file in the same directory, is flushed and fsynced, and
    replaces ``path`` with :func:`os.replace`. If anything fails, the temporary file is removed
    and the exception propagates; ``path`` keeps its previous content (or stays absent).

    Args:
        state: the object to save (tensors and built-in containers, so that
            :func:`load_checkpoint` can read it with ``weights_only=True``).
        path: destination file; its directory is created if missing.

    Returns:
        the destination as a :class:`~pathlib.Path`.
    """
    if not isinstance(state, dict):
        raise TypeError(f"save_checkpoint: expected state to be a dict, got {type(state).__name__}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp_name, _FILE_MODE)  # mkstemp makes 0600; a checkpoint is an ordinary file
        with os.fdopen(fd, "wb") as handle:
            torch.save(state, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        try:
            os.unlink(tmp_name)
        except FileNotFoundError:
            pass
        raise
    _fsync_directory(path.parent)
    return path


def remove_stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Delete the temporary files that writes of ``path`` left behind when their process was killed.

    :func:`save_checkpoint` writes ``.NAME.XXXXXXXX.tmp`` next to ``path`` and renames it; a process
    killed (SIGKILL, power loss) before the rename leaves that file. Call this when no other
    process is writing ``path`` (the trainer does at the start of every fit, on rank 0).

    Returns:
        the files removed.
    """
    path = Path(path)
    removed = []
    for stale in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        try:
            stale.unlink()
        except FileNotFoundError:  # removed meanwhile
            continue
        removed.append(stale)
    return removed


def _fsync_directory(directory: Path) -> None:
    """Persist the rename itself (POSIX); a no-op where directories cannot be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def load_checkpoint(
    path: str | os.PathLike, *, map_location=None, expected_format: str | None = None
) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (``weights_only=True``).

    Args:
        path: the checkpoint file.
        map_location: passed to :func:`torch.load` (None: tensors return to the device they were
            saved from).
        expected_format: if given, the value the checkpoint's ``"format"`` key must have.

    Returns:
        the saved dict.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        CheckpointError: the file is not a readable checkpoint, or has another format.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"load_checkpoint: no checkpoint file at {str(path)!r}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # a truncated or foreign file: say which and why
        raise CheckpointError(
            f"load_checkpoint: {str(path)!r} is not a readable checkpoint ({type(exc).__name__}: {exc})"
        ) from exc
    if not isinstance(state, dict):
        raise CheckpointError(
            f"load_checkpoint: expected {str(path)!r} to hold a dict, got {type(state).__name__}"
        )
    if expected_format is not None and state.get("format") != expected_format:
        raise CheckpointError(
            f"load_checkpoint: expected a checkpoint of format {expected_format!r} in {str(path)!r}, "
            f"got format {state.get('format')!r}"
        )
    return state


def capture_rng_state() -> dict[str, Any]:
    """The states of every global random number generator bbvae code may draw from.

    Returns:
        a dict with ``"torch"`` (CPU ByteTensor), ``"cuda"`` (list of ByteTensors, one per
        visible device, empty when CUDA is not initialised), ``"numpy"`` (numpy's legacy global
        ``RandomState`` as built-in types and a tensor) and ``"python"`` (``random.getstate()``).
    """
    kind, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "cuda": [],
        "numpy": {
            "kind": str(kind),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),  # uint32 values, int64 storage
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = [s.cpu() for s in torch.cuda.get_rng_state_all()]
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Set the global generators from a :func:`capture_rng_state` dict."""
    torch.set_rng_state(state["torch"].cpu())
    if state.get("cuda") and torch.cuda.is_available():
        if len(state["cuda"]) != torch.cuda.device_count():
            raise CheckpointError(
                f"restore_rng_state: the checkpoint holds the CUDA RNG states of {len(state['cuda'])} "
                f"device(s), but {torch.cuda.device_count()} are visible"
            )
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
    npy = state["numpy"]
    keys = npy["keys"].numpy().astype(np.uint32)
    np.random.set_state((npy["kind"], keys, npy["pos"], npy["has_gauss"], npy["cached_gaussian"]))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
