"""A regularisation sweep on JSB chorales, selected on validation only, then scored on test.

Each configuration is one :mod:`benchmarks.bench_pianoroll` run (VRNN, FIVO, K = 4, batch 4) in its
own process and run directory under ``--out``, with the same CPU budget (``--cpu-minutes``):
finished runs (``result.json`` present) are skipped and interrupted ones resume, so the sweep can
span sittings. The design varies one factor at a time around a base setting (a full factorial grid
of sizes x dropout x weight decay x averaging x schedule would cost dozens of CPU-hours):

* base: latent/hidden size 32, no dropout, no weight decay, weight averaging (EMA 0.999),
  learning rate 3e-4 halved when the validation bound stalls (plateau);
* sizes 16 and 64; dropout 0.1 and 0.3; weight decay 0.1 and 0.3; no EMA; a constant learning rate;
  and size 64 with dropout 0.2; and, for the time to a bound, batch 16 at learning rate 6e-4.

Weight decay is AdamW's decoupled decay, which shrinks the weights by ``lr * weight_decay`` per step:
at lr 3e-4 a decay of 1e-4 shrinks them by 3e-8 per step (1e-3 over 30,000 steps), i.e. not at all,
so the sweep's value is 0.1 (a factor e^-0.9 over 30,000 steps without the gradient's pull).

The table (``sweep.md``, ``sweep.json``) lists, per configuration, the CPU minutes, steps, the
selected (best-validation) step and bound, and the test ELBO / IWAE / FIVO of that checkpoint. The
selected configuration is the one with the best **validation** FIVO bound; its test numbers are
reported, never used to choose. ``--plot`` writes the validation curves to ``sweep.png``
(matplotlib).

    python -m benchmarks.sweep_jsb --out benchmarks/results/pianoroll/sweep --cpu-minutes 60
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

BASE = {
    "--latent-size": "32",
    "--ema-decay": "0.999",
    "--lr-schedule": "plateau",
    "--learning-rate": "3e-4",
}
VARIANTS = {
    "base": {},
    "z16": {"--latent-size": "16"},
    "z64": {"--latent-size": "64"},
    "drop0.1": {"--dropout": "0.1"},
    "drop0.3": {"--dropout": "0.3"},
    "wd0.1": {"--weight-decay": "0.1"},
    "wd0.3": {"--weight-decay": "0.3"},
    "no-ema": {"--ema-decay": None},
    "constant-lr": {"--lr-schedule": "constant"},
    "z64-drop0.2": {"--latent-size": "64", "--dropout": "0.2"},
    # time to bound: 4x the sequences per step at about 1.4x the CPU time of a batch of 4
    "b16": {"--batch-size": "16", "--learning-rate": "6e-4"},
}


def command(name: str, out: Path, cpu_minutes: float, extra: list[str]) -> list[str]:
    settings = {**BASE, **VARIANTS[name]}
    args = [sys.executable, "-m", "benchmarks.bench_pianoroll", "--dataset", "jsb", "--bound", "fivo"]
    for flag, value in settings.items():
        if value is not None:
            args += [flag, value]
    return args + ["--cpu-minutes", str(cpu_minutes), "--run-dir", str(out / name), *extra]


def table(out: Path, names: list[str]) -> tuple[list[dict], str]:
    rows = []
    for name in names:
        path = out / name / "result.json"
        if not path.is_file():
            continue
        r = json.loads(path.read_text())
        t, s = r["training"], r["scores"]
        rows.append(
            {
                "name": name,
                "cpu_minutes": t["cpu_minutes"],
                "steps": t["steps"],
                "stop": t["stop_reason"],
                "best_step": t["best_step"],
                "valid_fivo": s["valid_fivo"]["mean"],
                "test_elbo": s["test_elbo"]["mean"],
                "test_iwae": s["test_iwae"]["mean"],
                "test_fivo": s["test_fivo"]["mean"],
                "test_fivo_se": s["test_fivo"]["se"],
                "test_fivo_tight": s["test_fivo_tight"]["value"],
            }
        )
    chosen = max(rows, key=lambda row: row["valid_fivo"])["name"] if rows else None
    lines = [
        "| config | CPU min | steps (stop) | chosen step | valid FIVO | test ELBO | test IWAE | test FIVO "
        "| test FIVO K=256 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        mark = " **(selected)**" if row["name"] == chosen else ""
        lines.append(
            f"| {row['name']}{mark} | {row['cpu_minutes']:.0f} | {row['steps']} ({row['stop']}) | "
            f"{row['best_step']} | {row['valid_fivo']:.3f} | {row['test_elbo']:.3f} | "
            f"{row['test_iwae']:.3f} | {row['test_fivo']:.3f} +- {row['test_fivo_se']:.3f} | "
            f"{row['test_fivo_tight']:.3f} |"
        )
    return rows, "\n".join(lines) + "\n"


def plot(out: Path, names: list[str]) -> Path:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise SystemExit("sweep_jsb --plot needs matplotlib: pip install 'bbvae[plots]'") from exc
    fig, ax = plt.subplots(figsize=(8, 5))
    for name in names:
        path = out / name / "curve.jsonl"
        if not path.is_file():
            continue
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        rows = [r for r in rows if r["valid_bound"] is not None]
        ax.plot([r["cpu_minutes"] for r in rows], [r["valid_bound"] for r in rows], label=name)
    ax.set_xlabel("CPU minutes (one thread)")
    ax.set_ylabel("validation FIVO bound (nats/step)")
    ax.set_title("JSB chorales, VRNN trained with FIVO (K=4): validation curves")
    ax.set_ylim(bottom=-9.0)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    path = out / "sweep.png"
    fig.savefig(path, dpi=110, bbox_inches="tight")
    return path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--cpu-minutes", type=float, default=60.0)
    p.add_argument("--only", nargs="*", choices=sorted(VARIANTS), help="run only these configurations")
    p.add_argument("--table-only", action="store_true", help="aggregate finished runs, train nothing")
    p.add_argument("--plot", action="store_true")
    args, extra = p.parse_known_args(argv)
    names = args.only or list(VARIANTS)
    args.out.mkdir(parents=True, exist_ok=True)
    if not args.table_only:
        for name in names:
            if (args.out / name / "result.json").is_file():
                continue
            print(f"sweep_jsb: {name}", flush=True)
            subprocess.run(command(name, args.out, args.cpu_minutes, extra), check=True)
    rows, text = table(args.out, list(VARIANTS))
    (args.out / "sweep.json").write_text(json.dumps(rows, indent=1))
    (args.out / "sweep.md").write_text(text)
    print(text)
    if args.plot:
        print(f"curves: {plot(args.out, list(VARIANTS))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
