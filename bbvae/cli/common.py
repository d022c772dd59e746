"""What the ``bbvae`` commands share: argument types, the run's config, the data, the estimator."""

from __future__ import annotations

import argparse
import json
import math
import os
from pathlib import Path
from typing import Any

PROG = "bbvae"
CONFIG_FILE = "config.json"
CONFIG_FORMAT = "bbvae.cli"
SAMPLES_FILE = "samples.npz"
DATASET_TYPES = ("pianoroll", "text", "synthetic", "speech")
SPLITS = ("train", "valid", "test")
MIDI_STEP_SECONDS = 0.5
# Steps when neither --max-steps nor --max-epochs is given: train until stopped, like the reference.
UNLIMITED_STEPS = 1_000_000

# Settings saved in config.json, with their defaults (None: decided by the estimator or the data).
DEFAULTS: dict[str, Any] = {
    "dataset_type": "pianoroll",
    "dataset_path": None,
    "model": "vrnn",
    "bound": "fivo",
    "latent_size": None,
    "hidden_size": None,
    "cell": "lstm",
    "observation": "auto",
    "n_components": 20,
    "frame_size": 200,
    "chunk_length": None,
    "proposal": "network",
    "num_samples": 4,
    "resampling": "multinomial",
    "ess_threshold": 0.5,
    "normalize": "length",
    "learning_rate": 2e-4,
    "batch_size": 4,
    "max_steps": None,
    "max_epochs": None,
    "max_length": None,
    "length_bucketing": None,
    "clip_grad_norm": None,
    "optimizer": "adam",
    "weight_decay": 0.0,
    "lr_schedule": None,
    "lr_factor": None,
    "lr_patience": None,
    "warmup_steps": 0,
    "ema_decay": None,
    "dropout": 0.0,
    "scheduled_sampling": None,
    "compile": False,
    "remat_chunk": None,
    "tbptt_chunk": None,
    "eval_every": None,
    "patience": None,
    "log_every": 50,
    "checkpoint_every": 1000,
    "num_samples_eval": None,
    "seed": None,
}
# config key -> SequenceModel parameter
ESTIMATOR_KEYS = {
    "model": "model",
    "bound": "bound",
    "latent_size": "latent_size",
    "hidden_size": "hidden_size",
    "cell": "cell",
    "observation": "observation",
    "n_components": "n_components",
    "proposal": "proposal",
    "num_samples": "n_samples",
    "resampling": "resampling",
    "ess_threshold": "ess_threshold",
    "normalize": "normalize",
    "learning_rate": "learning_rate",
    "batch_size": "batch_size",
    "max_steps": "max_steps",
    "max_epochs": "max_epochs",
    "max_length": "max_length",
    "length_bucketing": "length_bucketing",
    "clip_grad_norm": "clip_grad_norm",
    "optimizer": "optimizer",
    "weight_decay": "weight_decay",
    "lr_schedule": "lr_schedule",
    "warmup_steps": "warmup_steps",
    "ema_decay": "ema_decay",
    "dropout": "dropout",
    "scheduled_sampling": "scheduled_sampling",
    "compile": "compile",
    "remat_chunk": "remat_chunk",
    "tbptt_chunk": "tbptt_chunk",
    "eval_every": "eval_every",
    "patience": "patience",
    "log_every": "log_every",
    "checkpoint_every": "checkpoint_every",
    "num_samples_eval": "n_samples_eval",
    "seed": "random_state",
}


class UsageError(Exception):
    """A problem with the command line or its files: reported as one line, exit status 2."""


class Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, no usage dump
        raise UsageError(message)


def number_type(cast: type, accept, expected: str):
    """An argparse type: ``cast`` the text and keep it if ``accept(value)``, else name ``expected``."""

    def parse(text: str):
        try:
            value = cast(text)
        except ValueError:
            value = None
        if value is None or not accept(value):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value

    return parse


positive_int = number_type(int, lambda v: v >= 1, "a positive integer")
non_negative_int = number_type(int, lambda v: v >= 0, "an integer >= 0")
positive_float = number_type(float, lambda v: math.isfinite(v) and v > 0, "a positive number")
unit_float = number_type(float, lambda v: 0.0 <= v <= 1.0, "a number in [0, 1]")
any_int = number_type(int, lambda v: True, "an integer")


def explicit_settings(args: argparse.Namespace) -> dict[str, Any]:
    return {k: v for k, v in vars(args).items() if k in DEFAULTS and v is not None}


def config_path(logdir: Path) -> Path:
    return logdir / CONFIG_FILE


def read_config(logdir: Path) -> dict[str, Any]:
    path = config_path(logdir)
    if not logdir.is_dir():
        raise UsageError(
            f"--logdir {str(logdir)!r}: no such directory; train a model there first (bbvae train)"
        )
    if not path.is_file():
        raise UsageError(
            f"--logdir {str(logdir)!r} holds no trained model ({CONFIG_FILE} is missing); "
            "run bbvae train --logdir there first"
        )
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UsageError(f"{str(path)!r} is not a readable bbvae config ({exc})") from None
    if (
        not isinstance(saved, dict)
        or saved.get("format") != CONFIG_FORMAT
        or not isinstance(saved.get("settings"), dict)
    ):
        raise UsageError(f"{str(path)!r} is not a bbvae run config (format {CONFIG_FORMAT!r})")
    return {**DEFAULTS, **{k: v for k, v in saved["settings"].items() if k in DEFAULTS}}


def write_config(logdir: Path, settings: dict[str, Any]) -> None:
    from bbvae import __version__

    logdir.mkdir(parents=True, exist_ok=True)
    payload = {"format": CONFIG_FORMAT, "version": 1, "bbvae_version": __version__, "settings": settings}
    tmp = config_path(logdir).with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, config_path(logdir))


def check_settings(s: dict[str, Any]) -> None:
    if s["model"] == "ghmm" and s["dataset_type"] != "synthetic":
        raise UsageError(
            f"--model ghmm needs real-valued data: use --dataset-type synthetic (got {s['dataset_type']})"
        )
    if s["dataset_type"] == "text" and not s["dataset_path"]:
        raise UsageError("--dataset-type text needs --dataset-path (a text file)")
    if s["dataset_type"] == "speech" and not s["dataset_path"]:
        raise UsageError(
            "--dataset-type speech needs --dataset-path (a folder of .wav files, train/valid/test "
            "sub-folders of them, or train/valid/test.npz as in the shared speech corpus)"
        )
    if s["dataset_type"] != "speech" and (s["frame_size"] != 200 or s["chunk_length"] is not None):
        raise UsageError("--frame-size and --chunk-length belong to --dataset-type speech")
    if s["bound"] in ("vimco", "rws") and s["num_samples"] < 2:
        raise UsageError(f"--bound {s['bound']} needs --num-samples >= 2, got {s['num_samples']}")
    if s.get("lr_schedule") == "cosine" and s.get("max_steps") is None:
        raise UsageError("--lr-schedule cosine anneals over --max-steps: set --max-steps")
    if s.get("lr_schedule") == "plateau" and s.get("eval_every") is None and s.get("patience") is None:
        raise UsageError("--lr-schedule plateau follows the validation bound: set --eval-every")
    if (s.get("lr_factor") is not None or s.get("lr_patience") is not None) and s.get(
        "lr_schedule"
    ) != "plateau":
        raise UsageError("--lr-factor and --lr-patience belong to --lr-schedule plateau")


def parse_device(text: str | None) -> str | None:
    from bbvae.estimator import resolve_device

    try:
        resolve_device(text, "--device")
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    return text


def load_data(s: dict[str, Any]):
    """The data set named by the settings: PianoRollData, TextData or SyntheticData."""
    kind, path = s["dataset_type"], s["dataset_path"]
    if path is not None and not Path(path).exists():
        raise UsageError(f"--dataset-path: no such file: {path!r}")
    if kind == "speech":
        from bbvae.data import load_audio

        if path is None or not Path(path).is_dir():
            raise UsageError(f"--dataset-type speech: expected --dataset-path to be a folder, got {path!r}")
        s = {**DEFAULTS, **s}
        return load_audio(path, frame_size=s["frame_size"], chunk_length=s["chunk_length"])
    if path is not None and Path(path).is_dir():
        raise UsageError(f"--dataset-path: expected a file, got the directory {path!r}")
    if kind == "pianoroll":
        from bbvae.data import PianoRollData

        return PianoRollData.load(path)
    if kind == "text":
        from bbvae.data import load_text

        text = load_text(path)
        if not text.train:
            n_chars = sum(len(text.split(name)) for name in SPLITS)
            raise UsageError(
                f"--dataset-path {path!r}: {n_chars} character(s), too few to leave the training split "
                "(the first 90%) any; use a longer text"
            )
        return text
    from bbvae.data import SyntheticData, gaussian_hmm_data

    if path is None:
        return gaussian_hmm_data(seed=0)
    from bbvae.cli.synthetic_files import read_synthetic

    return SyntheticData(None, **read_synthetic(Path(path)))


def describe_data(s: dict[str, Any]) -> str:
    if s["dataset_path"]:
        return f"{s['dataset_type']} data from {s['dataset_path']}"
    if s["dataset_type"] == "pianoroll":
        return "the embedded JSB chorales"
    if s["dataset_type"] == "speech":
        return "speech"
    return "generated Gaussian-HMM sequences (seed 0)"


def make_estimator(
    s: dict[str, Any], device: str | None, logdir: Path | None = None, progress: bool = False, callbacks=None
):
    from bbvae.sequential.estimator import SequenceModel

    s = {**DEFAULTS, **s}  # a config written before a setting existed has its default
    params = {param: s[key] for key, param in ESTIMATOR_KEYS.items()}
    if params["max_steps"] is None and params["max_epochs"] is None:
        params["max_steps"] = UNLIMITED_STEPS
    schedule_kwargs = {"factor": s["lr_factor"], "patience": s["lr_patience"]}
    schedule_kwargs = {k: v for k, v in schedule_kwargs.items() if v is not None}
    params["lr_schedule_kwargs"] = schedule_kwargs or None
    return SequenceModel(
        **params,
        device=device,
        logdir=None if logdir is None else str(logdir),
        progress=progress,
        callbacks=callbacks,
    )


def checkpoint_path(logdir: Path, which: str) -> Path:
    path = logdir / f"{which}.pt"
    if not path.is_file():
        hint = " (best.pt needs --eval-every or --patience during training)" if which == "best" else ""
        raise UsageError(f"--logdir {str(logdir)!r} has no {path.name}{hint}; train a model there first")
    return path


def add_model_source(parser: argparse.ArgumentParser) -> None:
    """``--checkpoint`` of a run in ``--logdir``, or ``--pretrained NAME`` (a shipped model)."""
    parser.add_argument(
        "--checkpoint", choices=("last", "best"), default="last", help="which checkpoint (last)"
    )
    parser.add_argument(
        "--pretrained",
        metavar="NAME",
        help="use a model shipped with bbvae (e.g. jsb-vrnn-fivo) instead of --logdir",
    )


def _load_pretrained(args: argparse.Namespace):
    from bbvae import pretrained

    try:
        meta = pretrained.info(args.pretrained)
    except ValueError as exc:
        raise UsageError(f"--pretrained: {exc}") from None
    params = meta["params"]
    s = {**DEFAULTS, "dataset_type": "pianoroll", "dataset_path": args.dataset_path}
    s.update({key: params[param] for key, param in ESTIMATOR_KEYS.items() if param in params})
    if getattr(args, "num_samples_eval", None) is not None:
        s["num_samples_eval"] = args.num_samples_eval
    est = pretrained.load(args.pretrained, device=parse_device(args.device))
    logdir = None if args.logdir is None else Path(args.logdir)
    if logdir is not None:
        logdir.mkdir(parents=True, exist_ok=True)
    return s, load_data(s), est, logdir


def load_trained(args: argparse.Namespace):
    """``(settings, data, fitted estimator, logdir or None)`` of ``--logdir`` or ``--pretrained``."""
    if getattr(args, "pretrained", None) is not None:
        if args.logdir is not None and args.checkpoint != "last":
            raise UsageError("--checkpoint belongs to a run in --logdir, not to --pretrained")
        return _load_pretrained(args)
    if args.logdir is None:
        raise UsageError("give --logdir (a trained run) or --pretrained NAME (a shipped model)")
    logdir = Path(args.logdir)
    s = read_config(logdir)
    if args.dataset_path is not None:
        s["dataset_path"] = args.dataset_path
    if getattr(args, "num_samples_eval", None) is not None:
        s["num_samples_eval"] = args.num_samples_eval
    path = checkpoint_path(logdir, args.checkpoint)
    device = parse_device(args.device)
    data = load_data(s)
    est = make_estimator(s, device)
    est.load(data, path)
    return s, data, est, logdir
