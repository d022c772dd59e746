"""A character-level sequence model of Tiny Shakespeare: train, generate text, score text.

The text example of VAE-Seq, with bbvae's estimator API: ``SequenceModel`` builds a VRNN with
categorical observations (one character per step, embedded for the recurrence) or a plain RNN,
trains it with FIVO (or IWAE / the ELBO) on pieces of ``--seq-len`` characters, then

* prints text generated after a prompt (``--prime``): the prompt is filtered with a particle
  filter, and the model samples ahead from the particles' final states;
* scores held-out text (the first ``--eval-pieces`` pieces of the test split) and the text
  given with ``--score-text``: ELBO, IWAE and FIVO bounds on ``log p(text)`` in nats per character
  (and bits per character), next to the same characters shuffled, which a model of English
  should find far less likely.

For the RNN (no latent variables) all bounds equal the exact log-likelihood.

Run::

    python examples/shakespeare.py                         # about a minute: 300 steps
    python examples/shakespeare.py --score-text "O Romeo, Romeo! wherefore art thou Romeo?"
    python examples/shakespeare.py --model rnn --steps 2000 --generate 500
    python examples/shakespeare.py --minutes 30 --hidden-size 256 --latent-size 64
    python examples/shakespeare.py --data my_corpus.txt

The data default is ``../shared/data/text/tinyshakespeare.txt`` next to the repository (if it
exists); pass ``--data`` for any other plain-text file.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch

from bbvae.data import load_text
from bbvae.sequential import evaluate
from bbvae.sequential.estimator import SequenceModel
from bbvae.training import Callback

BOUNDS = ("elbo", "iwae", "fivo")
DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "text" / "tinyshakespeare.txt"
DEFAULT_TEXT = "To be, or not to be, that is the question."


class TimeBudget(Callback):
    """Stop training once ``seconds`` of wall-clock time have passed since the first step."""

    def __init__(self, seconds: float | None) -> None:
        self.seconds = seconds
        self.start = None

    def on_fit_start(self, trainer) -> None:
        self.start = time.perf_counter()

    def on_step_end(self, trainer, step: int) -> None:
        if self.seconds is not None and time.perf_counter() - self.start >= self.seconds:
            trainer.stop_training = True


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=None, help=f"a plain-text file (default: {DEFAULT_DATA}, if present)")
    p.add_argument("--model", choices=("vrnn", "rnn"), default="vrnn", help="VRNN (default) or plain RNN")
    p.add_argument("--bound", choices=BOUNDS, default="fivo", help="training objective (default fivo)")
    p.add_argument("--seq-len", type=int, default=64, help="characters per training piece")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--latent-size", type=int, default=32, help="size of z_t (VRNN)")
    p.add_argument("--hidden-size", type=int, default=128, help="LSTM state size")
    p.add_argument("--num-particles", type=int, default=4, help="particles / samples K in training")
    p.add_argument("--learning-rate", type=float, default=3e-3)
    p.add_argument("--steps", type=int, default=300, help="optimizer steps (default 300)")
    p.add_argument("--minutes", type=float, default=None, help="stop after this wall-clock budget")
    p.add_argument("--prime", default="ROMEO:\n", help="prompt the generated text continues")
    p.add_argument("--generate", type=int, default=200, help="characters to generate (0: none)")
    p.add_argument("--score-text", default=DEFAULT_TEXT, help="text whose likelihood to report")
    p.add_argument("--score-particles", type=int, default=16, help="K of the reported bounds")
    p.add_argument("--eval-pieces", type=int, default=32, help="test pieces scored (0: none)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    p.add_argument("--device", default=None, help="torch device (default: cpu)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--progress", action="store_true", help="show a progress bar")
    return p


def resolve_data(parser: argparse.ArgumentParser, path: str | None) -> Path:
    if path is not None:
        return Path(path)
    if DEFAULT_DATA.is_file():
        return DEFAULT_DATA
    parser.error(
        f"the default corpus {DEFAULT_DATA} does not exist; pass --data PATH with a plain-text file "
        "(e.g. Tiny Shakespeare, https://github.com/karpathy/char-rnn data/tinyshakespeare/input.txt)"
    )
    raise AssertionError  # parser.error exits


def check_vocabulary(parser: argparse.ArgumentParser, vocab, texts: dict[str, str]) -> None:
    """Refuse, before training, a prompt or text with characters the corpus never uses."""
    for option, text in texts.items():
        unknown = sorted({c for c in text if c not in vocab})
        if unknown:
            parser.error(
                f"{option} has characters the corpus never uses: {unknown}; the model can only "
                f"read the {vocab.size} characters of the training text"
            )


def bounds_per_char(model, x: torch.Tensor, lengths, k: int, seed: int) -> dict[str, float]:
    """ELBO / IWAE / FIVO of ``x`` ``[batch, T]`` in nats per character (seeded)."""
    torch.manual_seed(seed)
    param = next(model.parameters())
    report = evaluate(
        model,
        x.to(param.device),
        None if lengths is None else lengths.to(param.device),
        bounds=BOUNDS,
        n_samples=k,
    )
    return {b: report[b]["per_step"] for b in BOUNDS}


def fmt(bounds: dict[str, float]) -> str:
    return "  ".join(f"{b.upper()} {v:7.3f}" for b, v in bounds.items()) + (
        f"   ({-bounds['fivo'] / math.log(2):.2f} bits/char by FIVO)"
    )


def main(argv: list[str] | None = None) -> dict:
    parser = build_parser()
    args = parser.parse_args(argv)
    path = resolve_data(parser, args.data)
    torch.set_num_threads(args.threads)
    text = load_text(path)
    vocab = text.vocabulary
    check_vocabulary(
        parser, vocab, {"--prime": args.prime if args.generate > 0 else "", "--score-text": args.score_text}
    )
    print(text)

    estimator = SequenceModel(
        model=args.model,
        bound=args.bound,
        latent_size=args.latent_size if args.model == "vrnn" else args.hidden_size,
        hidden_size=args.hidden_size,
        n_samples=args.num_particles,
        learning_rate=args.learning_rate,
        batch_size=args.batch_size,
        max_steps=args.steps if args.minutes is None else 10**9,
        max_length=args.seq_len,
        clip_grad_norm=5.0,
        log_every=max(1, min(50, args.steps)),
        device=args.device,
        progress=args.progress,
        callbacks=[TimeBudget(None if args.minutes is None else 60.0 * args.minutes)],
        random_state=args.seed,
    )
    t0 = time.perf_counter()
    estimator.fit(text)
    seconds = time.perf_counter() - t0
    model = estimator.model_
    history = estimator.loss_history_
    tail = history[-min(20, len(history)) :]
    train_bound = -sum(tail) / len(tail)
    print(
        f"{args.model.upper()} trained with {args.bound.upper()}: {estimator.n_iter_} steps in "
        f"{seconds:.1f} s ({estimator.n_iter_ / seconds:.2f} steps/s); "
        f"training bound {train_bound:.3f} nats/char "
        f"(mean of the last {len(tail)} steps; a uniform guess is {-math.log(vocab.size):.3f})"
    )
    result: dict = {"steps": estimator.n_iter_, "seconds": seconds, "train_bound": train_bound}

    if args.eval_pieces > 0 and text.test:
        pieces = text.sequences("test", args.seq_len)[: args.eval_pieces]
        batch = torch.nn.utils.rnn.pad_sequence(pieces, batch_first=True)  # [N, T] long
        lengths = torch.tensor([len(p) for p in pieces])
        held_out = bounds_per_char(model, batch, lengths, args.score_particles, args.seed)
        n_chars = int(lengths.sum())
        print(
            f"\ntest text ({len(pieces)} pieces, {n_chars:,} characters), nats per character, "
            f"K = {args.score_particles}:"
        )
        print("  " + fmt(held_out))
        result["test"] = held_out

    if args.generate > 0:
        prime = args.prime
        torch.manual_seed(args.seed)
        if prime:
            x, _ = estimator.sample_continuations([vocab.encode(prime)], n_samples=1, length=args.generate)
            generated = prime + vocab.decode(x[0, 0])
        else:
            x, _ = estimator.sample(1, length=args.generate)
            generated = vocab.decode(x[0])
        print(
            f"\ngenerated ({args.generate} characters after the prompt {prime!r}):\n"
            f"{'-' * 60}\n{generated}\n{'-' * 60}"
        )
        result["generated"] = generated

    if args.score_text:
        x = vocab.encode(args.score_text).unsqueeze(0)  # [1, T]
        scored = bounds_per_char(model, x, None, args.score_particles, args.seed)
        g = torch.Generator().manual_seed(args.seed)
        shuffled = x[:, torch.randperm(x.shape[1], generator=g)]
        scrambled = bounds_per_char(model, shuffled, None, args.score_particles, args.seed)
        print(f"\nlog p(text) bounds, nats per character (K = {args.score_particles}):")
        print(f"  {args.score_text!r}")
        print("    " + fmt(scored))
        print(f"  the same {x.shape[1]} characters shuffled: {vocab.decode(shuffled[0])!r}")
        print("    " + fmt(scrambled))
        result["score"] = scored
        result["score_shuffled"] = scrambled
    return result


if __name__ == "__main__":
    main()
