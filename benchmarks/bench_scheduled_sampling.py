"""Scheduled sampling vs teacher forcing on JSB chorales and Tiny Shakespeare (a short, CPU-only run).

For each data set, the same small autoregressive RNN (``SequenceModel(model="rnn")``, exact
likelihood, so the training signal differs only by what is fed back) is trained for the same number
of Adam steps, from the same initialisation and batch order, with teacher forcing and with each
schedule of :mod:`bbvae.sequential.scheduled`. Every schedule is scaled to end at ``eps = e``
(``--eps-end``, default 0.25) after the run's ``N`` steps (linear: ``1 - (1 - e) i / N``;
exponential: ``e ** (i / N)``; inverse sigmoid: ``k`` solving ``k / (k + exp(N / k)) = e``).

Reported per run:

* the teacher-forced test bound (exact ``log p(x)`` of the RNN, nats per step; always teacher-forced);
* statistics of free-running samples (ancestral sampling, ``SequenceModel.sample``) against the
  held-out test split. Music: total-variation distance between the polyphony histograms (notes per
  frame) and between the pitch-class histograms, mean polyphony and note-on rate (onsets per frame)
  of samples and data. Text: KL(held-out || samples) of the character-bigram distributions (add-0.5
  smoothing over all V^2 bigrams, nats) and the word validity rate (share of generated words, runs
  of letters and apostrophes, lower-cased, that occur in the training split).

Usage: ``python -m benchmarks.bench_scheduled_sampling [--steps 600] [--seeds 2] [--eps-end 0.25]``.
Results: ``benchmarks/results/scheduled_sampling/results_{data}_end{eps_end}.json`` (and a markdown
table printed).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import time
from pathlib import Path

import numpy as np
import torch

from bbvae.data import PianoRollData, load_text
from bbvae.sequential import SequenceModel

ROOT = Path(__file__).resolve().parents[1]
TEXT = ROOT.parent / "shared" / "data" / "text" / "tinyshakespeare.txt"
OUT = ROOT / "benchmarks" / "results" / "scheduled_sampling"


def schedules(n_steps: int, eps_end: float) -> dict[str, str | None]:
    """The schedules compared, each ending at ``eps_end`` at the last step."""
    # inverse sigmoid: k / (k + exp(N / k)) = eps_end, solved for k by bisection (k >= 1)
    target = (1 - eps_end) / eps_end  # exp(N / k) / k
    lo, hi = 1.0, float(n_steps)
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if math.exp(n_steps / mid) / mid > target:
            lo = mid
        else:
            hi = mid
    return {
        "teacher_forcing": None,
        "linear": f"linear:k={(1 - eps_end) / n_steps!r}",
        "exponential": f"exponential:k={eps_end ** (1 / n_steps)!r}",
        "inverse_sigmoid": f"inverse_sigmoid:k={hi!r}",
    }


# ------------------------------------------------------------------------------ statistics
def music_stats(rolls: list[np.ndarray]) -> dict:
    """Polyphony histogram (0..8+), pitch-class histogram (12), mean polyphony, onsets per frame."""
    frames = np.concatenate(rolls, axis=0)  # [N, 88]
    poly = frames.sum(1).astype(int)
    poly_hist = np.bincount(np.minimum(poly, 8), minlength=9) / len(poly)
    pitch_class = (np.arange(88) + 21) % 12
    pc = np.bincount(pitch_class, weights=frames.sum(0), minlength=12)
    onsets = sum(float(((r[1:] > 0) & (r[:-1] == 0)).sum() + r[0].sum()) for r in rolls)
    return {
        "polyphony_hist": poly_hist.tolist(),
        "pitch_class_hist": (pc / max(pc.sum(), 1)).tolist(),
        "mean_polyphony": float(poly.mean()),
        "note_on_rate": onsets / len(frames),
    }


def tv(p, q) -> float:
    return 0.5 * float(np.abs(np.asarray(p) - np.asarray(q)).sum())


def bigram_kl(held_out: str, samples: list[str], chars: str) -> float:
    """KL(held-out || samples) of character-bigram distributions, add-0.5 smoothing, nats."""
    index = {c: i for i, c in enumerate(chars)}
    v = len(chars)

    def counts(texts):
        m = np.full((v, v), 0.5)
        for text in texts:
            ids = np.array([index[c] for c in text])
            np.add.at(m, (ids[:-1], ids[1:]), 1.0)
        return m / m.sum()

    p, q = counts([held_out]), counts(samples)
    return float((p * (np.log(p) - np.log(q))).sum())


WORD = re.compile(r"[A-Za-z']+")


def word_validity(texts: list[str], vocabulary: set[str]) -> float:
    words = [w.lower() for text in texts for w in WORD.findall(text)]
    return sum(w in vocabulary for w in words) / max(len(words), 1)


# ------------------------------------------------------------------------------------ runs
def fit(data, spec, args, seed: int, **kw) -> tuple[SequenceModel, float]:
    est = SequenceModel(
        model="rnn",
        bound="elbo",
        n_samples=1,
        eval_bound="exact",
        hidden_size=args.hidden,
        batch_size=args.batch,
        learning_rate=args.lr,
        max_steps=args.steps,
        random_state=seed,
        scheduled_sampling=spec,
        **kw,
    )
    start = time.process_time()
    est.fit(data)
    return est, time.process_time() - start


def run_music(args, seed: int) -> list[dict]:
    data = PianoRollData.load()
    held = music_stats([np.asarray(r, dtype=np.float32) for r in data.split("test")])
    rows = []
    for name, spec in schedules(args.steps, args.eps_end).items():
        est, cpu = fit(data, spec, args, seed, max_length=args.length)
        bound = est.score(data, split="test", random_state=0)
        torch.manual_seed(seed + 1)
        x, _ = est.sample(args.n_samples, length=args.length)
        stats = music_stats(list(x.numpy()))
        rows.append(
            {
                "data": "jsb",
                "schedule": name,
                "spec": spec,
                "seed": seed,
                "test_bound": bound,
                "polyphony_tv": tv(stats["polyphony_hist"], held["polyphony_hist"]),
                "pitch_class_tv": tv(stats["pitch_class_hist"], held["pitch_class_hist"]),
                "mean_polyphony": stats["mean_polyphony"],
                "note_on_rate": stats["note_on_rate"],
                "held_out": {k: held[k] for k in ("mean_polyphony", "note_on_rate")},
                "cpu_s": cpu,
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    return rows


def run_text(args, seed: int) -> list[dict]:
    data = load_text(TEXT)
    chars = "".join(data.vocabulary.decode(torch.arange(data.vocabulary.size)))
    train_words = {w.lower() for w in WORD.findall(data.train)}
    held = data.test
    rows = []
    for name, spec in schedules(args.steps, args.eps_end).items():
        est, cpu = fit(data, spec, args, seed, max_length=args.length)
        bound = est.score(data, split="test", random_state=0)
        torch.manual_seed(seed + 1)
        x, _ = est.sample(args.n_samples, length=args.sample_chars)
        texts = [data.vocabulary.decode(row) for row in x]
        rows.append(
            {
                "data": "tinyshakespeare",
                "schedule": name,
                "spec": spec,
                "seed": seed,
                "test_bound": bound,
                "bigram_kl": bigram_kl(held, texts, chars),
                "word_validity": word_validity(texts, train_words),
                "held_out": {"word_validity": word_validity([held], train_words)},
                "sample": texts[0][:120],
                "cpu_s": cpu,
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    return rows


def table(rows: list[dict]) -> str:
    out = []
    music = [r for r in rows if r["data"] == "jsb"]
    text = [r for r in rows if r["data"] != "jsb"]
    if music:
        h = music[0]["held_out"]
        out += [
            "| JSB schedule | test bound (nats/frame) | polyphony TV | pitch-class TV | mean polyphony "
            f"(held-out {h['mean_polyphony']:.2f}) | note-on rate (held-out {h['note_on_rate']:.2f}) "
            "| CPU s |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        out += [
            f"| {r['schedule']} (seed {r['seed']}) | {r['test_bound']:.3f} | {r['polyphony_tv']:.3f} | "
            f"{r['pitch_class_tv']:.3f} | {r['mean_polyphony']:.2f} | {r['note_on_rate']:.2f} | "
            f"{r['cpu_s']:.0f} |"
            for r in music
        ]
        out.append("")
    if text:
        h = text[0]["held_out"]
        out += [
            "| Tiny Shakespeare schedule | test bound (nats/char) | bigram KL (nats) | word validity "
            f"(held-out {h['word_validity']:.3f}) | CPU s |",
            "|---|---:|---:|---:|---:|",
        ]
        out += [
            f"| {r['schedule']} (seed {r['seed']}) | {r['test_bound']:.3f} | {r['bigram_kl']:.3f} | "
            f"{r['word_validity']:.3f} | {r['cpu_s']:.0f} |"
            for r in text
        ]
    return "\n".join(out)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", choices=("jsb", "text", "both"), default="both")
    parser.add_argument("--steps", type=int, default=600, help="Adam steps per run")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--eps-end", type=float, default=0.25, help="every schedule's eps at the last step")
    parser.add_argument("--hidden", type=int, default=48)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--length", type=int, default=32, help="training / test length (steps)")
    parser.add_argument("--n-samples", type=int, default=100, help="free-running samples")
    parser.add_argument("--sample-chars", type=int, default=200, help="characters per text sample")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=str(OUT))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = []
    start = time.process_time()
    for seed in range(args.seeds):
        if args.data in ("jsb", "both"):
            rows += run_music(args, seed)
        if args.data in ("text", "both"):
            if not TEXT.is_file():
                raise SystemExit(f"Tiny Shakespeare not found at {TEXT} (see ../shared/data/README.md)")
            rows += run_text(args, seed)
    total = time.process_time() - start
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = f"results_{args.data}_end{args.eps_end}.json"
    payload = {"settings": vars(args), "cpu_seconds_total": total, "torch": torch.__version__, "rows": rows}
    (out / name).write_text(json.dumps(payload, indent=1) + "\n")
    print(table(rows))
    print(f"total CPU time {total:.0f} s; written {out / name}")


if __name__ == "__main__":
    main()
