"""``bbvae sample``: continue prefixes of a split (or sample unconditionally), write ``samples.npz``."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from bbvae.cli.common import (
    MIDI_STEP_SECONDS,
    SAMPLES_FILE,
    SPLITS,
    UsageError,
    add_model_source,
    load_trained,
    non_negative_int,
    positive_int,
)


def add_parser(commands, common: argparse.ArgumentParser) -> None:
    """Add the ``sample`` command."""
    sm = commands.add_parser(
        "sample",
        parents=[common],
        help="continue prefixes of a split and write samples.npz",
        description="Sample from the model trained in --logdir: the first --batch-size sequences of "
        "--split give prefixes of --prefix-length steps (0: unconditional), each continued "
        "--num-samples times for --sample-length steps.",
    )
    sm.add_argument("--split", choices=SPLITS, default="test", help="split the prefixes come from (test)")
    sm.add_argument("--prefix-length", type=non_negative_int, default=25, help="prefix steps (default 25)")
    sm.add_argument("--sample-length", type=positive_int, default=50, help="generated steps (default 50)")
    sm.add_argument("--num-samples", type=positive_int, default=4, help="samples per prefix (default 4)")
    sm.add_argument(
        "--num-particles",
        type=positive_int,
        help="particles filtering each prefix (default max(16, training --num-samples))",
    )
    add_model_source(sm)
    sm.add_argument(
        "--out",
        help="write the samples here instead of --logdir: a .mid file (piano rolls) or a .wav file (speech): "
        "every prefix and its continuations one after another; or a .npz file (the arrays of samples.npz)",
    )


def run(args: argparse.Namespace) -> int:
    """Run ``bbvae sample``; returns the exit status."""
    from bbvae.data.batching import collate_sequences
    from bbvae.sequential.estimator import to_sequences
    from bbvae.training import set_seed

    out = None if args.out is None else Path(args.out)
    if out is not None and out.suffix not in (".mid", ".npz", ".wav"):
        raise UsageError(f"--out: expected a .mid, .wav or .npz file name, got {args.out!r}")
    if out is not None and out.suffix == ".mid" and s_kind(args) != "pianoroll":
        raise UsageError("--out FILE.mid needs a piano-roll model")
    if out is not None and out.suffix == ".wav" and s_kind(args) != "speech":
        raise UsageError("--out FILE.wav needs a speech model (--dataset-type speech)")
    if out is None and args.logdir is None and args.pretrained is not None:
        raise UsageError("--pretrained: give --out FILE.mid or FILE.npz (or --logdir DIR) for the samples")
    s, data, est, logdir = load_trained(args)
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
        batch = collate_sequences(cut)
        prefixes, prefix_lengths = batch.x, batch.lengths
    arrays = {
        "prefixes": prefixes.numpy(),
        "prefix_lengths": prefix_lengths.numpy().astype(np.int64),
        "samples": samples.numpy(),
        "latents": latents.float().numpy(),
    }
    vocabulary = getattr(data, "vocabulary", None)
    if vocabulary is not None:
        arrays["vocabulary"] = np.array(vocabulary.chars)
    if out is not None and out.suffix == ".wav":
        from bbvae.cli.audio_files import write_one_wav

        write_one_wav(out, data, prefixes, prefix_lengths, samples)
        print(f"{len(seqs)} prefix group(s), {n} samples of {length} steps each: {out}")
        return 0
    if out is not None:
        return _write_out(out, arrays, prefixes, prefix_lengths, samples, len(seqs), n, length)
    path = logdir / SAMPLES_FILE
    np.savez(path, **arrays)
    written = [str(path)]
    if vocabulary is not None:
        written.append(str(_write_text(logdir, vocabulary, prefixes, prefix_lengths, samples)))
    elif s["dataset_type"] == "speech":
        from bbvae.cli.audio_files import write_audio_samples

        paths = write_audio_samples(logdir, data, seqs, prefixes, prefix_lengths, samples)
        written += [str(p) for p in paths]
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


def s_kind(args: argparse.Namespace) -> str:
    """The data kind of the model to sample (pretrained models are piano rolls)."""
    if getattr(args, "pretrained", None):
        return "pianoroll"
    from bbvae.cli.common import read_config

    return read_config(Path(args.logdir))["dataset_type"] if args.logdir else "pianoroll"


def _write_out(
    out: Path, arrays, prefixes, prefix_lengths, samples, n_prefixes: int, n: int, length: int
) -> int:
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".npz":
        np.savez(out, **arrays)
    else:
        _write_one_midi(out, prefixes, prefix_lengths, samples)
    print(f"{n_prefixes} prefix group(s), {n} samples of {length} steps each: {out}")
    return 0


def _write_one_midi(out: Path, prefixes, prefix_lengths, samples, gap: int = 4) -> None:
    """Every prefix followed by each of its continuations, ``gap`` silent steps apart, in one file."""
    try:
        import mido  # noqa: F401
    except ImportError:
        raise UsageError("--out FILE.mid needs mido: pip install 'bbvae[midi]'") from None
    from bbvae.data import pianoroll_to_midi

    silence = torch.zeros(gap, samples.shape[-1])
    pieces = []
    for b in range(samples.shape[0]):
        prefix = prefixes[b, : int(prefix_lengths[b])]
        for k in range(samples.shape[1]):
            pieces += [prefix, samples[b, k], silence]
    roll = torch.cat(pieces).round().clamp(0, 1)
    pianoroll_to_midi(roll, out, MIDI_STEP_SECONDS)
