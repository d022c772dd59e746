"""``bbvae plot LOGDIR``: pictures of a trained run (matplotlib: ``pip install 'bbvae[plots]'``).

Writes to ``LOGDIR/plots`` (or ``--out``):

* ``bounds.png``: training and validation bounds against steps and wall-clock time (the log);
* ``ess.png``: the ESS of the run's particle filter (its ``--num-samples`` particles, resampling
  and threshold) at every time step of the ``--split`` sequences, mean and spread over them,
  from the trained model;
* piano rolls: ``samples.png``, continuations of ``--prefix-length``-step prefixes of the split
  next to the true continuation, and unconditional samples;
* text: ``samples_plot.txt``, the same as text.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from bbvae.cli.common import SPLITS, UsageError, any_int, load_trained, non_negative_int, positive_int


def add_parser(commands, common: argparse.ArgumentParser) -> None:
    """Add the ``plot`` command (it takes LOGDIR as an argument, not ``--logdir``)."""
    plot = commands.add_parser(
        "plot",
        help="draw the bounds, the ESS per time step and samples of a trained run as PNGs",
        description="Draw pictures of the run in LOGDIR: bounds.png, ess.png and samples (PNG for "
        "piano rolls, text for text). Needs matplotlib (pip install 'bbvae[plots]').",
    )
    plot.add_argument("logdir", help="directory of a run trained by bbvae train")
    plot.add_argument("--out", help="where the pictures go (default LOGDIR/plots)")
    plot.add_argument(
        "--split", choices=SPLITS, default="valid", help="sequences to run the model on (valid)"
    )
    plot.add_argument(
        "--checkpoint", choices=("last", "best"), default="last", help="which checkpoint (last)"
    )
    plot.add_argument("--dataset-path", help="data file (default: the training data)")
    plot.add_argument("--max-sequences", type=positive_int, default=64, help="sequences for the ESS (64)")
    plot.add_argument("--num-samples-eval", type=positive_int, help="particles (default the training's)")
    plot.add_argument("--prefix-length", type=non_negative_int, default=16, help="prefix steps (16)")
    plot.add_argument("--sample-length", type=positive_int, default=32, help="generated steps (32)")
    plot.add_argument("--num-prefixes", type=positive_int, default=3, help="prefixes continued (3)")
    plot.add_argument("--device", help="torch device (default: cpu)")
    plot.add_argument("--seed", type=any_int, help="random seed (default 0)")
    plot.add_argument("--threads", type=positive_int, help="intra-op CPU threads")


def run(args: argparse.Namespace) -> int:
    """Run ``bbvae plot``; returns the exit status."""
    from bbvae import plots
    from bbvae.data.batching import collate_sequences
    from bbvae.sequential.estimator_data import to_sequences
    from bbvae.sequential.smc import smc
    from bbvae.training import set_seed

    logdir = Path(args.logdir)
    try:
        plots._figure("ess")  # matplotlib is there before any work is done
    except ImportError as exc:
        raise UsageError(str(exc)) from None
    logs = [logdir / "log.jsonl", logdir / "log.csv"]
    log = next((p for p in logs if p.is_file()), None)
    if log is None:
        raise UsageError(f"{str(logdir)!r} holds no log.jsonl or log.csv; train a model there first")
    out = Path(args.out) if args.out else logdir / "plots"
    s, data, est, _ = load_trained(args)
    name = f"{s['model']} + {s['bound']}"
    written = [plots.plot_bounds(plots.read_log(log), out / "bounds.png", title=f"{name}: bounds")]

    seqs = to_sequences(data, args.split, s["max_length"], "bbvae plot")
    seqs = est._check_sequences(seqs, "bbvae plot")
    batch = collate_sequences(seqs[: args.max_sequences])
    param = next(iter(est.model_.parameters()))
    x = batch.x.to(param.device)
    x = x.to(param.dtype) if x.is_floating_point() else x
    k = s["num_samples_eval"] or s["num_samples"]
    set_seed(0 if args.seed is None else args.seed)
    with torch.no_grad():
        result = smc(
            est.model_,
            x,
            k,
            resampling=s["resampling"],
            ess_threshold=s["ess_threshold"],
            lengths=batch.lengths.to(param.device),
            reparametrize=False,
        )
    title = f"{name}: ESS of the filter, K = {k}, threshold {s['ess_threshold']}, {args.split} split"
    ess = result.ess.cpu().numpy()
    written.append(plots.plot_ess(ess, batch.lengths.numpy(), k, out / "ess.png", title=title))

    written += _samples(args, s, data, est, seqs, out, name)
    print("wrote " + ", ".join(str(p) for p in written))
    return 0


def _samples(args, s, data, est, seqs, out: Path, name: str) -> list[Path]:
    from bbvae import plots

    n, prefix, length = args.num_prefixes, args.prefix_length, args.sample_length
    chosen = [q for q in seqs if q.shape[0] > prefix][:n] or seqs[:n]
    cut = [q[:prefix] for q in chosen] if prefix else []
    if cut:
        continued, _ = est.sample_continuations(cut, 1, length)  # [B, 1, L, *obs]
    unconditional, _ = est.sample(2, prefix + length)
    vocabulary = getattr(data, "vocabulary", None)
    if vocabulary is not None:
        lines = [f"{name}: {args.split} prefixes of {prefix} characters, {length} generated", ""]
        for b, q in enumerate(chosen if cut else []):
            lines += [f"=== prefix {b} ===", vocabulary.decode(q[:prefix])]
            lines += ["--- truth ---", vocabulary.decode(q[prefix : prefix + length])]
            lines += ["--- model ---", vocabulary.decode(continued[b, 0]), ""]
        for i, sample in enumerate(unconditional):
            lines += [f"=== unconditional sample {i} ===", vocabulary.decode(sample), ""]
        path = out / "samples_plot.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join(lines), encoding="utf-8")
        return [path]
    if s["dataset_type"] == "speech":  # waveform and spectrogram: the model's next to the truth
        q = chosen[0]
        model = torch.cat([q[:prefix], continued[0, 0]]) if cut else unconditional[0]
        label = "model: " + ("prefix + continuation" if cut else "unconditional")
        panels = [(label, data.to_waveform(model)), ("truth", data.to_waveform(q[: prefix + length]))]
        title = f"{name}: {args.split} prefix of {prefix} frames, {length} generated"
        seconds = prefix * data.frame_size / data.sample_rate if cut else 0.0
        path = out / "samples.png"
        return [plots.plot_audio(panels, data.sample_rate, path, title, prefix_seconds=seconds)]
    if s["dataset_type"] != "pianoroll":
        print("samples: drawn for piano rolls and speech, written for text; skipped for this data")
        return []
    panels = []
    for b, q in enumerate(chosen if cut else []):
        panels.append((f"truth {b}", q[: prefix + length].numpy(), prefix))
        panels.append((f"model {b}", torch.cat([q[:prefix], continued[b, 0]]).numpy(), prefix))
    panels += [(f"unconditional {i}", sample.numpy(), 0) for i, sample in enumerate(unconditional)]
    title = f"{name}: continuations of {prefix}-step {args.split} prefixes (after the dashed line)"
    return [plots.plot_pianorolls(panels, out / "samples.png", title=title)]
