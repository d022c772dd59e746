"""``bbvae train``: train a sequence model and write its run to ``--logdir``."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from bbvae.checkpoint import CheckpointError
from bbvae.cli.common import (
    CONFIG_FILE,
    DATASET_TYPES,
    DEFAULTS,
    UsageError,
    check_settings,
    describe_data,
    explicit_settings,
    load_data,
    make_estimator,
    non_negative_int,
    number_type,
    parse_device,
    positive_float,
    positive_int,
    read_config,
    unit_float,
    write_config,
)

non_negative_float = number_type(float, lambda v: v >= 0 and v != float("inf"), "a number >= 0")
open_unit_float = number_type(float, lambda v: 0.0 < v < 1.0, "a number in (0, 1)")
dropout_float = number_type(float, lambda v: 0.0 <= v < 1.0, "a number in [0, 1)")


def scheduled_sampling_spec(text: str) -> str:
    """An argparse type: a scheduled-sampling spec (kept as text, checked here)."""
    from bbvae.sequential.scheduled import parse_scheduled_sampling

    flag = "--scheduled-sampling"
    try:
        parse_scheduled_sampling(text, flag, flag)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix(f"{flag}: ")) from None
    return text


# Settings that fix the model, the data order or the optimizer: a resumed run must keep them.
FIXED_ON_RESUME = (
    "dataset_type", "dataset_path", "max_length", "model", "bound", "latent_size", "hidden_size", "cell",
    "observation", "n_components", "frame_size", "chunk_length", "proposal", "batch_size", "optimizer",
    "weight_decay", "lr_schedule", "lr_factor", "lr_patience",
    "warmup_steps", "ema_decay", "seed",
)  # fmt: skip


def add_parser(commands, common: argparse.ArgumentParser) -> None:
    """Add the ``train`` command (its options default to None: unset ones come from the config)."""
    from bbvae.sequential.estimator_build import BOUNDS, MODELS, OBSERVATIONS

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
        "--latent-size", type=positive_int, help="size of z_t (default 64; ghmm: the data size)"
    )
    train.add_argument("--hidden-size", type=positive_int, help="recurrent state size (default latent size)")
    train.add_argument("--cell", choices=("lstm", "gru"), help="recurrent cell (default lstm)")
    train.add_argument(
        "--observation",
        choices=OBSERVATIONS,
        help="emission family (default auto: categorical for text, bernoulli for 0/1 data, else normal; "
        "gmm: a mixture of --n-components diagonal Gaussians)",
    )
    train.add_argument("--n-components", type=positive_int, help="--observation gmm: components (20)")
    train.add_argument(
        "--frame-size", type=positive_int, help="speech: samples per frame, the size of x_t (default 200)"
    )
    train.add_argument(
        "--chunk-length",
        type=positive_int,
        help="speech: train on chunks of N frames cut from the training utterances (default: whole "
        "utterances); valid/test are scored whole",
    )
    train.add_argument(
        "--proposal", choices=("network", "prior", "optimal"), help="ghmm proposal (default network)"
    )
    train.add_argument("--num-samples", type=positive_int, help="samples/particles per sequence (default 4)")
    train.add_argument(
        "--resampling",
        choices=("multinomial", "systematic", "stratified"),
        help="FIVO resampling scheme (default multinomial)",
    )
    train.add_argument(
        "--ess-threshold", type=unit_float, help="FIVO resamples when ESS < threshold * K (0.5)"
    )
    train.add_argument(
        "--normalize",
        choices=("length", "sequence"),
        help="training loss per time step (length, the FIVO reference) or per sequence",
    )
    train.add_argument("--learning-rate", type=positive_float, help="Adam learning rate (default 2e-4)")
    train.add_argument(
        "--max-steps",
        type=positive_int,
        help="stop after this many steps (with neither --max-steps nor --max-epochs: train until "
        "interrupted, checkpointing every --checkpoint-every steps)",
    )
    train.add_argument("--max-epochs", type=positive_int, help="stop after this many epochs")
    train.add_argument(
        "--max-length",
        type=positive_int,
        help="cut sequences to their first N steps (text: pieces of N characters, default 100)",
    )
    train.add_argument(
        "--length-bucketing",
        type=positive_int,
        help="batch sequences of similar length: sort random pools of N batches by length (less padding)",
    )
    train.add_argument("--clip-grad-norm", type=positive_float, help="clip the gradient norm")
    train.add_argument(
        "--optimizer", choices=("adam", "adamw", "sgd", "rmsprop", "adagrad"), help="optimizer (default adam)"
    )
    train.add_argument(
        "--weight-decay",
        type=non_negative_float,
        help="decoupled weight decay (AdamW; --optimizer adam becomes adamw) (default 0)",
    )
    train.add_argument(
        "--lr-schedule",
        choices=("constant", "plateau", "cosine", "step"),
        help="learning-rate schedule: plateau (halve when the validation bound stalls; needs --eval-every), "
        "cosine (to 0 at --max-steps) (default constant)",
    )
    train.add_argument("--lr-factor", type=unit_float, help="plateau: multiply the rate by this (0.1)")
    train.add_argument(
        "--lr-patience", type=non_negative_int, help="plateau: validations without gain before a cut (10)"
    )
    train.add_argument("--warmup-steps", type=non_negative_int, help="linear learning-rate warm-up steps (0)")
    train.add_argument(
        "--ema-decay",
        type=open_unit_float,
        help="validate, select and keep an exponential moving average of the weights (e.g. 0.999)",
    )
    train.add_argument(
        "--dropout",
        type=dropout_float,
        help="dropout on MLP hidden layers and recurrent inputs while training (default 0)",
    )
    train.add_argument(
        "--scheduled-sampling",
        type=scheduled_sampling_spec,
        metavar="SCHEDULE:K=V,...",
        help="feed the model's own samples back while training (Bengio et al. 2015), e.g. "
        "inverse_sigmoid:k=1000, linear:k=1e-4,eps_min=0.1, exponential:k=0.999 (default: teacher forcing)",
    )
    train.add_argument(
        "--compile",
        action="store_true",
        default=None,
        help="run the model's step compiled with torch.compile (faster for small batches and few "
        "particles on the CPU; the first steps compile; eager fallback with a warning)",
    )
    train.add_argument(
        "--remat-chunk",
        type=positive_int,
        metavar="N",
        help="activation checkpointing over chunks of N time steps: the same bound and gradients with "
        "the memory of one chunk instead of the whole sequence, one more forward pass (long sequences)",
    )
    train.add_argument(
        "--tbptt-chunk",
        type=positive_int,
        metavar="N",
        help="truncated backpropagation through time: the state is detached every N steps (the same "
        "bound, a different, biased gradient estimator; combine with --remat-chunk to bound memory)",
    )
    train.add_argument(
        "--eval-every", type=positive_int, help="validate on the valid split every N steps (keeps best.pt)"
    )
    train.add_argument(
        "--patience", type=positive_int, help="early stopping after N validations without gain"
    )
    train.add_argument("--log-every", type=positive_int, help="steps between log lines (default 50)")
    train.add_argument(
        "--checkpoint-every", type=positive_int, help="steps between checkpoints (default 1000)"
    )
    train.add_argument(
        "--num-samples-eval",
        type=positive_int,
        help="particles of the validation bound (default --num-samples)",
    )
    train.add_argument("--resume", action="store_true", help="continue the run in --logdir from last.pt")
    train.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bar (default: when stderr is a terminal)",
    )
    train.add_argument(
        "--tensorboard",
        action="store_true",
        help="also write the log's scalars for TensorBoard to LOGDIR/tensorboard "
        "(pip install 'bbvae[tensorboard]')",
    )


def check_logdir_creatable(logdir: Path) -> None:
    """Refuse, naming ``--logdir``, a logdir that is a file or lies under one (or is not writable)."""
    for existing in (logdir, *logdir.parents):
        if not existing.exists():
            continue
        if not existing.is_dir():
            where = "is a file" if existing == logdir else f"lies under {str(existing)!r}, which is a file"
            raise UsageError(f"--logdir {str(logdir)!r} {where}, not a directory; choose a directory path")
        if not os.access(existing, os.W_OK | os.X_OK):
            what = "" if existing == logdir else f" (its parent {str(existing)!r} is not writable)"
            raise UsageError(f"--logdir {str(logdir)!r}: cannot write there{what}; choose another --logdir")
        return


def resume_mismatch(exc: Exception, logdir: Path, settings: dict) -> str:
    """A refused ``--resume``, told in command-line options rather than Python keywords."""
    saved = read_config(logdir)
    unset = {"seed": "a drawn seed"}
    changed = [
        f"--{key.replace('_', '-')} {settings[key]} here, "
        f"{unset.get(key, 'the default') if saved[key] is None else saved[key]} in the run"
        for key in FIXED_ON_RESUME
        if settings[key] != saved[key]
    ]
    detail = "; ".join(changed) or str(exc).split("different settings: ", 1)[-1].split(". Use the same")[0]
    return (
        f"--resume: the checkpoint in --logdir {str(logdir)!r} was trained with other settings ({detail}). "
        f"Leave these options out to continue the run as saved in {CONFIG_FILE}, or train in another --logdir"
    )


def run(args: argparse.Namespace) -> int:
    """Run ``bbvae train``; returns the exit status."""
    from bbvae.training import Callback

    if args.logdir is None:
        raise UsageError("the following arguments are required: --logdir")
    logdir = Path(args.logdir)
    check_logdir_creatable(logdir)
    has_run = (logdir / "last.pt").is_file()
    if args.resume:
        if not has_run:
            raise UsageError(f"--resume: --logdir {str(logdir)!r} has no last.pt to continue from")
        s = read_config(logdir)
    else:
        if has_run:
            raise UsageError(
                f"--logdir {str(logdir)!r} already holds a trained model (last.pt); use --resume to continue "
                "it or choose another --logdir"
            )
        s = dict(DEFAULTS)
    s.update(explicit_settings(args))
    if s["dataset_path"] is not None:
        s["dataset_path"] = str(Path(s["dataset_path"]).resolve())
    check_settings(s)
    device = parse_device(args.device)
    data = load_data(s)
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
            write_config(logdir, s)

    callbacks = [_ConfigWriter()] + ([] if progress else [_Printer()])
    if args.tensorboard:
        from bbvae.training import TensorBoardLogger

        callbacks.append(TensorBoardLogger(logdir / "tensorboard"))
    est = make_estimator(s, device, logdir, progress, callbacks=callbacks)
    print(
        f"bbvae train: {s['model']} with {s['bound']} ({s['num_samples']} samples) on {describe_data(s)}; "
        f"logdir {logdir}",
        flush=True,
    )
    try:
        est.fit(data, resume=bool(args.resume))
    except CheckpointError as exc:
        if not args.resume:
            raise
        raise UsageError(resume_mismatch(exc, logdir, s)) from None
    last = est.loss_history_[-1] if est.loss_history_ else float("nan")
    print(
        f"done: {est.n_iter_} steps, {est.n_epochs_} epochs ({est.stop_reason_}); last training bound "
        f"{-last:.4f}; checkpoint {logdir / 'last.pt'}",
        flush=True,
    )
    if est.best_step_ is not None:
        print(
            f"best validation bound {est.best_valid_:.4f} nats/step at step {est.best_step_} "
            f"({logdir / 'best.pt'}; bbvae eval/sample --checkpoint best use it)",
            flush=True,
        )
    return 0
