"""Pretrained sequence models shipped with bbvae, loadable by name.

``bbvae.sequential.SequenceModel.pretrained("jsb-vrnn-fivo")`` (or :func:`load`) returns a fitted
:class:`~bbvae.sequential.SequenceModel`: ``score``, ``score_samples``, ``sample``,
``sample_continuations`` and ``set_params(eval_bound=..., n_samples_eval=...)`` work on it as on one
you trained. On the command line: ``bbvae eval --pretrained jsb-vrnn-fivo`` and
``bbvae sample --pretrained jsb-vrnn-fivo --out samples.mid``.

Each model is two files in this folder: ``NAME.json`` (what the model is, the estimator's settings,
how it was trained and selected, and its test bounds with their standard errors) and ``NAME.pt``
(the model's ``state_dict``, nothing else). :func:`info` returns the metadata; :func:`save` writes
both files for a model of your own, and :func:`load` also takes the path of such a ``.json``.

Shipped models are trained on data embedded in bbvae (the JSB chorales), so they need no download.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

__all__ = ["FORMAT", "available", "info", "load", "save"]

FORMAT = "bbvae.pretrained"
VERSION = 1
HERE = Path(__file__).resolve().parent
#: Data sets a pretrained model may name, each loadable without a download.
_DATA = ("jsb",)


def available() -> list[str]:
    """Names of the pretrained models shipped with this version of bbvae."""
    return sorted(p.stem for p in HERE.glob("*.json"))


def _meta_path(name: str | os.PathLike) -> Path:
    path = Path(name)
    if path.suffix == ".json" and path.is_file():
        return path
    if isinstance(name, str) and (HERE / f"{name}.json").is_file():
        return HERE / f"{name}.json"
    raise ValueError(
        f"pretrained: no model named {str(name)!r}; available: {available()} (or the path of a .json "
        "written by bbvae.pretrained.save)"
    )


def info(name: str | os.PathLike) -> dict[str, Any]:
    """The metadata of a pretrained model: settings, training, selection, test bounds."""
    meta = json.loads(_meta_path(name).read_text(encoding="utf-8"))
    if meta.get("format") != FORMAT:
        raise ValueError(f"pretrained: {str(name)!r} is not a {FORMAT} file (format {meta.get('format')!r})")
    return meta


def _data(meta: dict[str, Any]):
    from bbvae.data import PianoRollData

    if meta["data"] not in _DATA:
        raise ValueError(f"pretrained: unknown data {meta['data']!r} (expected one of {_DATA})")
    return PianoRollData.load()  # the embedded JSB chorales


def load(name: str | os.PathLike, device: str | torch.device | None = None):
    """A fitted :class:`~bbvae.sequential.SequenceModel` with the pretrained weights.

    Args:
        name: a name from :func:`available`, or the path of a ``.json`` written by :func:`save`.
        device: where to put the model (None: the CPU).

    Returns:
        The estimator, fitted (``model_`` in eval mode); its ``pretrained_`` attribute holds the
        metadata (:func:`info`).
    """
    from bbvae.sequential.estimator import SequenceModel

    meta_path = _meta_path(name)
    meta = info(meta_path)
    est = SequenceModel(**meta["params"], device=device)
    data = _data(meta)
    est._setup(data, "SequenceModel.pretrained")
    state = torch.load(meta_path.with_suffix(".pt"), map_location="cpu", weights_only=True)
    est.model_.load_state_dict(state)
    est.model_.eval()
    training = meta.get("training", {})
    est.loss_history_, est.valid_history_ = [], []
    est.n_iter_ = int(training.get("steps", 0))
    est.n_epochs_ = int(training.get("epochs", 0))
    est.best_step_ = training.get("best_step")
    est.best_valid_ = training.get("best_valid")
    est.seed_ = meta["params"].get("random_state")
    est.pretrained_ = meta
    return est


def save(est, directory: str | os.PathLike, name: str, metadata: dict[str, Any]) -> Path:
    """Write ``NAME.pt`` and ``NAME.json`` for a fitted estimator; returns the ``.json`` path.

    Args:
        est: a fitted :class:`~bbvae.sequential.SequenceModel` built from a model name (its
            settings, not a model instance, are stored).
        directory: where to write (``bbvae/pretrained`` to ship it).
        name: the model's name.
        metadata: JSON-able facts to keep (``data``, ``description``, ``training``, ``test``...);
            ``data`` must name a data set of ``_DATA``.
    """
    if not isinstance(est.model, str):
        raise TypeError(
            "pretrained.save: the estimator must name its model (model='vrnn', ...), not hold one"
        )
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    params = {
        k: v
        for k, v in est.get_params().items()
        if k not in ("callbacks", "logdir", "device", "progress")
        and isinstance(v, (str, int, float, type(None)))
    }
    params["max_length"] = None  # score whole sequences
    meta = {"format": FORMAT, "version": VERSION, "name": name, "params": params, **metadata}
    if meta.get("data") not in _DATA:
        raise ValueError(
            f"pretrained.save: metadata['data'] must be one of {_DATA}, got {meta.get('data')!r}"
        )
    state = {k: v.detach().cpu().clone() for k, v in est.model_.state_dict().items()}
    torch.save(state, directory / f"{name}.pt")
    path = directory / f"{name}.json"
    path.write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    return path
