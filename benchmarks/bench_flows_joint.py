"""Joint training: how much of the ELBO's gap a flow q(z|x) closes when p and q train together.

The other standard protocol beside :mod:`benchmarks.bench_flows`'s frozen p (as in the IAF paper,
Kingma et al. 2016): for each q family (``--configs``, the syntax of ``bench_flows``: ``diag``,
``fullshared``, ``full``, ``realnvp`` / ``maf`` / ``nsf`` with ``t``, ``h``, ``c``, ``lr``) a fresh
VAE (the same :class:`~benchmarks.bench_flows.GaussianDecoder`, latent 4, MLP 128 x 128, learned
per-pixel scale) is trained on the ELBO (one draw) for ``--steps`` Adam steps, p and q together, on
the same 1,200 / 300 / 297 split of scikit-learn's digits. For one seed, p's initial weights
(``torch.manual_seed(seed)`` before p is built) and the minibatch order are the same for every
config; only q differs.

Choices use the validation split only: every config of ``--configs`` and ``--sweep`` is trained with
the first seed and scored on validation; the flow and the diagonal q with the highest validation
ELBO are selected, and the baselines (``--configs``) and the selected configs are trained with all
``--seeds``. The test split is scored once, at the end.

Scores (per model, each with its own p): the ELBO (``--elbo-samples`` draws per digit), IWAE-k and
log p(x). A flow q also changes p, so log p(x) is estimated for every model separately with the best
proposal available to it: the maximum of two importance-sampling estimates with ``--is-samples``
draws, one from the model's amortised q, one from a full-covariance Gaussian per digit (started at
the moments of ``--moment-samples`` draws of the amortised q, trained ``--local-steps`` Adam steps on
the ELBO with ``--local-samples`` draws, p frozen). The gap is ``log p(x) - ELBO`` and a model's share
is ``1 - gap / gap_diag`` against the ``diag`` model of the same seed. The per-digit Gaussian's own
ELBO gap (``local_gap``) says how far a full Gaussian family, free of amortisation, is from each p's
posterior. ``--train-subset N`` scores the first N training digits the same way (analysis only: the
gap on digits the encoder was trained on, against the test gap, which adds the encoder's
generalisation error).

    python -m benchmarks.bench_flows --protocol joint --out benchmarks/results/flows/digits_joint.json
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path

import torch

from bbvae.base import InfNet
from bbvae.losses import ELBO
from benchmarks.bench_flows import FLOW_KINDS, GaussianDecoder, LocalGaussian, build_q, parse_config, train

CONFIGS = ["diag", "fullshared", "full", "realnvp:t=4", "maf:t=4", "nsf:t=4"]
SWEEP = ["diag:lr=1e-3", "realnvp:t=8", "realnvp:t=4:h=128:c=32", "realnvp:t=4:lr=1e-3"]


def load_split(seed: int = 0):
    """scikit-learn's digits in [0, 1], the fixed 1,200 / 300 / 297 permutation of bench_flows."""
    from sklearn.datasets import load_digits

    x_all = torch.as_tensor(load_digits().data, dtype=torch.float32) / 16.0
    perm = torch.randperm(x_all.shape[0], generator=torch.Generator().manual_seed(seed))
    return x_all[perm[:1200]], x_all[perm[1200:1500]], x_all[perm[1500:]]


def train_vae(cfg: dict, x_train: torch.Tensor, seed: int, args) -> tuple[InfNet, GaussianDecoder, float]:
    """A fresh VAE: p from ``seed`` (the same for every config), q from ``seed + 1``; CPU seconds."""
    d = x_train.shape[1]
    torch.manual_seed(seed)
    p = GaussianDecoder(args.latent_size, d, args.hidden)
    torch.manual_seed(seed + 1)
    q = build_q(cfg, d, args.latent_size, args.hidden)
    cpu = train(ELBO(q, p, 1), [*q.parameters(), *p.parameters()], x_train, args.steps, args.batch_size,
                cfg.get("lr", args.lr), seed)  # fmt: skip
    p.requires_grad_(False)
    return q, p, cpu


@torch.no_grad()
def log_weights(q, p, x: torch.Tensor, n: int, chunk: int = 500) -> torch.Tensor:
    """``log p(x, z) - log q(z|x)`` for ``n`` draws ``z ~ q(z|x)`` per point, ``[N, n]``."""
    out = []
    for start in range(0, n, chunk):
        z = q(x).sample(min(chunk, n - start))
        out.append(p(x, z).log_prob(x, z) - q.log_prob(z))
    return torch.cat(out, dim=-1)


def is_estimate(log_w: torch.Tensor) -> float:
    """Mean over points of ``log (1/S) sum_s w_s``."""
    return float((torch.logsumexp(log_w, dim=-1) - math.log(log_w.shape[-1])).mean())


def local_gaussian(q, p, x: torch.Tensor, args) -> LocalGaussian:
    """A full-covariance Gaussian per point, started at the moments of q's draws, trained on the ELBO."""
    with torch.no_grad():
        z = q(x).sample(args.moment_samples)  # [N, S, L]
        loc = z.mean(1)
        centred = z - loc.unsqueeze(1)
        cov = centred.transpose(1, 2) @ centred / (z.shape[1] - 1)
        tril = torch.linalg.cholesky(cov + 1e-6 * torch.eye(z.shape[-1]))
    local = LocalGaussian(loc, tril.diagonal(dim1=-2, dim2=-1), "full")
    with torch.no_grad():
        local.raw_tril.copy_(tril.tril(-1) + torch.diag_embed(tril.diagonal(dim1=-2, dim2=-1).log()))
    train(ELBO(local, p, args.local_samples), list(local.parameters()), x, args.local_steps, None,
          args.local_lr, 0)  # fmt: skip
    return local


def score(q, p, x: torch.Tensor, args, local: bool) -> dict:
    """ELBO (its Monte Carlo se), IWAE-k, IS from q and (``local``) from a per-digit Gaussian."""
    start = time.process_time()
    log_w = log_weights(q, p, x, args.elbo_samples)
    per_draw = log_w.mean(0)
    k, reps = args.iwae_k, 10
    log_w_k = log_weights(q, p, x, k * reps).reshape(x.shape[0], reps, k)
    out = {
        "elbo": float(log_w.mean()),
        "elbo_mc_se": float(per_draw.std() / math.sqrt(per_draw.numel())),
        f"iwae{k}": float((torch.logsumexp(log_w_k, dim=-1) - math.log(k)).mean()),
    }
    log_w = log_weights(q, p, x, args.is_samples)
    out["is_q"] = is_estimate(log_w)
    out["is_q_quarter"] = is_estimate(log_w[:, : args.is_samples // 4])
    estimates = {"amortised q": out["is_q"]}
    if local:
        g = local_gaussian(q, p, x, args)
        out["local_elbo"] = float(log_weights(g, p, x, args.elbo_samples).mean())
        log_w = log_weights(g, p, x, args.is_samples)
        out["is_local"] = is_estimate(log_w)
        out["is_local_quarter"] = is_estimate(log_w[:, : args.is_samples // 4])
        estimates["per-digit Gaussian"] = out["is_local"]
    out["log_px_from"] = max(estimates, key=estimates.get)
    out["log_px"] = estimates[out["log_px_from"]]
    out["gap"] = out["log_px"] - out["elbo"]
    out[f"iwae{k}_gap"] = out["log_px"] - out[f"iwae{k}"]
    if local:
        out["local_gap"] = out["log_px"] - out["local_elbo"]
    out["score_cpu_s"] = round(time.process_time() - start, 2)
    return out


def add_shares(runs: dict) -> None:
    """``share``: 1 - gap / gap of the ``diag`` model of the same seed (where it was run)."""
    for seed_runs in runs.values():
        diag = seed_runs.get("diag")
        for r in seed_runs.values():
            r["share"] = 1 - r["gap"] / diag["gap"] if diag and diag["gap"] > 0 else math.nan


def summary(runs: dict, names: list[str]) -> dict:
    """Mean and standard deviation over seeds of every number of every config."""
    out = {}
    for name in names:
        rows = [seed_runs[name] for seed_runs in runs.values() if name in seed_runs]
        keys = [k for k, v in rows[0].items() if isinstance(v, float | int) and not isinstance(v, bool)]
        out[name] = {"n_seeds": len(rows)}
        for key in keys:
            values = [r[key] for r in rows]
            out[name][key] = statistics.fmean(values)
            out[name][key + "_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
    return out


def pm(r: dict, key: str, scale: float = 1.0, digits: int = 2) -> str:
    """``mean ± std`` of ``key`` in a :func:`summary` row."""
    return f"{scale * r[key]:.{digits}f} ± {scale * r[key + '_std']:.{digits}f}"


def print_table(split: str, table: dict, n_seeds: int, k: int) -> None:
    """The markdown table of :func:`summary` rows."""
    print(f"\n{split}, {n_seeds} seeds, mean ± std")
    print("| q(z\\|x) | ELBO | log p(x) | gap | share of the diag gap closed | IWAE gap | per-digit gap "
          "| CPU s |")  # fmt: skip
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, r in table.items():
        local = pm(r, "local_gap") if "local_gap" in r else ""
        print(f"| {name} | {pm(r, 'elbo')} | {pm(r, 'log_px')} | {pm(r, 'gap')} | "
              f"{pm(r, 'share', 100, 0)} % | {pm(r, f'iwae{k}_gap')} | {local} | "
              f"{r['train_cpu_s']:.0f} |")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--latent-size", type=int, default=4)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--steps", type=int, default=3000, help="Adam steps of every VAE (p and q together)")
    ap.add_argument("--configs", nargs="+", default=CONFIGS, help="run with every seed; diag is required")
    ap.add_argument("--sweep", nargs="*", default=SWEEP, help="first seed, validation only, unless selected")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=2e-3, help="learning rate of configs without lr")
    ap.add_argument("--elbo-samples", type=int, default=100)
    ap.add_argument("--iwae-k", type=int, default=16)
    ap.add_argument("--is-samples", type=int, default=5000)
    ap.add_argument("--valid-is-samples", type=int, default=1000)
    ap.add_argument("--moment-samples", type=int, default=256)
    ap.add_argument("--local-steps", type=int, default=1000, help="per-digit Gaussian steps (test only)")
    ap.add_argument("--local-samples", type=int, default=16)
    ap.add_argument("--local-lr", type=float, default=1e-2)
    ap.add_argument("--train-subset", type=int, default=0,
                    help="also score the first N training digits like the test ones (analysis: the encoder's "
                    "gap on data it trained on; 0: none)")  # fmt: skip
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/flows/digits_joint.json"))
    args = ap.parse_args(argv)
    configs = {name: parse_config(name) for name in [*args.configs, *args.sweep]}
    if "diag" not in args.configs:
        raise ValueError("--configs: expected the baseline diag among them")
    torch.set_num_threads(args.threads)
    x_train, x_valid, x_test = load_split()
    cpu_start = time.process_time()

    # ---- validation, first seed, every config
    first, models, train_cpu = args.seeds[0], {}, {}
    valid_args = argparse.Namespace(**{**vars(args), "is_samples": args.valid_is_samples})
    valid = {}
    for name, cfg in configs.items():
        q, p, cpu = train_vae(cfg, x_train, first, args)
        models[first, name], train_cpu[first, name] = (q, p), cpu
        valid[name] = {**score(q, p, x_valid, valid_args, local=False), "train_cpu_s": round(cpu, 2)}
        print(f"[valid, seed {first}] {name}: ELBO {valid[name]['elbo']:.3f}, IS {valid[name]['log_px']:.3f} "
              f"({cpu:.0f} CPU s)", flush=True)  # fmt: skip
    add_shares({first: valid})
    by_elbo = lambda n: valid[n]["elbo"]  # noqa: E731
    best_flow = max((n for n, c in configs.items() if c["kind"] in FLOW_KINDS), key=by_elbo)
    best_diag = max((n for n, c in configs.items() if c["kind"] == "diag"), key=by_elbo)
    on_test = list(dict.fromkeys([*args.configs, best_diag, best_flow]))

    # ---- every seed for the test configs; the test split scored once per model
    test: dict[int, dict] = {}
    train_rows: dict[int, dict] = {}
    for seed in args.seeds:
        test[seed] = {}
        for name in on_test:
            if (seed, name) not in models:
                q, p, cpu = train_vae(configs[name], x_train, seed, args)
                models[seed, name], train_cpu[seed, name] = (q, p), cpu
            q, p = models[seed, name]
            test[seed][name] = {**score(q, p, x_test, args, local=args.local_steps > 0),
                                "train_cpu_s": round(train_cpu[seed, name], 2)}  # fmt: skip
            if args.train_subset > 0:
                seen = score(q, p, x_train[: args.train_subset], args, local=True)
                seen["train_cpu_s"] = test[seed][name]["train_cpu_s"]
                train_rows.setdefault(seed, {})[name] = seen
            r = test[seed][name]
            print(f"[test, seed {seed}] {name}: ELBO {r['elbo']:.3f}, log p(x) {r['log_px']:.3f} "
                  f"({r['log_px_from']}), gap {r['gap']:.3f}", flush=True)  # fmt: skip
    add_shares(test)
    add_shares(train_rows)
    table = summary(test, on_test)
    total_cpu = time.process_time() - cpu_start
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    out = {
        "protocol": "joint",
        "settings": settings,
        "selected": {"flow": best_flow, "diag": best_diag},
        "total_cpu_s": round(total_cpu, 1),
        "valid": {"seed": first, "n": x_valid.shape[0], "rows": valid},
        "test": {"n": x_test.shape[0], "runs": {str(s): r for s, r in test.items()}, "summary": table},
    }
    if train_rows:
        out["train_subset"] = {"n": args.train_subset, "runs": {str(s): r for s, r in train_rows.items()},
                               "summary": summary(train_rows, on_test)}  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(f"\nvalidation, seed {first} (log p(x): IS from the amortised q, {args.valid_is_samples} draws)")
    print("| q(z\\|x) | ELBO | log p(x) | gap | share of the diag gap closed | train CPU s |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name, r in valid.items():
        print(f"| {name} | {r['elbo']:.2f} | {r['log_px']:.2f} | {r['gap']:.2f} | {100 * r['share']:.0f} % | "
              f"{r['train_cpu_s']:.0f} |")  # fmt: skip
    tables = [("test", table)]
    if train_rows:
        tables.append((f"the first {args.train_subset} training digits", out["train_subset"]["summary"]))
    for split, rows in tables:
        print_table(split, rows, len(args.seeds), args.iwae_k)
    print(f"\nselected on validation: flow {best_flow}, diagonal {best_diag}; "
          f"total {total_cpu / 60:.1f} CPU min")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
