"""``bbvae eval``: ELBO, IWAE and FIVO of a trained model on a split, in nats per step and sequence."""

from __future__ import annotations

import argparse
import json

from bbvae.cli.common import SPLITS, add_model_source, load_trained, positive_int


def add_parser(commands, common: argparse.ArgumentParser) -> None:
    """Add the ``eval`` command."""
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
        type=positive_int,
        help="samples/particles per sequence (default: the training --num-samples)",
    )
    add_model_source(ev)


def run(args: argparse.Namespace) -> int:
    """Run ``bbvae eval``; returns the exit status."""
    from bbvae.data.batching import collate_sequences
    from bbvae.sequential.estimator import to_sequences
    from bbvae.sequential.evaluate import evaluate
    from bbvae.training import set_seed

    s, data, est, logdir = load_trained(args)
    seqs = est._check_sequences(to_sequences(data, args.split, s["max_length"], "bbvae eval"), "bbvae eval")
    batch = collate_sequences(seqs)
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
    what = f"pretrained {args.pretrained!r}: " if args.pretrained else ""
    print(
        f"{what}{s['model']} trained with {s['bound']} for {est.n_iter_} steps; split {args.split!r}: "
        f"{len(seqs)} sequences, {n_steps} steps; {k} samples"
    )
    print(f"{'bound':<8}{'nats/step':>14}{'nats/sequence':>16}")
    for name, values in report.items():
        print(f"{name.upper():<8}{values['per_step']:>14.4f}{values['per_sequence']:>16.4f}")
    out = {
        "split": args.split,
        "checkpoint": args.pretrained or args.checkpoint,
        "step": est.n_iter_,
        "n_samples": k,
        "n_sequences": len(seqs),
        "n_steps": n_steps,
        "bounds": report,
    }
    if args.pretrained and args.split == "test":
        reported = est.pretrained_.get("test", {})
        for name in ("elbo", "iwae", "fivo"):
            if name in reported and reported[name].get("n_samples") == k:
                r = reported[name]
                print(f"reported {name.upper()}: {r['mean']:.4f} +- {r['se']:.4f} (SE over evaluation seeds)")
    if logdir is not None:
        (logdir / f"eval_{args.split}.json").write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")
    return 0
