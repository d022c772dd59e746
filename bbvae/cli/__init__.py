"""The ``bbvae`` command line: ``bbvae train | eval | sample | plot`` for sequence models.

A command-line runner in the manner of the FIVO reference (tensorflow/models, research/fivo,
``run_fivo.py``), built on :class:`~bbvae.sequential.estimator.SequenceModel`::

    bbvae train --logdir runs/jsb --max-steps 20000          # VRNN + FIVO on the embedded JSB chorales
    bbvae eval --logdir runs/jsb --split test                 # ELBO / IWAE / FIVO, nats per step and sequence
    bbvae sample --logdir runs/jsb --prefix-length 25 --sample-length 50
    bbvae plot runs/jsb                                       # bounds.png, ess.png, samples.png

``train`` writes ``config.json`` (the model, data and training settings), the trainer's
``last.pt`` (and ``best.pt`` with validation) checkpoints and ``log.jsonl`` to ``--logdir``;
``eval`` and ``sample`` rebuild the same model from there, so model flags are not repeated.
``sample`` writes ``samples.npz`` (and ``samples.txt`` for text, MIDI files of prefix + sample in
``samples_midi/`` for piano rolls when ``mido`` is installed). With ``B`` prefixes (``--batch-size``,
default the training batch size), ``S`` samples each (``--num-samples``), ``P`` prefix steps and
``L`` generated steps, it holds ``prefixes`` ``[B, P, *obs]`` (zeros past each prefix's length),
``prefix_lengths`` ``[B]``, ``samples`` ``[B, S, L, *obs]`` (float frames, or int64 symbols for
text), ``latents`` ``[B, S, L, *latent]`` and, for text, ``vocabulary`` (the characters, index
order). ``--prefix-length 0`` samples unconditionally (``P = 0``). For speech it also writes
``samples_wav/`` (``real{b}.wav``, the real utterances the prefixes come from, and
``prefix{b}_sample{k}.wav`` of prefix + continuation, or ``sample{b}_{k}.wav``) and ``samples.png``
(waveform and spectrogram of a sample next to a real utterance; needs matplotlib).

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
* ``speech``: raw audio (``--dataset-path`` required): a folder of ``.wav`` files (split 80/10/10
  by name), a folder with ``train/``, ``valid/``, ``test/`` sub-folders of them, or one with
  ``train.npz``, ``valid.npz``, ``test.npz`` (the shared synthetic corpus). Frames of
  ``--frame-size`` samples (200), normalised by the training mean and standard deviation; training
  on chunks of ``--chunk-length`` frames, evaluation on whole utterances (:mod:`bbvae.data.audio`).
  ``--observation normal`` or ``gmm`` (``--n-components``, 20) chooses the emission.

Errors in the arguments (and missing files, or a logdir without a trained model) print one line
``bbvae: error: ...`` on stderr and exit with status 2. Ctrl-C (SIGINT) or SIGTERM during ``train``
saves the step reached to ``last.pt``, says so in one line and exits with status 130 or 143;
``--resume`` continues from there (see :mod:`bbvae.training.interrupts`).
"""

from __future__ import annotations

import sys
from pathlib import Path

from bbvae.cli import evaluate, plot, sample, train
from bbvae.cli.common import PROG, Parser, UsageError, any_int, positive_int

__all__ = ["main", "build_parser"]

#: The commands: name -> module with ``add_parser(commands, common)`` and ``run(args) -> int``.
COMMANDS = {"train": train, "eval": evaluate, "sample": sample, "plot": plot}


def build_parser():
    """The ``bbvae`` argument parser (options default to None: unset ones come from the saved config)."""
    parser = Parser(
        prog=PROG,
        description="Train, evaluate and sample sequence models (VRNN, SRNN, RNN, GaussianHMM) with "
        "ELBO, IWAE, FIVO, VIMCO, NVIL or RWS.",
    )
    commands = parser.add_subparsers(dest="command", metavar="{train,eval,sample,plot}")
    commands.required = True

    common = Parser(add_help=False)
    common.add_argument("--logdir", help="directory of the run (checkpoints, log, config)")
    common.add_argument(
        "--dataset-path",
        help="data file (pianoroll: pickle, default the embedded JSB chorales; text: a text file; "
        "synthetic: .pt/.npz, default a generated Gaussian-HMM data set); eval/sample: default the "
        "training data",
    )
    common.add_argument("--device", help="torch device, e.g. cpu, cuda, cuda:1 (default: cpu)")
    common.add_argument("--seed", type=any_int, help="random seed (train default: drawn; eval/sample: 0)")
    common.add_argument(
        "--threads",
        type=positive_int,
        help="intra-op CPU threads (default: torch's; 1 is fastest for small models on a busy machine)",
    )
    common.add_argument(
        "--batch-size",
        type=positive_int,
        help="train: sequences per step (default 4); "
        "eval: sequences per evaluation batch (default all); sample: number of prefixes",
    )
    for module in COMMANDS.values():
        module.add_parser(commands, common)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the ``bbvae`` command line; returns the exit status (0 success, 2 usage error)."""
    from bbvae.checkpoint import CheckpointError
    from bbvae.training import NonFiniteLossError
    from bbvae.training.interrupts import TrainingInterrupted

    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except UsageError as exc:
        return _fail(str(exc), 2)
    except SystemExit as exc:  # --help
        return exc.code if isinstance(exc.code, int) else 0
    command = COMMANDS[args.command].run
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
    except TrainingInterrupted as exc:
        return _fail(_interrupted(exc, args), exc.exit_status)
    except KeyboardInterrupt:
        hint = ""
        if args.command == "train" and (Path(args.logdir) / "last.pt").is_file():
            hint = f"; the last checkpoint is in {args.logdir} (continue with bbvae train ... --resume)"
        return _fail("interrupted" + hint, 130)


def _interrupted(exc, args) -> str:
    """Where a SIGINT/SIGTERM left the run, and how to continue it."""
    again = f"continue with: {PROG} train --logdir {args.logdir} --resume"
    if exc.checkpoint_path is not None:
        where = exc.checkpoint_path
        return f"interrupted by {exc.signal_name} at step {exc.step}; saved it in {where} ({again})"
    text = str(exc).removeprefix("Trainer.fit: ")
    if args.command == "train" and (Path(args.logdir) / "last.pt").is_file():
        return f"interrupted: {text} ({again})"
    return f"interrupted: {text}"


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
