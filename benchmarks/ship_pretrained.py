"""Ship a finished piano-roll run as a pretrained model of the package.

Reads a :mod:`benchmarks.bench_pianoroll` run directory (``settings.json``, ``result.json`` and the
best-validation checkpoint ``train/best.pt``) and writes ``NAME.pt`` and ``NAME.json`` with
:func:`bbvae.pretrained.save`. The metadata's test bounds are the run's own (``result.json``: the
best-validation checkpoint scored by ``SequenceModel.score`` with K particles over independent
evaluation seeds), so ``tests/test_pretrained.py`` checks that the shipped weights reproduce them.

    python -m benchmarks.ship_pretrained --run-dir benchmarks/results/pianoroll/jsb-vrnn-fivo \\
        --name jsb-vrnn-fivo --out bbvae/pretrained
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from bbvae import pretrained
from benchmarks import bench_pianoroll


def metadata(run_dir: Path, result: dict) -> dict:
    settings, training, scores = result["settings"], result["training"], result["scores"]
    k = settings["num_particles"]
    test = {
        bound: {
            "mean": scores[f"test_{bound}"]["mean"],
            "se": scores[f"test_{bound}"]["se"],
            "n_samples": k,
            "seeds": len(scores[f"test_{bound}"]["values"]),
        }
        for bound in bench_pianoroll.BOUNDS
    }
    test["fivo_tight"] = {
        "value": scores["test_fivo_tight"]["value"],
        "n_samples": scores["test_fivo_tight"]["particles"],
    }
    return {
        "data": settings["dataset"],
        "description": (
            f"{settings['model'].upper()} (latent and hidden size {settings['latent_size']}) trained "
            f"with {settings['bound'].upper()} (K={k}) on the JSB chorales, selected on validation"
        ),
        "units": "nats per time step (total bound over total steps of the test split)",
        "training": {
            "steps": training["steps"],
            "epochs": training["epochs"],
            "best_step": training["best_step"],
            "best_valid": training["best_valid"],
            "cpu_minutes": round(training["cpu_minutes"], 1),
            "stop_reason": training["stop_reason"],
            "settings": {
                key: settings[key]
                for key in (
                    "learning_rate",
                    "lr_schedule",
                    "ema_decay",
                    "dropout",
                    "weight_decay",
                    "batch_size",
                    "seed",
                )
            },
            "date": result["date"],
            "run": run_dir.name,
        },
        "test": test,
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run-dir", type=Path, required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--out", type=Path, default=Path("bbvae/pretrained"))
    args = p.parse_args(argv)
    result = json.loads((args.run_dir / "result.json").read_text())
    run_args = bench_pianoroll.build_parser().parse_args(["--run-dir", str(args.run_dir)])
    for key, value in result["settings"].items():
        if key not in ("run_dir", "data_dir"):
            setattr(run_args, key, value)
    data, _ = bench_pianoroll.load_data(run_args)
    est = bench_pianoroll.estimator(run_args, None).load(data, args.run_dir / "train" / "best.pt")
    path = pretrained.save(est, args.out, args.name, metadata(args.run_dir, result))
    print(f"wrote {path} and {path.with_suffix('.pt')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
