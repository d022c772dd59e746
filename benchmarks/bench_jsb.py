"""VRNN on JSB chorales trained with ELBO, IWAE and FIVO (K = 4) for a fixed wall-clock budget each.

The FIVO paper's piano-roll setup (Maddison et al. 2017; conventions of its reference code, see
``../shared/REFERENCES.md``): VRNN with latent, LSTM and fully-connected sizes 64, inputs centred
by the training mean, Bernoulli output bias logit(train mean), batch 4, 4 particles, Adam, the
training loss the batch mean of bound / length. Each model is then scored on the test split with
all three bounds (K = 4, :func:`bbvae.sequential.evaluate`, nats per time step) -- the paper
reports the diagonal (each model with the bound it was trained with), which is highlighted.
The paper's models were trained to convergence; a budget of minutes shows where each bound is
after that long, not the published optimum.

One process, the three bounds one after another (``3 x --minutes`` in all)::

    python benchmarks/bench_jsb.py --minutes 15 --out jsb.json

Three processes in parallel, then one table::

    python benchmarks/bench_jsb.py --bounds elbo --threads 1 --out elbo.json &
    python benchmarks/bench_jsb.py --bounds iwae --threads 1 --out iwae.json &
    python benchmarks/bench_jsb.py --bounds fivo --threads 1 --out fivo.json &
    wait
    python benchmarks/bench_jsb.py --merge elbo.json iwae.json fivo.json

Other options: ``--device cuda``, ``--seed``, ``--learning-rate`` (default 3e-4; the reference's
default is 2e-4), ``--max-steps`` (stop earlier by steps), ``--eval-repeats`` (test bounds
averaged over this many independent evaluations), ``--dataset-path`` (another piano-roll pickle).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

BOUNDS = ("elbo", "iwae", "fivo")
#: FIVO paper (Maddison et al. 2017), Table 1: VRNN on JSB chorales, 4 particles, test nats/step,
#: each model trained with and evaluated by the same bound.
PAPER = {"elbo": -8.60, "iwae": -7.86, "fivo": -6.90}
#: The FIVO reference README: the untrained model on the JSB test split.
REFERENCE_UNTRAINED = {"elbo": -12.20, "iwae": -11.98, "fivo": -11.58}
#: Settings that must agree between merged result files.
COMPARABLE = (
    "minutes",
    "max_steps",
    "learning_rate",
    "batch_size",
    "latent_size",
    "num_particles",
    "dataset",
)


def parse_bounds(text: str) -> list[str]:
    bounds = [b.strip().lower() for b in text.split(",") if b.strip()]
    bad = [b for b in bounds if b not in BOUNDS]
    if not bounds or bad:
        raise argparse.ArgumentTypeError(
            f"expected a comma-separated subset of {','.join(BOUNDS)}, got {text!r}"
        )
    return list(dict.fromkeys(bounds))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--bounds", type=parse_bounds, default=list(BOUNDS), help="e.g. elbo,iwae,fivo (default all)"
    )
    p.add_argument("--minutes", type=float, default=15.0, help="training wall-clock budget per bound")
    p.add_argument("--max-steps", type=int, default=None, help="also stop after this many steps")
    p.add_argument("--learning-rate", type=float, default=3e-4, help="Adam (reference default 2e-4)")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--latent-size", type=int, default=64)
    p.add_argument("--num-particles", type=int, default=4, help="K in training and evaluation")
    p.add_argument("--eval-repeats", type=int, default=3, help="independent test evaluations averaged")
    p.add_argument("--dataset-path", default=None, help="piano-roll pickle (default: embedded JSB chorales)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads per process (default 1)")
    p.add_argument("--device", default="cpu", help="torch device: cpu, cuda, cuda:1, ...")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--log-every", type=int, default=500, help="steps between progress lines")
    p.add_argument("--out", default=None, help="write the results as JSON here")
    p.add_argument(
        "--merge", nargs="+", metavar="JSON", default=None, help="merge result files into one table"
    )
    return p


# ============================================================================ training
def run(args: argparse.Namespace) -> dict:
    import torch

    from bbvae.data import PianoRollData
    from bbvae.losses import ELBO, FIVO, IWAE, PerStep
    from bbvae.sequential import VRNN, evaluate
    from bbvae.training import Callback, Trainer

    class Budget(Callback):
        """Stops after ``seconds`` of training; prints a progress line at every log row."""

        def __init__(self, name: str, seconds: float) -> None:
            self.name, self.seconds = name, seconds

        def on_fit_start(self, trainer) -> None:
            self.start = time.perf_counter()

        def on_step_end(self, trainer, step: int) -> None:
            if time.perf_counter() - self.start >= self.seconds:
                trainer.stop_training = True

        def on_log(self, trainer, record) -> None:
            if record["loss"] is None:
                return
            elapsed = time.perf_counter() - self.start
            print(
                f"[{self.name}] step {record['step']:>6}  {elapsed:7.1f} s  "
                f"{record['step'] / elapsed:5.2f} steps/s  training bound {-record['loss']:8.3f}",
                flush=True,
            )

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    data = PianoRollData.load(args.dataset_path)
    print(data, flush=True)
    mean = torch.as_tensor(data.train_mean, dtype=torch.float32)
    test = data.full_batch("test", device=device)
    n_test_steps = int(test.lengths.sum())

    def new_model():
        torch.manual_seed(args.seed)  # every bound starts from the same initialisation
        model = VRNN(88, latent_size=args.latent_size, x_mean=mean)
        model.init_output_bias(mean)
        return model.to(device)

    def score(model) -> dict:
        runs = []
        t0 = time.perf_counter()
        for r in range(args.eval_repeats):
            torch.manual_seed(args.seed + 1 + r)
            report = evaluate(model, test.x, test.lengths, bounds=BOUNDS, n_samples=args.num_particles)
            runs.append({b: report[b]["per_step"] for b in BOUNDS})
        out = {b: statistics.fmean(run[b] for run in runs) for b in BOUNDS}
        spread = {b: statistics.stdev([run[b] for run in runs]) if len(runs) > 1 else None for b in BOUNDS}
        return {"bounds": out, "repeat_std": spread, "seconds": time.perf_counter() - t0}

    untrained = score(new_model())
    print("untrained test bounds (nats/step):", fmt_bounds(untrained["bounds"]), flush=True)
    results = {}
    for bound in args.bounds:
        model = new_model()
        q, p, k = model.inf_net, model.gen_model, args.num_particles
        if bound == "fivo":
            loss = FIVO(q, p, n_particles=k, normalize="length")
        else:
            loss = PerStep((IWAE if bound == "iwae" else ELBO)(q, p, n_samples=k))
        trainer = Trainer(
            loss,
            learning_rate=args.learning_rate,
            batch_size=args.batch_size,
            max_steps=args.max_steps if args.max_steps is not None else 10**12,
            log_every=args.log_every,
            checkpoint_every=10**12,  # no in-memory snapshots inside the timed loop
            seed=args.seed,
            progress=False,
            callbacks=[Budget(bound, 60.0 * args.minutes)],
        )
        wall, cpu = time.perf_counter(), time.process_time()
        trainer.fit(data.dataset("train", inputs=False))
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        history = trainer.loss_history_
        tail = history[-min(len(history), 100) :]
        evaluation = score(model)
        results[bound] = {
            "steps": trainer.n_iter_,
            "epochs": trainer.n_iter_ * args.batch_size / len(data.train),
            "train_seconds": wall,
            "cpu_seconds": cpu,
            "steps_per_s": trainer.n_iter_ / wall,
            "train_bound_last100": -sum(tail) / len(tail),
            "test": evaluation["bounds"],
            "test_repeat_std": evaluation["repeat_std"],
            "eval_seconds": evaluation["seconds"],
        }
        print(
            f"[{bound}] done: {trainer.n_iter_} steps in {wall:.0f} s ({trainer.n_iter_ / wall:.2f} steps/s, "
            f"CPU {cpu / wall:.2f} cores); test {fmt_bounds(evaluation['bounds'])}",
            flush=True,
        )
    meta = {
        "minutes": args.minutes,
        "max_steps": args.max_steps,
        "learning_rate": args.learning_rate,
        "batch_size": args.batch_size,
        "latent_size": args.latent_size,
        "num_particles": args.num_particles,
        "eval_repeats": args.eval_repeats,
        "dataset": args.dataset_path or "embedded JSB chorales",
        "test_sequences": int(test.x.shape[0]),
        "test_steps": n_test_steps,
        "seed": args.seed,
        "threads": args.threads,
        "device": str(device) + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "command": " ".join(sys.argv),
    }
    return {"meta": meta, "untrained": untrained["bounds"], "runs": results}


def fmt_bounds(bounds: dict) -> str:
    return "  ".join(f"{b.upper()} {bounds[b]:.3f}" for b in BOUNDS)


# ============================================================================ tables
def merge(payloads: list[dict], names: list[str]) -> dict:
    """Combine result files: the runs of every file, the first file's untrained bounds."""
    merged = {
        "meta": dict(payloads[0]["meta"]),
        "untrained": payloads[0]["untrained"],
        "runs": {},
        "sources": {},
    }
    for payload, name in zip(payloads, names):
        for key in COMPARABLE:
            if payload["meta"].get(key) != merged["meta"].get(key):
                print(
                    f"warning: {name} has {key}={payload['meta'].get(key)!r}, but {names[0]} has "
                    f"{merged['meta'].get(key)!r}; the runs are not comparable",
                    file=sys.stderr,
                )
        for bound, result in payload["runs"].items():
            if bound in merged["runs"]:
                print(
                    f"warning: {bound} appears in {merged['sources'][bound]} and {name}; using {name}",
                    file=sys.stderr,
                )
            merged["runs"][bound] = result
            merged["sources"][bound] = name
            merged["runs"][bound]["device"] = payload["meta"].get("device")
            merged["runs"][bound]["threads"] = payload["meta"].get("threads")
    merged["runs"] = {b: merged["runs"][b] for b in BOUNDS if b in merged["runs"]}
    return merged


def markdown(results: dict) -> str:
    meta, runs = results["meta"], results["runs"]
    limit = f"{meta['minutes']:g} min" + (f" or {meta['max_steps']} steps" if meta.get("max_steps") else "")
    lines = [
        f"VRNN on {meta['dataset']}, test split ({meta['test_sequences']} sequences, "
        f"{meta['test_steps']:,} steps): bounds in nats per time step, K = {meta['num_particles']}, "
        f"mean of {meta['eval_repeats']} evaluation(s). Training: {limit} per bound, "
        f"batch {meta['batch_size']}, latent {meta['latent_size']}, Adam {meta['learning_rate']:g}, "
        f"torch {meta['torch']}. **Bold**: each model scored with its own bound, as the FIVO paper reports.",
        "",
        "| trained with | test ELBO | test IWAE | test FIVO | steps | epochs | steps/s | CPU cores used "
        "| device |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    u = results["untrained"]
    lines.append(f"| untrained | {u['elbo']:.2f} | {u['iwae']:.2f} | {u['fivo']:.2f} | 0 | | | | |")
    for bound, r in runs.items():
        cells = []
        for b in BOUNDS:
            text = f"{r['test'][b]:.2f}"
            cells.append(f"**{text}**" if b == bound else text)
        device = r.get("device", meta.get("device"))
        threads = r.get("threads", meta.get("threads"))
        lines.append(
            f"| {bound.upper()} | {' | '.join(cells)} | {r['steps']:,} | {r['epochs']:.1f} | "
            f"{r['steps_per_s']:.2f} | {r['cpu_seconds'] / r['train_seconds']:.2f} | "
            f"{device}, {threads} thread(s) |"
        )
    lines.append(
        f"| FIVO paper, converged (own bound) | **{PAPER['elbo']:.2f}** | **{PAPER['iwae']:.2f}** | "
        f"**{PAPER['fivo']:.2f}** | | | | | |"
    )
    lines.append(
        "| FIVO reference, untrained | "
        + " | ".join(f"{REFERENCE_UNTRAINED[b]:.2f}" for b in BOUNDS)
        + " | 0 | | | | |"
    )
    if runs:
        diag = ", ".join(f"{b.upper()} {r['test'][b]:.2f} (paper {PAPER[b]:.2f})" for b, r in runs.items())
        lines += ["", f"Diagonal (each model with its own bound): {diag}."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    if args.merge:
        payloads = [json.loads(Path(path).read_text()) for path in args.merge]
        results = merge(payloads, args.merge)
    else:
        if not (args.minutes > 0 and math.isfinite(args.minutes)):
            raise SystemExit(f"--minutes: expected a positive number, got {args.minutes}")
        results = run(args)
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
        print(f"wrote {args.out}")
    print()
    print(markdown(results))
    return results


if __name__ == "__main__":
    main()
