"""VAE-Seq "play" on CartPole-v1: a world-model agent (bbvae.play) against model-free REINFORCE.

For each seed: run the Dyna loop (:func:`bbvae.play.run_dyna`, default :class:`~bbvae.play.DynaConfig`),
then evaluate the final policy on 100 real episodes (sampled actions, the headline; greedy actions
too), score the world model on 20 held-out episodes of the final policy (ELBO / IWAE / FIVO nats per
step, open-loop prediction error after 10 / 25 / 50 steps), and train REINFORCE with the same seed for
30,000 real steps, evaluated on 100 episodes when it reaches the Dyna agent's step count and at the end.
Evaluation and held-out episodes are not counted as training steps.

Each seed writes ``benchmarks/results/play/seed{S}.json`` and is skipped when that file exists
(resumable); the learning-curve PNG and the summary are rebuilt from the JSON files at the end.
Run with one thread (about 6 CPU-minutes per seed on one core)::

    nohup python -m benchmarks.bench_play --seeds 0 1 2 > play.log 2>&1 &
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from bbvae.play import (
    DynaConfig,
    ReinforceConfig,
    mean_return,
    open_loop_error,
    run_dyna,
    run_episodes,
    run_reinforce,
)

RESULTS = Path(__file__).resolve().parent / "results" / "play"
HORIZONS = (10, 25, 50)


def run_seed(seed: int, estimator: str, out: Path) -> dict:
    """Everything measured for one seed, as a JSON-able dict."""
    cpu0, wall0 = time.process_time(), time.perf_counter()
    config = DynaConfig(seed=seed, estimator=estimator)
    dyna = run_dyna(config, log=lambda row: print(f"seed {seed} dyna {row}", flush=True))
    cpu_dyna = time.process_time() - cpu0
    eval_seed = 3 * 10**9 + seed * 10_000
    final = run_episodes(dyna.policy.act, 100, seed=eval_seed)
    greedy = run_episodes(lambda o: dyna.policy.act(o, greedy=True), 100, seed=eval_seed)
    held_out = run_episodes(dyna.policy.act, 20, seed=4 * 10**9 + seed * 10_000)
    world = dyna.world
    world.eval()
    torch.manual_seed(seed)
    loglik = world.log_likelihood(held_out, n_samples=16)
    errors = open_loop_error(world, held_out, HORIZONS, n_samples=16)
    steps_used = sum(len(e) for e in dyna.episodes)
    cpu1 = time.process_time()
    reinforce = run_reinforce(
        ReinforceConfig(seed=seed, snapshot_steps=(steps_used, 30_000)),
        log=lambda row: print(f"seed {seed} reinforce {row}", flush=True),
    )
    record = {
        "seed": seed,
        "estimator": estimator,
        "dyna_config": asdict(config),
        "dyna_history": dyna.history,
        "real_steps_used": steps_used,
        "final_return_100": mean_return(final),
        "final_return_100_std": float(np.std([e.total_reward for e in final])),
        "final_return_100_greedy": mean_return(greedy),
        "world_model_loglik_per_step": loglik,
        "world_model_open_loop": {str(h): v for h, v in errors.items()},
        "held_out_mean_length": float(np.mean([len(e) for e in held_out])),
        "reinforce_history": reinforce.history,
        "reinforce_at_dyna_steps": reinforce.snapshots[steps_used],
        "reinforce_at_30000": reinforce.snapshots[30_000],
        "cpu_seconds_dyna": cpu_dyna,
        "cpu_seconds_reinforce": time.process_time() - cpu1,
        "cpu_seconds_total": time.process_time() - cpu0,
        "wall_seconds_total": time.perf_counter() - wall0,
        "torch": torch.__version__,
    }
    out.write_text(json.dumps(record, indent=1))
    return record


def plot(records: list[dict], path: Path) -> None:
    """Real return against real environment steps, one line per seed and agent."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as err:  # pragma: no cover
        raise ImportError("the plot needs matplotlib: pip install 'bbvae[plots]'") from err
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for i, rec in enumerate(records):
        color = f"C{i}"
        d = rec["dyna_history"]
        ax.plot(
            [r["real_steps"] for r in d],
            [r["eval_return"] for r in d],
            "-o",
            color=color,
            ms=3,
            label=f"world model + {rec['estimator']} (seed {rec['seed']})",
        )
        ax.plot(rec["real_steps_used"], rec["final_return_100"], "*", color=color, ms=12)
        r = rec["reinforce_history"]
        ax.plot(
            [x["real_steps"] for x in r],
            [x["eval_return"] for x in r],
            ":",
            color=color,
            label=f"REINFORCE (seed {rec['seed']})",
        )
    ax.axhline(195, color="k", lw=0.8, ls="--", label="target 195")
    ax.set_xlabel("real environment steps (training)")
    ax.set_ylabel("mean real return (10 episodes; star: 100)")
    ax.set_title("CartPole-v1: agent trained in a VRNN world model vs model-free REINFORCE")
    ax.set_xlim(0, 30_000)
    ax.set_ylim(0, 520)
    ax.legend(fontsize=7, loc="center right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def summary(records: list[dict]) -> str:
    """A markdown table of the per-seed numbers."""
    lines = [
        "| seed | real steps | return (100 ep., sampled / greedy) | REINFORCE at same steps / at 30k |"
        " ELBO / IWAE / FIVO nats per step | open-loop nRMSE 10 / 25 / 50 | CPU min |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in records:
        ll = r["world_model_loglik_per_step"]
        ol = r["world_model_open_loop"]
        nrmse = " / ".join(f"{ol[str(h)]['nrmse']:.3f}" if str(h) in ol else "-" for h in HORIZONS)
        lines.append(
            f"| {r['seed']} | {r['real_steps_used']} | {r['final_return_100']:.1f} / "
            f"{r['final_return_100_greedy']:.1f} | {r['reinforce_at_dyna_steps'][1]:.1f} / "
            f"{r['reinforce_at_30000'][1]:.1f} | {ll['elbo']:.2f} / {ll['iwae']:.2f} / {ll['fivo']:.2f} | "
            f"{nrmse} | {r['cpu_seconds_total'] / 60:.1f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--estimator", choices=("pathwise", "score"), default="pathwise")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    records = []
    for seed in args.seeds:
        suffix = "" if args.estimator == "pathwise" else f"_{args.estimator}"
        path = args.out / f"seed{seed}{suffix}.json"
        if path.exists():
            print(f"seed {seed}: {path} exists, skipped", flush=True)
            records.append(json.loads(path.read_text()))
            continue
        records.append(run_seed(seed, args.estimator, path))
    table = summary(records)
    print(table)
    (args.out / f"summary_{args.estimator}.md").write_text(table + "\n")
    plot(records, args.out / f"cartpole_{args.estimator}.png")


if __name__ == "__main__":
    main()
