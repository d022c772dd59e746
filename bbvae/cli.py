"""The ``bbvae`` command line: ``bbvae train | eval | sample`` for sequence models.

A command-line runner in the manner of the FIVO reference (tensorflow/models, research/fivo,
``run_fivo.py``), built on :class:`~bbvae.sequential.estimator.SequenceModel`::

    bbvae train --logdir runs/jsb --max-steps 20000          # VRNN + FIVO on the embedded JSB chorales
    bbvae eval --logdir runs/jsb --split test                 # ELBO / IWAE / FIVO, nats per step and sequence
    bbvae sample --logdir runs/jsb --prefix-length 25 --sample-length 50

``train`` writes ``config.json`` (the model, data and training settings), the trainer's
``last.pt`` (and ``best.pt`` with validation) checkpoints and ``log.jsonl`` to ``--logdir``;
``eval`` and ``sample`` rebuild the same model from there, so model flags are not repeated.
``sample`` writes ``samples.npz`` (and ``samples.txt`` for text, MIDI files of prefix + sample in
``samples_midi/`` for piano rolls when ``mido`` is installed). With ``B`` prefixes (``--batch-size``,
default the training batch size), ``S`` samples each (``--num-samples``), ``P`` prefix steps and
``L`` generated steps, it holds ``prefixes`` ``[B, P, *obs]`` (zeros past each prefix's length),
``prefix_lengths`` ``[B]``, ``samples`` ``[B, S, L, *obs]`` (float frames, or int64 symbols for
text), ``latents`` ``[B, S, L, *latent]`` and, for text, ``vocabulary`` (the characters, index
order). ``--prefix-length 0`` samples unconditionally (``P = 0``).

Data (``--dataset-type``):

* ``pianoroll`` (default): a Boulanger-Lewandowski piano-roll pickle (``--dataset-path``; the
  embedded JSB chorales without one). As in the FIVO reference, the model's input features are
  centred by the training mean and the Bernoulli output bias starts at logit(training mean).
* ``text``: a UTF-8 text file (``--dataset-path`` required), split 90/5/5 into contiguous parts
  and cut into pieces of ``--max-length`` characters (100 by default); categorical observations.
* ``synthetic``: real-valued sequences. Without ``--dataset-path``, 300 sequences of 50 steps
  drawn from a fixed random Gaussian HMM (:func:`bbvae.data.gaussian_hmm_data`, seed 0); with
  one, a ``.pt`` file holding ``{"train": [...], "valid": [...], "test": [...]}`` (lists of
  ``[T_i, D]`` tensors or ``[N, T, D]`` tensors) or an ``.npz`` with ``train``, ``valid``,
  ``test`` arrays ``[N, T, D]`` and optional ``train_lengths``... ``[N]``. ``--model ghmm`` needs
  this data type.

Errors in the arguments (and missing files, or a logdir without a trained model) print one line
``bbvae: error: ...`` on stderr and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["main", "build_parser"]

PROG = "bbvae"
CONFIG_FILE = "config.json"
CONFIG_FORMAT = "bbvae.cli"
SAMPLES_FILE = "samples.npz"
DATASET_TYPES = ("pianoroll", "text", "synthetic")
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
    "clip_grad_norm": None,
    "eval_every": None,
    "patience": None,
    "log_every": 50,
    "checkpoint_every": 1000,
    "num_samples_eval": None,
    "seed": None,
}
# config key -> SequenceModel parameter
_ESTIMATOR_KEYS = {
    "model": "model",
    "bound": "bound",
    "latent_size": "latent_size",
    "hidden_size": "hidden_size",
    "cell": "cell",
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
    "clip_grad_norm": "clip_grad_norm",
    "eval_every": "eval_every",
    "patience": "patience",
    "log_every": "log_every",
    "checkpoint_every": "checkpoint_every",
    "num_samples_eval": "n_samples_eval",
    "seed": "random_state",
}


class UsageError(Exception):
    """A problem with the command line or its files: reported as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, no usage dump
        raise UsageError(message)


# ============================================================================ argument types
def _number(cast: type, accept, expected: str):
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


_positive_int = _number(int, lambda v: v >= 1, "a positive integer")
_non_negative_int = _number(int, lambda v: v >= 0, "an integer >= 0")
_positive_float = _number(float, lambda v: math.isfinite(v) and v > 0, "a positive number")
_unit_float = _number(float, lambda v: 0.0 <= v <= 1.0, "a number in [0, 1]")
_int = _number(int, lambda v: True, "an integer")


# ============================================================================ the parser
def build_parser() -> argparse.ArgumentParser:
    """The ``bbvae`` argument parser (options default to None: unset ones come from the saved config)."""
    from bbvae.sequential.estimator import BOUNDS, MODELS

    parser = _Parser(
        prog=PROG,
        description="Train, evaluate and sample sequence models (VRNN, SRNN, RNN, GaussianHMM) with "
        "ELBO, IWAE, FIVO, VIMCO, NVIL or RWS.",
    )
    commands = parser.add_subparsers(dest="command", metavar="{train,eval,sample}")
    commands.required = True

    common = _Parser(add_help=False)
    common.add_argument("--logdir", required=True, help="directory of the run (checkpoints, log, config)")
    common.add_argument(
        "--dataset-path",
        help="data file (pianoroll: pickle, default the embedded JSB chorales; text: a text file; "
        "synthetic: .pt/.npz, default a generated Gaussian-HMM data set); eval/sample: default the "
        "training data",
    )
    common.add_argument("--device", help="torch device, e.g. cpu, cuda, cuda:1 (default: cpu)")
    common.add_argument("--seed", type=_int, help="random seed (train default: drawn; eval/sample: 0)")
    common.add_argument(
        "--threads",
        type=_positive_int,
        help="intra-op CPU threads (default: torch's; 1 is fastest for small models on a busy machine)",
    )
    common.add_argument(
        "--batch-size",
        type=_positive_int,
        help="train: sequences per step (default 4); "
        "eval: sequences per evaluation batch (default all); sample: number of prefixes",
    )

    train = commands.add_parser(
        "train",
        parents=[common],
        help="train a model and write checkpoints to --logdir",
        description="Train a sequence model; --logdir receives config.json, last.pt, best.pt, log.jsonl.",
    )
    train.add_argument("--dataset-type", choices=DATASET_TYPES, help="kind of data (default pianoroll)")
    train.add_argument("--model", choices=MODELS, help="the model (default vrnn)")
    train.add_argument("--bound", choices=BOUNDS, help="training objective (default fivo)")
    train.add_argument(
        "--latent-size", type=_positive_int, help="size of z_t (default 64; ghmm: the data size)"
    )
    train.add_argument("--hidden-size", type=_positive_int, help="recurrent state size (default latent size)")
    train.add_argument("--cell", choices=("lstm", "gru"), help="recurrent cell (default lstm)")
    train.add_argument(
        "--proposal", choices=("network", "prior", "optimal"), help="ghmm proposal (default network)"
    )
    train.add_argument("--num-samples", type=_positive_int, help="samples/particles per sequence (default 4)")
    train.add_argument(
        "--resampling",
        choices=("multinomial", "systematic", "stratified"),
        help="FIVO resampling scheme (default multinomial)",
    )
    train.add_argument(
        "--ess-threshold", type=_unit_float, help="FIVO resamples when ESS < threshold * K (0.5)"
    )
    train.add_argument(
        "--normalize",
        choices=("length", "sequence"),
        help="training loss per time step (length, the FIVO reference) or per sequence",
    )
    train.add_argument("--learning-rate", type=_positive_float, help="Adam learning rate (default 2e-4)")
    train.add_argument(
        "--max-steps",
        type=_positive_int,
        help="stop after this many steps (with neither --max-steps nor --max-epochs: train until "
        "interrupted, checkpointing every --checkpoint-every steps)",
    )
    train.add_argument("--max-epochs", type=_positive_int, help="stop after this many epochs")
    train.add_argument(
        "--max-length",
        type=_positive_int,
        help="cut sequences to their first N steps (text: pieces of N characters, default 100)",
    )
    train.add_argument("--clip-grad-norm", type=_positive_float, help="clip the gradient norm")
    train.add_argument(
        "--eval-every", type=_positive_int, help="validate on the valid split every N steps (keeps best.pt)"
    )
    train.add_argument(
        "--patience", type=_positive_int, help="early stopping after N validations without gain"
    )
    train.add_argument("--log-every", type=_positive_int, help="steps between log lines (default 50)")
    train.add_argument(
        "--checkpoint-every", type=_positive_int, help="steps between checkpoints (default 1000)"
    )
    train.add_argument(
        "--num-samples-eval",
        type=_positive_int,
        help="particles of the validation bound (default --num-samples)",
    )
    train.add_argument("--resume", action="store_true", help="continue the run in --logdir from last.pt")
    train.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bar (default: when stderr is a terminal)",
    )

    ev = commands.add_parser(
        "eval",
        parents=[common],
        help="print ELBO, IWAE and FIVO of a trained model",
        description="Evaluate the model trained in --logdir: ELBO, IWAE and FIVO (and the exact "
        "log-likelihood where the model has one), in nats per time step and per sequence.",
    )
    ev.add_argument("--split", choices=SPLITS, default="test", help="data split (default test)")
    ev.add_argument(
        "--num-samples-eval",
        type=_positive_int,
        help="samples/particles per sequence (default: the training --num-samples)",
    )
    ev.add_argument("--checkpoint", choices=("last", "best"), default="last", help="which checkpoint (last)")

    sm = commands.add_parser(
        "sample",
        parents=[common],
        help="continue prefixes of a split and write samples.npz",
        description="Sample from the model trained in --logdir: the first --batch-size sequences of "
        "--split give prefixes of --prefix-length steps (0: unconditional), each continued "
        "--num-samples times for --sample-length steps.",
    )
    sm.add_argument("--split", choices=SPLITS, default="test", help="split the prefixes come from (test)")
    sm.add_argument("--prefix-length", type=_non_negative_int, default=25, help="prefix steps (default 25)")
    sm.add_argument("--sample-length", type=_positive_int, default=50, help="generated steps (default 50)")
    sm.add_argument("--num-samples", type=_positive_int, default=4, help="samples per prefix (default 4)")
    sm.add_argument(
        "--num-particles",
        type=_positive_int,
        help="particles filtering each prefix (default max(16, training --num-samples))",
    )
    sm.add_argument("--checkpoint", choices=("last", "best"), default="last", help="which checkpoint (last)")
    return parser


# ============================================================================ config
def _explicit(args: argparse.Namespace) -> dict[str, Any]:
    return {k: v for k, v in vars(args).items() if k in DEFAULTS and v is not None}


def _config_path(logdir: Path) -> Path:
    return logdir / CONFIG_FILE


def _read_config(logdir: Path) -> dict[str, Any]:
    path = _config_path(logdir)
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


def _write_config(logdir: Path, settings: dict[str, Any]) -> None:
    from bbvae import __version__

    logdir.mkdir(parents=True, exist_ok=True)
    payload = {"format": CONFIG_FORMAT, "version": 1, "bbvae_version": __version__, "settings": settings}
    tmp = _config_path(logdir).with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, _config_path(logdir))


def _check_settings(s: dict[str, Any]) -> None:
    if s["model"] == "ghmm" and s["dataset_type"] != "synthetic":
        raise UsageError(
            f"--model ghmm needs real-valued data: use --dataset-type synthetic (got {s['dataset_type']})"
        )
    if s["dataset_type"] == "text" and not s["dataset_path"]:
        raise UsageError("--dataset-type text needs --dataset-path (a text file)")
    if s["bound"] in ("vimco", "rws") and s["num_samples"] < 2:
        raise UsageError(f"--bound {s['bound']} needs --num-samples >= 2, got {s['num_samples']}")


def _device(text: str | None) -> str | None:
    from bbvae.estimator import resolve_device

    try:
        resolve_device(text, "--device")
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    return text


# ============================================================================ data
def _load_data(s: dict[str, Any]):
    """The data set named by the settings: PianoRollData, TextData or SyntheticData."""
    kind, path = s["dataset_type"], s["dataset_path"]
    if path is not None and not Path(path).exists():
        raise UsageError(f"--dataset-path: no such file: {path!r}")
    if path is not None and Path(path).is_dir():
        raise UsageError(f"--dataset-path: expected a file, got the directory {path!r}")
    if kind == "pianoroll":
        from bbvae.data import PianoRollData

        return PianoRollData.load(path)
    if kind == "text":
        from bbvae.data import load_text

        return load_text(path)
    from bbvae.data import SyntheticData, gaussian_hmm_data

    if path is None:
        return gaussian_hmm_data(seed=0)
    return SyntheticData(None, **_read_synthetic(Path(path)))


def _read_synthetic(path: Path) -> dict[str, list[torch.Tensor]]:
    if path.suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as npz:
                raw = {name: npz[name] for name in npz.files}
        except Exception as exc:
            raise UsageError(f"--dataset-path {str(path)!r}: not a readable .npz file ({exc})") from None
    elif path.suffix == ".pt":
        try:
            raw = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise UsageError(f"--dataset-path {str(path)!r}: not a readable .pt file ({exc})") from None
    else:
        raise UsageError(f"--dataset-path {str(path)!r}: synthetic data must be a .pt or .npz file")
    if not isinstance(raw, dict):
        raise UsageError(f"--dataset-path {str(path)!r}: expected a dict of splits, got {type(raw).__name__}")
    out = {}
    for split in SPLITS:
        if split not in raw:
            raise UsageError(f"--dataset-path {str(path)!r}: missing the {split!r} split")
        value = raw[split]
        if isinstance(value, (np.ndarray, torch.Tensor)):
            x = torch.as_tensor(value)
            if x.dim() != 3:
                raise UsageError(
                    f"--dataset-path {str(path)!r}: expected {split} of shape [N, T, D], got {list(x.shape)}"
                )
            lengths = raw.get(f"{split}_lengths")
            lens = [x.shape[1]] * x.shape[0] if lengths is None else [int(n) for n in np.asarray(lengths)]
            value = [row[:n] for row, n in zip(x.unbind(0), lens)]
        if not isinstance(value, (list, tuple)) or not value:
            raise UsageError(
                f"--dataset-path {str(path)!r}: expected a non-empty list of sequences in {split!r}"
            )
        out[split] = [torch.as_tensor(v).float() for v in value]
    return out


def _describe_data(s: dict[str, Any]) -> str:
    if s["dataset_path"]:
        return f"{s['dataset_type']} data from {s['dataset_path']}"
    if s["dataset_type"] == "pianoroll":
        return "the embedded JSB chorales"
    return "generated Gaussian-HMM sequences (seed 0)"


# ============================================================================ the estimator
def _estimator(
    s: dict[str, Any], device: str | None, logdir: Path | None = None, progress: bool = False, callbacks=None
):
    from bbvae.sequential.estimator import SequenceModel

    params = {param: s[key] for key, param in _ESTIMATOR_KEYS.items()}
    if params["max_steps"] is None and params["max_epochs"] is None:
        params["max_steps"] = UNLIMITED_STEPS
    return SequenceModel(
        **params,
        device=device,
        logdir=None if logdir is None else str(logdir),
        progress=progress,
        callbacks=callbacks,
    )


def _checkpoint(logdir: Path, which: str) -> Path:
    path = logdir / f"{which}.pt"
    if not path.is_file():
        hint = " (best.pt needs --eval-every or --patience during training)" if which == "best" else ""
        raise UsageError(f"--logdir {str(logdir)!r} has no {path.name}{hint}; train a model there first")
    return path


def _load_trained(args: argparse.Namespace):
    logdir = Path(args.logdir)
    s = _read_config(logdir)
    if args.dataset_path is not None:
        s["dataset_path"] = args.dataset_path
    if getattr(args, "num_samples_eval", None) is not None:
        s["num_samples_eval"] = args.num_samples_eval
    path = _checkpoint(logdir, args.checkpoint)
    device = _device(args.device)
    data = _load_data(s)
    est = _estimator(s, device)
    est.load(data, path)
    return s, data, est, logdir


# ============================================================================ commands
def _train(args: argparse.Namespace) -> int:
    from bbvae.training import Callback

    logdir = Path(args.logdir)
    if logdir.exists() and not logdir.is_dir():
        raise UsageError(f"--logdir {str(logdir)!r} is a file, not a directory")
    has_run = (logdir / "last.pt").is_file()
    if args.resume:
        if not has_run:
            raise UsageError(f"--resume: --logdir {str(logdir)!r} has no last.pt to continue from")
        s = _read_config(logdir)
    else:
        if has_run:
            raise UsageError(
                f"--logdir {str(logdir)!r} already holds a trained model (last.pt); use --resume to continue "
                "it or choose another --logdir"
            )
        s = dict(DEFAULTS)
    s.update(_explicit(args))
    if s["dataset_path"] is not None:
        s["dataset_path"] = str(Path(s["dataset_path"]).resolve())
    _check_settings(s)
    device = _device(args.device)
    data = _load_data(s)
    progress = args.progress if args.progress is not None else sys.stderr.isatty()

    class _Printer(Callback):
        def on_log(self, trainer, record):
            if record["loss"] is None and record["valid_bound"] is None:
                return
            parts = [f"step {record['step']:>7d}"]
            if record["loss"] is not None:
                parts.append(f"train bound {-record['loss']:.4f}")
            if record["valid_bound"] is not None:
                parts.append(f"valid bound {record['valid_bound']:.4f} nats/step")
            print("  ".join(parts), flush=True)

    class _ConfigWriter(Callback):
        # Written once the trainer has started (and accepted a resumed checkpoint), so a failed
        # --resume with other settings leaves the run's config as it was.
        def on_fit_start(self, trainer):
            _write_config(logdir, s)

    callbacks = [_ConfigWriter()] + ([] if progress else [_Printer()])
    est = _estimator(s, device, logdir, progress, callbacks=callbacks)
    print(
        f"bbvae train: {s['model']} with {s['bound']} ({s['num_samples']} samples) on {_describe_data(s)}; "
        f"logdir {logdir}",
        flush=True,
    )
    est.fit(data, resume=bool(args.resume))
    last = est.loss_history_[-1] if est.loss_history_ else float("nan")
    print(
        f"done: {est.n_iter_} steps, {est.n_epochs_} epochs ({est.stop_reason_}); last training bound "
        f"{-last:.4f}; checkpoint {logdir / 'last.pt'}",
        flush=True,
    )
    return 0


def _eval(args: argparse.Namespace) -> int:
    from bbvae.sequential.estimator import to_sequences
    from bbvae.sequential.evaluate import evaluate
    from bbvae.training import SequenceData, set_seed

    s, data, est, logdir = _load_trained(args)
    seqs = est._check_sequences(to_sequences(data, args.split, s["max_length"], "bbvae eval"), "bbvae eval")
    batch = SequenceData(seqs).batch(list(range(len(seqs))))
    param = next(iter(est.model_.parameters()))
    x = batch.x.to(param.device)
    if x.is_floating_point():
        x = x.to(param.dtype)
    k = s["num_samples_eval"] or s["num_samples"]
    set_seed(0 if args.seed is None else args.seed)
    report = evaluate(
        est.model_,
        x,
        batch.lengths.to(param.device),
        bounds=("elbo", "iwae", "fivo"),
        n_samples=k,
        batch_size=args.batch_size,
        resampling=s["resampling"],
        ess_threshold=s["ess_threshold"],
    )
    n_steps = int(batch.lengths.sum())
    print(
        f"{s['model']} trained with {s['bound']} for {est.n_iter_} steps; split {args.split!r}: "
        f"{len(seqs)} sequences, {n_steps} steps; {k} samples"
    )
    print(f"{'bound':<8}{'nats/step':>14}{'nats/sequence':>16}")
    for name, values in report.items():
        print(f"{name.upper():<8}{values['per_step']:>14.4f}{values['per_sequence']:>16.4f}")
    out = {
        "split": args.split,
        "checkpoint": args.checkpoint,
        "step": est.n_iter_,
        "n_samples": k,
        "n_sequences": len(seqs),
        "n_steps": n_steps,
        "bounds": report,
    }
    (logdir / f"eval_{args.split}.json").write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")
    return 0


def _sample(args: argparse.Namespace) -> int:
    from bbvae.sequential.estimator import to_sequences
    from bbvae.training import SequenceData, set_seed

    s, data, est, logdir = _load_trained(args)
    n_prefixes = args.batch_size or s["batch_size"]
    set_seed(0 if args.seed is None else args.seed)
    seqs = to_sequences(data, args.split, s["max_length"], "bbvae sample")[:n_prefixes]
    seqs = est._check_sequences(seqs, "bbvae sample")
    n, length = args.num_samples, args.sample_length
    if args.prefix_length == 0:
        x, z = est.sample(len(seqs) * n, length)
        samples = x.reshape(len(seqs), n, *x.shape[1:])
        latents = z.reshape(len(seqs), n, *z.shape[1:])
        prefix_lengths = torch.zeros(len(seqs), dtype=torch.long)
        prefixes = torch.zeros(len(seqs), 0, *seqs[0].shape[1:], dtype=seqs[0].dtype)
    else:
        cut = [q[: args.prefix_length] for q in seqs]
        samples, latents = est.sample_continuations(cut, n, length, n_particles=args.num_particles)
        batch = SequenceData(cut).batch(list(range(len(cut))))
        prefixes, prefix_lengths = batch.x, batch.lengths
    path = logdir / SAMPLES_FILE
    arrays = {
        "prefixes": prefixes.numpy(),
        "prefix_lengths": prefix_lengths.numpy().astype(np.int64),
        "samples": samples.numpy(),
        "latents": latents.float().numpy(),
    }
    vocabulary = getattr(data, "vocabulary", None)
    if vocabulary is not None:
        arrays["vocabulary"] = np.array(vocabulary.chars)
    np.savez(path, **arrays)
    written = [str(path)]
    if vocabulary is not None:
        written.append(str(_write_text(logdir, vocabulary, prefixes, prefix_lengths, samples)))
    elif s["dataset_type"] == "pianoroll":
        folder = _write_midi(logdir, prefixes, prefix_lengths, samples)
        if folder is not None:
            written.append(str(folder))
    source = (
        f"{len(seqs)} prefixes of up to {args.prefix_length} steps from {args.split!r}"
        if args.prefix_length
        else f"{len(seqs)} unconditional groups"
    )
    print(f"{source}, {n} samples of {length} steps each: " + ", ".join(written))
    return 0


def _write_text(logdir: Path, vocabulary, prefixes, prefix_lengths, samples) -> Path:
    path = logdir / "samples.txt"
    lines = []
    for b in range(samples.shape[0]):
        prefix = vocabulary.decode(prefixes[b, : int(prefix_lengths[b])])
        lines.append(f"=== prefix {b} ===")
        lines.append(prefix)
        for k in range(samples.shape[1]):
            lines.append(f"--- sample {k} ---")
            lines.append(prefix + vocabulary.decode(samples[b, k]))
        lines.append("")
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def _write_midi(logdir: Path, prefixes, prefix_lengths, samples) -> Path | None:
    try:
        import mido  # noqa: F401
    except ImportError:
        return None
    from bbvae.data import pianoroll_to_midi

    folder = logdir / "samples_midi"
    folder.mkdir(exist_ok=True)
    for b in range(samples.shape[0]):
        prefix = prefixes[b, : int(prefix_lengths[b])]
        for k in range(samples.shape[1]):
            roll = torch.cat([prefix, samples[b, k]]).round().clamp(0, 1)
            pianoroll_to_midi(roll, folder / f"prefix{b}_sample{k}.mid", MIDI_STEP_SECONDS)
    return folder


# ============================================================================ entry point
def main(argv: list[str] | None = None) -> int:
    """Run the ``bbvae`` command line; returns the exit status (0 success, 2 usage error)."""
    from bbvae.checkpoint import CheckpointError
    from bbvae.training import NonFiniteLossError

    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except UsageError as exc:
        return _fail(str(exc), 2)
    except SystemExit as exc:  # --help
        return exc.code if isinstance(exc.code, int) else 0
    command = {"train": _train, "eval": _eval, "sample": _sample}[args.command]
    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    try:
        return command(args)
    except UsageError as exc:
        return _fail(str(exc), 2)
    except NonFiniteLossError as exc:
        return _fail(str(exc), 1)
    except (ValueError, TypeError, OSError, CheckpointError) as exc:
        return _fail(_one_line(exc), 2)
    except KeyboardInterrupt:
        hint = ""
        if args.command == "train" and (Path(args.logdir) / "last.pt").is_file():
            hint = f"; the last checkpoint is in {args.logdir} (continue with bbvae train ... --resume)"
        return _fail("interrupted" + hint, 130)


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.filename is not None and exc.strerror:
        return f"{exc.strerror}: {exc.filename}"
    return str(exc)


def _fail(message: str, status: int) -> int:
    text = " ".join(message.split())
    print(f"{PROG}: error: {text}", file=sys.stderr)
    return status


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
