"""Raw-audio speech as in the VRNN paper's table: RNN / VRNN / SRNN, Gaussian or GMM outputs, ELBO/IWAE/FIVO.

Data: the shared synthetic speech corpus (``--data-dir``, default ``../shared/data/speech``; any
folder :func:`bbvae.data.load_audio` reads), 16 kHz, frames of 200 samples normalised by the
training mean and standard deviation, training on chunks of ``--chunk-length`` frames. Every
configuration is trained through the public estimator (:class:`bbvae.sequential.SequenceModel`)
for ``--steps`` steps and scored on whole test utterances: the RNN baselines exactly (no latents),
the latent models with ELBO, IWAE and FIVO of ``--eval-particles`` particles, in nats per
utterance (the VRNN paper) and per frame (FIVO), higher is better.

    python -m benchmarks.bench_speech --steps 300 --seeds 0 --out-dir benchmarks/results/speech

Writes ``{config}_seed{seed}.json`` per run and ``summary.json``, prints a Markdown table (with
several seeds also the mean ± standard deviation across seeds of every model and bound,
``summary.json``'s ``across_seeds``), and with ``--samples`` a prefix-conditioned sample of the best
latent model (``samples_{config}/``: WAV files and ``samples.png``).
``--summarise`` only reads the ``{config}_seed{seed}.json`` files of ``--out-dir`` and prints the
across-seed table.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import platform
import statistics
import time
from pathlib import Path

import torch

DEFAULT_DATA_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "speech"
CONFIGS = {
    "rnn-gauss": dict(model="rnn", observation="normal", bound="elbo"),
    "rnn-gmm": dict(model="rnn", observation="gmm", bound="elbo"),
    "vrnn-gauss-elbo": dict(model="vrnn", observation="normal", bound="elbo"),
    "vrnn-gmm-elbo": dict(model="vrnn", observation="gmm", bound="elbo"),
    "srnn-gauss-elbo": dict(model="srnn", observation="normal", bound="elbo"),
    "vrnn-gauss-iwae": dict(model="vrnn", observation="normal", bound="iwae"),
    "vrnn-gauss-fivo": dict(model="vrnn", observation="normal", bound="fivo"),
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    p.add_argument("--configs", nargs="+", choices=sorted(CONFIGS), default=list(CONFIGS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--steps", type=int, default=300, help="training steps per run")
    p.add_argument("--latent-size", type=int, default=32)
    p.add_argument("--hidden-size", type=int, default=64)
    p.add_argument("--n-components", type=int, default=20)
    p.add_argument("--frame-size", type=int, default=200)
    p.add_argument("--chunk-length", type=int, default=40, help="training chunks, frames")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--num-particles", type=int, default=4, help="K of the training bound")
    p.add_argument("--eval-particles", type=int, default=4, help="K of the test ELBO / IWAE / FIVO")
    p.add_argument("--eval-utterances", type=int, default=None, help="score the first N test utterances")
    p.add_argument("--learning-rate", type=float, default=1e-3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--samples", action="store_true", help="write WAV samples of the best latent model")
    p.add_argument("--out-dir", type=Path, default=Path("benchmarks/results/speech"))
    p.add_argument("--summarise", action="store_true", help="only aggregate the run files of --out-dir")
    return p


def run_one(name: str, seed: int, data, test: list[torch.Tensor], args) -> tuple[dict, object]:
    from bbvae.sequential import SequenceModel

    cfg = CONFIGS[name]
    latent = cfg["model"] != "rnn"
    est = SequenceModel(
        model=cfg["model"],
        bound=cfg["bound"],
        observation=cfg["observation"],
        n_components=args.n_components,
        latent_size=args.latent_size,
        hidden_size=args.hidden_size,
        n_samples=args.num_particles if latent else 1,
        batch_size=args.batch_size,
        max_steps=args.steps,
        learning_rate=args.learning_rate,
        log_every=10,
        random_state=seed,
    )
    cpu, wall = time.process_time(), time.perf_counter()
    est.fit(data)
    train_cpu, train_wall = time.process_time() - cpu, time.perf_counter() - wall
    n_frames = sum(t.shape[0] for t in test)
    scores = {}
    cpu = time.process_time()
    for bound in ("elbo", "iwae", "fivo") if latent else ("exact",):
        est.set_params(eval_bound=bound, n_samples_eval=args.eval_particles)
        per_seq = est.score_samples(test, random_state=1_000 + seed)  # [N] nats per utterance
        n = per_seq.shape[0]
        scores[bound] = {
            "per_utterance": float(per_seq.mean()),
            "per_utterance_se": float(per_seq.std() / math.sqrt(n)) if n > 1 else None,
            "per_frame": float(per_seq.sum()) / n_frames,
        }
    n_params = sum(p.numel() for p in est.model_.parameters())
    losses = est.loss_history_
    tail = losses[-max(1, len(losses) // 10) :]
    result = {
        "config": name,
        **cfg,
        "seed": seed,
        "steps": est.n_iter_,
        "train_cpu_s": round(train_cpu, 2),
        "train_wall_s": round(train_wall, 2),
        "eval_cpu_s": round(time.process_time() - cpu, 2),
        "n_params": n_params,
        "final_train_bound_per_frame": -statistics.fmean(tail),
        "test_utterances": len(test),
        "test_frames": n_frames,
        "eval_particles": args.eval_particles if latent else None,
        "bounds": scores,
    }
    return result, est


def table(rows: list[dict]) -> str:
    lines = [
        "| model | trained with | test bound | nats / utterance | nats / frame | steps | train CPU s |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        for bound, v in r["bounds"].items():
            se = f" ± {v['per_utterance_se']:.0f}" if v["per_utterance_se"] is not None else ""
            trained = "exact log-lik." if r["model"] == "rnn" else r["bound"].upper()
            lines.append(
                f"| {r['config']} (seed {r['seed']}) | {trained} | {bound.upper()} | "
                f"{v['per_utterance']:.0f}{se} | {v['per_frame']:.2f} | {r['steps']} | "
                f"{r['train_cpu_s']:.0f} |"
            )
    return "\n".join(lines)


def across_seeds(rows: list[dict]) -> dict:
    """Per config and test bound: mean and sample standard deviation across seeds (nats per frame and
    per utterance), the seeds, the mean training CPU seconds."""
    out: dict[str, dict] = {}
    for name in dict.fromkeys(r["config"] for r in rows):
        runs = [r for r in rows if r["config"] == name]
        cpu = statistics.fmean(r["train_cpu_s"] for r in runs)
        seeds = [r["seed"] for r in runs]
        entry = {"seeds": seeds, "train_cpu_s": cpu, "steps": runs[0]["steps"], "bounds": {}}
        for bound in runs[0]["bounds"]:
            for unit in ("per_frame", "per_utterance"):
                values = [r["bounds"][bound][unit] for r in runs]
                sd = statistics.stdev(values) if len(values) > 1 else None
                entry["bounds"].setdefault(bound, {})[unit] = {"mean": statistics.fmean(values), "std": sd,
                                                               "values": values}  # fmt: skip
        out[name] = entry
    return out


def seed_table(summary: dict) -> str:
    """Markdown: one row per config, mean ± std across seeds of nats per frame for every test bound."""
    lines = [
        "| model | seeds | exact | ELBO | IWAE | FIVO | steps | train CPU s (mean) |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, e in summary.items():
        cells = []
        for bound in ("exact", "elbo", "iwae", "fivo"):
            v = e["bounds"].get(bound, {}).get("per_frame")
            cells.append("" if v is None else f"{v['mean']:.1f} ± {v['std']:.1f}" if v["std"] is not None
                         else f"{v['mean']:.1f}")  # fmt: skip
        seeds = ",".join(str(s) for s in e["seeds"])
        lines.append(f"| {name} | {seeds} | {' | '.join(cells)} | {e['steps']} | {e['train_cpu_s']:.0f} |")
    return "\n".join(lines)


def write_samples(est, data, name: str, out_dir: Path, test: list[torch.Tensor]) -> list[str]:
    from bbvae.cli.audio_files import write_audio_samples
    from bbvae.data.batching import collate_sequences

    torch.manual_seed(0)
    prefix = [test[0][:40]]  # 0.5 s of the first test utterance
    samples, _ = est.sample_continuations(prefix, n_samples=2, length=120)
    batch = collate_sequences(prefix)
    folder = out_dir / f"samples_{name}"
    folder.mkdir(parents=True, exist_ok=True)
    paths = write_audio_samples(folder, data, [test[0]], batch.x, batch.lengths, samples)
    return [str(p) for p in paths]


def main(argv: list[str] | None = None) -> int:
    from bbvae.data import load_audio

    args = build_parser().parse_args(argv)
    if args.summarise:
        rows = [json.loads(f.read_text()) for f in sorted(args.out_dir.glob("*_seed*.json"))]
        order = {name: i for i, name in enumerate(CONFIGS)}
        rows.sort(key=lambda r: (order.get(r["config"], len(order)), r["seed"]))
        print(seed_table(across_seeds(rows)))
        return 0
    torch.set_num_threads(args.threads)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.process_time()
    data = load_audio(args.data_dir, frame_size=args.frame_size, chunk_length=args.chunk_length)
    test = data.utterances("test")[: args.eval_utterances]
    load_cpu = time.process_time() - t0
    rows, best = [], None
    for name in args.configs:
        for seed in args.seeds:
            result, est = run_one(name, seed, data, test, args)
            rows.append(result)
            (args.out_dir / f"{name}_seed{seed}.json").write_text(json.dumps(result, indent=2) + "\n")
            b = result["bounds"]
            print(f"{name} seed {seed}: " + ", ".join(f"{k} {v['per_frame']:.2f}" for k, v in b.items())
                  + f" nats/frame ({result['train_cpu_s']:.0f} s CPU)", flush=True)  # fmt: skip
            if result["model"] != "rnn" and (best is None or b["fivo"]["per_frame"] > best[0]):
                best = (b["fivo"]["per_frame"], name, est)
    summary = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "threads": args.threads,
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "data": repr(data),
        "load_cpu_s": round(load_cpu, 2),
        "total_cpu_s": round(time.process_time() - t0, 2),
        "runs": rows,
        "across_seeds": across_seeds(rows),
    }
    if args.samples and best is not None:
        summary["samples"] = write_samples(best[2], data, best[1], args.out_dir, test)
    (args.out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(table(rows))
    if len(args.seeds) > 1:
        print(seed_table(summary["across_seeds"]))
    print(f"total CPU {summary['total_cpu_s']:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
