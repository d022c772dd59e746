"""The FIVO paper's piano-roll protocol: train with validation-based model selection, score on test.

One run = one (data set, model, bound, settings). Training goes through the public estimator
(:class:`bbvae.sequential.SequenceModel`): the validation bound every ``--eval-every`` steps with a
fixed evaluation seed, ``best.pt`` kept, early stopping after ``--patience`` validations without
gain, and a CPU-time budget (``--cpu-minutes``, process CPU time summed over resumptions: on a
shared machine wall-clock time says little). A run is resumable: run the same command again and it
continues from its checkpoint (``--resume`` is implied), so a long training can span sittings.

When training has stopped (early stopping, ``--max-steps`` or the budget), the best-validation model
is scored on the test split with the same code a user calls (``SequenceModel.score``): ELBO, IWAE
and FIVO with ``K`` particles (``--num-particles``, 4 as in the paper; ``--eval-repeats``
independent evaluations, mean and standard error), and a tight estimate of log p(x) (FIVO with
``--tight-particles``, 256 by default), all in nats per time step (total bound over total steps, as
the FIVO reference). The run directory holds ``train/`` (the trainer's checkpoints and log),
``curve.jsonl`` (step, epoch, CPU and wall minutes, training and validation bound) and
``result.json`` (settings, costs, selection and test numbers). Never select on test: ``result.json``
records the test numbers of the model that validation chose.

    python -m benchmarks.bench_pianoroll --dataset jsb --bound fivo --latent-size 32 \\
        --dropout 0.1 --ema-decay 0.999 --cpu-minutes 60 --run-dir benchmarks/results/pianoroll/jsb-fivo

Data: ``--data-dir`` (default ``../shared/data/pianoroll``) holds ``jsb_chorales.pkl``,
``nottingham.pkl``, ``musedata.pkl`` and ``piano_midi.pkl`` (the Boulanger-Lewandowski sets); JSB
falls back to the copy embedded in bbvae.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import statistics
import time
from pathlib import Path

import torch

DATASETS = {
    "jsb": "jsb_chorales.pkl",
    "nottingham": "nottingham.pkl",
    "musedata": "musedata.pkl",
    "piano_midi": "piano_midi.pkl",
}
BOUNDS = ("elbo", "iwae", "fivo")
DEFAULT_DATA_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "pianoroll"
#: Estimator settings a resumed run must share with the run that wrote its checkpoint.
MODEL_KEYS = ("model", "bound", "latent_size", "hidden_size", "dropout", "num_particles", "batch_size")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", choices=sorted(DATASETS), default="jsb")
    p.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    p.add_argument("--model", choices=("vrnn", "srnn"), default="vrnn")
    p.add_argument("--bound", choices=BOUNDS, default="fivo")
    p.add_argument("--latent-size", type=int, default=64)
    p.add_argument("--hidden-size", type=int, default=None)
    p.add_argument("--dropout", type=float, default=0.0)
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--learning-rate", type=float, default=3e-4)
    p.add_argument("--lr-schedule", choices=("constant", "plateau", "cosine"), default="constant")
    p.add_argument("--lr-patience", type=int, default=5, help="plateau: validations without gain per cut")
    p.add_argument("--lr-factor", type=float, default=0.5, help="plateau: the cut")
    p.add_argument("--warmup-steps", type=int, default=0)
    p.add_argument("--ema-decay", type=float, default=None)
    p.add_argument("--clip-grad-norm", type=float, default=None)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--num-particles", type=int, default=4, help="K in training and in the K-particle scores")
    p.add_argument("--max-length", type=int, default=None, help="cut training sequences to N steps")
    p.add_argument(
        "--length-bucketing", type=int, default=None, help="batch similar lengths (pools of N batches)"
    )
    p.add_argument("--eval-every", type=int, default=500)
    p.add_argument("--patience", type=int, default=20, help="validations without gain before stopping")
    p.add_argument("--max-steps", type=int, default=1_000_000)
    p.add_argument("--cpu-minutes", type=float, default=60.0, help="training budget in process CPU minutes")
    p.add_argument("--eval-repeats", type=int, default=3, help="independent test evaluations per bound")
    p.add_argument("--tight-particles", type=int, default=256, help="particles of the tight FIVO estimate")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--run-dir", type=Path, required=True)
    p.add_argument("--score-only", action="store_true", help="score the best checkpoint, do not train")
    p.add_argument("--figures-only", action="store_true", help="only draw the run's pictures")
    return p


def load_data(args):
    from bbvae.data import PianoRollData

    path = args.data_dir / DATASETS[args.dataset]
    if path.is_file():
        return PianoRollData.load(path), str(path)
    if args.dataset == "jsb":
        return PianoRollData.load(), "embedded JSB chorales"
    raise SystemExit(f"bench_pianoroll: no {DATASETS[args.dataset]} in --data-dir {args.data_dir}")


def estimator(args, logdir: Path | None, callbacks=None, max_length=None):
    from bbvae.sequential import SequenceModel

    plateau = args.lr_schedule == "plateau"
    kwargs = {"factor": args.lr_factor, "patience": args.lr_patience} if plateau else None
    return SequenceModel(
        model=args.model,
        bound=args.bound,
        latent_size=args.latent_size,
        hidden_size=args.hidden_size,
        n_samples=args.num_particles,
        learning_rate=args.learning_rate,
        batch_size=args.batch_size,
        max_steps=args.max_steps,
        clip_grad_norm=args.clip_grad_norm,
        weight_decay=args.weight_decay,
        lr_schedule=args.lr_schedule,
        lr_schedule_kwargs=kwargs,
        warmup_steps=args.warmup_steps,
        ema_decay=args.ema_decay,
        dropout=args.dropout,
        max_length=max_length,
        length_bucketing=args.length_bucketing,
        eval_bound=args.bound,
        eval_every=args.eval_every,
        patience=args.patience,
        restore_best=True,
        checkpoint_every=args.eval_every,
        log_every=min(100, args.eval_every),
        logdir=None if logdir is None else str(logdir),
        callbacks=callbacks,
        random_state=args.seed,
    )


class Budget:
    """A Trainer callback: CPU-time accounting over resumptions, the learning curve, the budget.

    ``cpu.json`` holds the CPU seconds spent by earlier sittings up to the step of the checkpoint
    they left; ``curve.jsonl`` one row per logging point (rows past the resumed step are dropped).
    """

    def __init__(self, run_dir: Path, cpu_minutes: float) -> None:
        from bbvae.training import Callback

        self.run_dir, self.limit = run_dir, 60.0 * cpu_minutes
        self.curve_path, self.cpu_path = run_dir / "curve.jsonl", run_dir / "cpu.json"
        budget = self

        class _Callback(Callback):
            def on_fit_start(self, trainer):
                budget.start(trainer)

            def on_log(self, trainer, record):
                budget.log(trainer, record)

            def on_step_end(self, trainer, step):
                if step % 25 == 0 and budget.cpu_seconds() >= budget.limit:
                    trainer.stop_training = True

        self.callback = _Callback()

    def start(self, trainer) -> None:
        saved = json.loads(self.cpu_path.read_text()) if self.cpu_path.is_file() else {"marks": []}
        # CPU spent up to the resumed step (the marks written at checkpoints).
        marks = [m for m in saved["marks"] if m["step"] <= trainer.n_iter_]
        self.marks = marks
        self.base = marks[-1]["cpu_seconds"] if marks else 0.0
        self.t0 = time.process_time()
        rows = []
        if self.curve_path.is_file():
            rows = [json.loads(line) for line in self.curve_path.read_text().splitlines() if line.strip()]
        rows = [r for r in rows if r["step"] <= trainer.n_iter_]
        self.curve_path.write_text("".join(json.dumps(r) + "\n" for r in rows))

    def cpu_seconds(self) -> float:
        return self.base + time.process_time() - self.t0

    def log(self, trainer, record) -> None:
        row = {
            "step": record["step"],
            "epoch": record["epoch"],
            "cpu_minutes": self.cpu_seconds() / 60.0,
            "wall_minutes": record["time"] / 60.0,
            "train_bound": None if record["loss"] is None else -record["loss"],
            "valid_bound": record["valid_bound"],
            "lr": record["lr"],
        }
        with open(self.curve_path, "a") as f:
            f.write(json.dumps(row) + "\n")
        if record["valid_bound"] is not None:  # checkpoints are written at validations
            self.marks.append({"step": record["step"], "cpu_seconds": self.cpu_seconds()})
            self.cpu_path.write_text(json.dumps({"marks": self.marks}))


def train(args, data, run_dir: Path) -> dict:
    budget = Budget(run_dir, args.cpu_minutes)
    logdir = run_dir / "train"
    est = estimator(args, logdir, callbacks=[budget.callback], max_length=args.max_length)
    resume = "auto"
    est.fit(data, resume=resume)
    return {
        "stop_reason": "cpu_budget" if est.stop_reason_ == "callback" else est.stop_reason_,
        "steps": est.n_iter_,
        "epochs": est.n_epochs_,
        "cpu_minutes": budget.cpu_seconds() / 60.0,
        "best_step": est.best_step_,
        "best_valid": est.best_valid_,
    }


def score(args, data, run_dir: Path) -> dict:
    """Test (and validation) bounds of the best-validation checkpoint, through SequenceModel.score."""
    best = run_dir / "train" / "best.pt"
    est = estimator(args, None).load(data, best)  # full-length sequences: max_length=None
    out = {}
    for split in ("valid", "test"):
        for bound in BOUNDS:
            est.set_params(eval_bound=bound, n_samples_eval=args.num_particles)
            values = [est.score(data, split=split, random_state=1000 + r) for r in range(args.eval_repeats)]
            se = statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else float("nan")
            out[f"{split}_{bound}"] = {"mean": statistics.fmean(values), "se": se, "values": values}
    est.set_params(eval_bound="fivo", n_samples_eval=args.tight_particles)
    t0 = time.perf_counter()
    out["test_fivo_tight"] = {
        "particles": args.tight_particles,
        "value": est.score(data, split="test", random_state=7),
        "seconds": time.perf_counter() - t0,
    }
    return out


def figures(args, data, run_dir: Path) -> list[Path]:
    """``curve.png`` (training and validation bound against steps and CPU minutes) and
    ``pianorolls.png`` (continuations of test chorales next to the truth, and unconditional samples)
    of the best-validation model; needs matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("bench_pianoroll: no matplotlib, no pictures (pip install 'bbvae[plots]')")
        return []
    from bbvae.plots import plot_pianorolls

    rows = [json.loads(line) for line in (run_dir / "curve.jsonl").read_text().splitlines() if line.strip()]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for ax, key, label in ((axes[0], "step", "optimizer step"), (axes[1], "cpu_minutes", "CPU minutes")):
        train = [(r[key], r["train_bound"]) for r in rows if r["train_bound"] is not None]
        valid = [(r[key], r["valid_bound"]) for r in rows if r["valid_bound"] is not None]
        ax.plot(*zip(*train), color="C0", alpha=0.6, label="training (batch mean, per step)")
        ax.plot(*zip(*valid), "o-", color="C1", markersize=3, label="validation")
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(f"{args.bound.upper()} bound (nats per time step)")
    axes[0].set_ylim(bottom=max(-12.0, min(v for _, v in valid) - 0.5))
    axes[0].legend(loc="lower right")
    fig.suptitle(
        f"{args.dataset}: {args.model.upper()} trained with {args.bound.upper()} (K={args.num_particles})"
    )
    fig.tight_layout()
    curve = run_dir / "curve.png"
    fig.savefig(curve, dpi=100)
    plt.close(fig)

    est = estimator(args, None).load(data, run_dir / "train" / "best.pt")
    torch.manual_seed(0)
    test = [torch.as_tensor(roll, dtype=torch.float32) for roll in data.split("test")[:3]]
    prefix, length = 16, 48
    continued, _ = est.sample_continuations([t[:prefix] for t in test], 1, length)  # [3, 1, length, 88]
    unconditional, _ = est.sample(2, prefix + length)
    panels = []
    for i, roll in enumerate(test):
        panels.append((f"test {i}", roll[: prefix + length].numpy(), prefix))
        panels.append((f"model {i}", torch.cat([roll[:prefix], continued[i, 0]]).numpy(), prefix))
    panels += [(f"sample {i}", unconditional[i].numpy(), 0) for i in range(2)]
    rolls = plot_pianorolls(
        panels,
        run_dir / "pianorolls.png",
        title=f"{args.dataset} {args.model}-{args.bound}: test prefixes continued after the line; samples",
    )
    return [curve, rolls]


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    run_dir = args.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    settings_path = run_dir / "settings.json"
    if settings_path.is_file():
        saved = json.loads(settings_path.read_text())
        changed = [k for k in MODEL_KEYS if saved.get(k) != settings.get(k)]
        if changed:
            raise SystemExit(f"bench_pianoroll: {run_dir} was trained with other {', '.join(changed)}")
    settings_path.write_text(json.dumps(settings, indent=1, sort_keys=True))
    data, source = load_data(args)
    if args.figures_only:
        print(figures(args, data, run_dir))
        return 0
    result = {"settings": settings, "data": source}
    if not args.score_only:
        result["training"] = train(args, data, run_dir)
        print(json.dumps(result["training"]), flush=True)
    result["scores"] = score(args, data, run_dir)
    result["machine"] = {
        "platform": platform.platform(),
        "processor": platform.processor(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "threads": args.threads,
    }
    result["date"] = datetime.date.today().isoformat()
    (run_dir / "result.json").write_text(json.dumps(result, indent=1))
    figures(args, data, run_dir)
    s = result["scores"]
    print(
        f"{args.dataset} {args.model}-{args.bound}: test ELBO {s['test_elbo']['mean']:.3f} IWAE "
        f"{s['test_iwae']['mean']:.3f} FIVO {s['test_fivo']['mean']:.3f} (K={args.num_particles}); FIVO "
        f"K={args.tight_particles} {s['test_fivo_tight']['value']:.3f} nats/step",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
