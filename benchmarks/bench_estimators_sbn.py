"""Gradient estimators for discrete latents on binarised 8x8 digits: a plain script, not a test.

A sigmoid-belief-net VAE (``--z-dim`` Bernoulli latents) is trained on the scikit-learn digits
(1,797 images of 8x8 pixels, 0..16, binarised as pixel > 7; a fixed 80/20 train/test split, and
``--valid-frac`` of the training images held out for validation) with every estimator at the
**same number of model evaluations per data point and step** (``--evals``, E), the same batch size,
learning rate, initialisation and batch order, for ``--seeds`` seeds. Three models:

* ``linear``: one stochastic layer, linear (logistic) maps in p and q (the "linear SBN");
* ``nonlinear``: one stochastic layer, an MLP with one hidden layer of ``--hidden`` tanh units in p
  and in q;
* ``twolayer``: two stochastic layers of ``--z-dim`` and ``--z2-dim`` latents, ``x <- z_1 <- z_2``,
  logistic maps (the "two-layer linear SBN" of the REBAR / RELAX papers), with the layered
  q(z_1|x) q(z_2|z_1) (``LayeredBernoulliInfNet``); ARM, DisARM, ARMS, REBAR and RELAX apply their
  estimator layer by layer. Concrete and IWAE-DReG have no layered form here and are skipped.

Estimators and their samples per step at E evaluations (``K``; REBAR and RELAX evaluate p three
times per draw, at ``b``, ``z~`` and ``z~|b``, and ``1 + 2 L`` times with ``L`` stochastic layers;
with two layers ARM and DisARM use units of 3 evaluations, ARMS ``2 G - 1`` for groups of ``G``,
the largest count not above E):

* ELBO-score (REINFORCE, no baseline, K = E), NVIL (K = E, learned baseline), RLOO (K = E),
  VIMCO (K = E, the K-sample bound), RWS (K = E), Concrete (K = E relaxed samples at temperature
  2/3; its extra no-grad pass on the hard samples only reports the value),
* ARM and DisARM (E / 2 antithetic pairs), ARMS (E samples, Dirichlet copula),
* ARM-IWAE and DisARM-IWAE (not in the default list): the E/2-sample bound from two antithetic
  draws of E/2 samples (compare with VIMCO, whose K = E sample bound is tighter at equal cost),
* REBAR and RELAX (K = E / 3, control variates trained online),
* IWAE-DReG (K = E) needs a reparametrizable q, so its row is a *Gaussian*-latent twin of the same
  size: a reference point, not the same model.

Training: Adam, batch ``--batch-size``, at most ``--steps`` steps; every ``--eval-every`` steps the
validation log p(x) (importance sampling, S = ``--n-is-valid``) is computed, the best state kept,
and training stops after ``--patience`` evaluations without improvement. The best state is then
scored: test and train log p(x) (S = ``--n-is``), the gradient SNR (``||E g|| / sqrt(tr Cov g)``)
and total variance of q's gradient over ``--snr-draws`` draws on one training batch
(``bbvae.diagnostics.gradient_stats``), and the training time per step (wall clock, and the CPU
time of the process, which other jobs on the machine do not inflate). Each JSON line also holds
the validation curve (``curve``: ``[step, valid log p(x)]``), whether early stopping triggered
(``stopped_early``) and the run's whole CPU time (``cpu_s``, evaluations included).

Run from the repository root: ``python -m benchmarks.bench_estimators_sbn --out
benchmarks/results/sbn_estimators.jsonl`` (one JSON line per run, then a table of means +- std over
seeds). ``--steps 40000 --eval-every 1000`` is the long version; the defaults are a short one.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import platform
import statistics
import time

import torch
from torch.distributions import Bernoulli, Independent, Normal

from bbvae.base import GenModel
from bbvae.diagnostics import gradient_stats
from bbvae.evaluation import log_likelihood
from bbvae.losses import ARM, ARMS, ELBO, IWAE, NVIL, REBAR, RELAX, RLOO, RWS, VIMCO, Concrete, DisARM
from bbvae.models import (
    BernoulliInfNet,
    GaussianInfNet,
    LayeredBernoulliInfNet,
    LayeredSigmoidBeliefNet,
    SigmoidBeliefNet,
    mlp,
)

ESTIMATORS = (
    "ELBO-score",
    "NVIL",
    "RLOO",
    "VIMCO",
    "RWS",
    "Concrete",
    "ARM",
    "DisARM",
    "ARMS",
    "REBAR",
    "RELAX",
    "IWAE-DReG",
)
MODELS = {"linear": (), "nonlinear": None, "twolayer": ()}  # None: (args.hidden,)
LAYERED = ("twolayer",)
#: Estimators without a form for a layered q (skipped on the two-layer model).
NOT_LAYERED = ("Concrete", "IWAE-DReG", "ARM-IWAE", "DisARM-IWAE")


class GaussianLatentVAE(GenModel):
    """``z ~ N(0, I)``, ``x | z ~ Bernoulli(sigmoid(f(z)))``: the Gaussian-latent twin of the SBN."""

    def __init__(self, z_dim: int, x_dim: int, hidden: tuple[int, ...]) -> None:
        super().__init__()
        self.z_dim = z_dim
        self.net = mlp([z_dim, *hidden, x_dim])

    def forward(self, x, z):
        return {"logits": self.net(z)}

    def prior(self):
        zeros = self.net[0].weight.new_zeros(self.z_dim)
        return Independent(Normal(zeros, torch.ones_like(zeros)), 1)

    def likelihood(self):
        return Independent(Bernoulli(logits=self.params_["logits"]), 1)


def load_digits_binary(valid_frac: float, seed: int = 0):
    """``(train, valid, test)`` binary images ``[n, 64]``; the splits are fixed by ``seed``."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    binary = torch.tensor(load_digits().data > 7, dtype=torch.float32)  # [1797, 64]
    train, test = train_test_split(binary, test_size=0.2, random_state=seed)
    train, valid = train_test_split(torch.as_tensor(train), test_size=valid_frac, random_state=seed)
    return torch.as_tensor(train), torch.as_tensor(valid), torch.as_tensor(test)


def samples_for(name: str, evals: int, n_layers: int = 1) -> int:
    """``n_samples`` of the estimator that costs at most ``evals`` model evaluations (at least one draw)."""
    if name in ("REBAR", "RELAX"):
        return max(evals // (1 + 2 * n_layers), 1)
    if n_layers > 1 and name in ("ARM", "DisARM"):
        return max(evals // (n_layers + 1), 1) * (n_layers + 1)
    if n_layers > 1 and name == "ARMS":
        return max((evals - 1) // n_layers, 1) * n_layers + 1
    return evals


def evaluations_for(name: str, n_samples: int, n_layers: int = 1) -> int:
    """Model evaluations per data point and step of ``n_samples``."""
    return n_samples * (1 + 2 * n_layers) if name in ("REBAR", "RELAX") else n_samples


def build(name: str, hidden: tuple[int, ...], z_dim: int, x_dim: int, evals: int, layers=None):
    """``(inf_net, gen_model, loss)``; ``layers`` the layer sizes of a layered model (else one layer)."""
    k = samples_for(name, evals, 1 if layers is None else len(layers))
    if name == "IWAE-DReG":
        inf_net = GaussianInfNet(x_dim, z_dim, hidden=hidden)
        gen_model = GaussianLatentVAE(z_dim, x_dim, hidden)
        return inf_net, gen_model, IWAE(inf_net, gen_model, n_samples=k, estimator="dreg")
    if layers is None:
        inf_net = BernoulliInfNet(x_dim, z_dim, hidden=hidden)
        gen_model = SigmoidBeliefNet(z_dim, x_dim, hidden=hidden)
    else:
        inf_net = LayeredBernoulliInfNet(x_dim, layers, hidden=hidden)
        gen_model = LayeredSigmoidBeliefNet(layers, x_dim, hidden=hidden)
    make = {
        "ELBO-score": lambda: ELBO(inf_net, gen_model, n_samples=k, estimator="score"),
        "NVIL": lambda: NVIL(inf_net, gen_model, n_samples=k),
        "RLOO": lambda: RLOO(inf_net, gen_model, n_samples=k),
        "VIMCO": lambda: VIMCO(inf_net, gen_model, n_samples=k),
        "RWS": lambda: RWS(inf_net, gen_model, n_samples=k),
        "Concrete": lambda: Concrete(inf_net, gen_model, temperature=2.0 / 3.0, n_samples=k),
        "ARM": lambda: ARM(inf_net, gen_model, n_samples=k),
        "ARM-IWAE": lambda: ARM(inf_net, gen_model, n_samples=k, bound="iwae"),
        "DisARM-IWAE": lambda: DisARM(inf_net, gen_model, n_samples=k, bound="iwae"),
        "DisARM": lambda: DisARM(inf_net, gen_model, n_samples=k),
        "ARMS": lambda: ARMS(inf_net, gen_model, n_samples=k),
        "REBAR": lambda: REBAR(inf_net, gen_model, n_samples=k),
        "RELAX": lambda: RELAX(inf_net, gen_model, n_samples=k),
    }
    if name not in make:
        raise ValueError(f"unknown estimator {name!r}; expected one of {ESTIMATORS}")
    return inf_net, gen_model, make[name]()


def score(inf_net, gen_model, x: torch.Tensor, n_samples: int) -> float:
    with torch.no_grad():
        return float(log_likelihood(inf_net, gen_model, x, n_samples=n_samples).mean())


def run(name: str, model: str, seed: int, args, data) -> dict:
    x_train, x_valid, x_test = data
    cpu_run = time.process_time()
    hidden = MODELS[model] if MODELS[model] is not None else (args.hidden,)
    layers = (args.z_dim, args.z2_dim) if model in LAYERED else None
    n_layers = 1 if layers is None else len(layers)
    torch.manual_seed(seed)  # same initialisation and batch order for every estimator of a seed
    inf_net, gen_model, loss = build(name, hidden, args.z_dim, x_train.shape[1], args.evals, layers)
    loss.prepare(x_train[: args.batch_size])  # NVIL's baseline, RELAX's surrogate
    opt = torch.optim.Adam(loss.parameters(), lr=args.lr)
    order = torch.Generator().manual_seed(seed)
    best, best_state, best_step, bad, step, train_time, cpu_time = -math.inf, None, 0, 0, 0, 0.0, 0.0
    curve, stopped_early = [], False
    while step < args.steps:
        start, cpu_start = time.perf_counter(), time.process_time()
        for _ in range(args.eval_every):
            idx = torch.randint(0, x_train.shape[0], (args.batch_size,), generator=order)
            opt.zero_grad(set_to_none=True)
            loss(x_train[idx]).backward()
            opt.step()
        train_time += time.perf_counter() - start
        cpu_time += time.process_time() - cpu_start
        step += args.eval_every
        valid = score(inf_net, gen_model, x_valid, args.n_is_valid)
        curve.append([step, valid])
        if valid > best:
            best, best_state, best_step, bad = valid, copy.deepcopy(loss.state_dict()), step, 0
        else:
            bad += 1
            if bad >= args.patience:
                stopped_early = True
                break
    loss.load_state_dict(best_state)
    torch.manual_seed(seed + 1000)
    test = score(inf_net, gen_model, x_test, args.n_is)
    train = score(inf_net, gen_model, x_train, args.n_is_train or args.n_is)
    stats = gradient_stats(loss, x_train[: args.batch_size], args.snr_draws)
    return {
        "model": model,
        "estimator": name,
        "seed": seed,
        "evals": args.evals,
        "n_samples": samples_for(name, args.evals, n_layers),
        "evaluations": evaluations_for(name, samples_for(name, args.evals, n_layers), n_layers),
        "steps": step,
        "best_step": best_step,
        "stopped_early": stopped_early,
        "valid_log_px": best,
        "test_log_px": test,
        "train_log_px": train,
        "snr_q": stats["inf_net"].snr_norm,
        "var_q": stats["inf_net"].total_variance,
        "snr_p": stats["gen_model"].snr_norm,
        "ms_step": 1000 * train_time / step,  # wall clock
        "cpu_ms_step": 1000 * cpu_time / step,  # CPU time of this process (robust to other jobs)
        "cpu_s": time.process_time() - cpu_run,  # the whole run, evaluations included
        "n_is": args.n_is,
        "n_is_train": args.n_is_train or args.n_is,
        "snr_draws": args.snr_draws,
        "max_steps": args.steps,
        "curve": curve,
    }


def _cell(values, digits=2) -> str:
    values = [v for v in values if math.isfinite(v)]
    if not values:
        return "n/a"
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def table(rows: list[dict]) -> str:
    lines = [
        "| model | estimator | K (evals) | test log p(x) | train log p(x) | SNR q | Var q | best step "
        "| stopped at | CPU ms/step |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    keys = []
    for r in rows:
        if (r["model"], r["estimator"]) not in keys:
            keys.append((r["model"], r["estimator"]))
    for model, name in keys:
        group = [r for r in rows if r["model"] == model and r["estimator"] == name]
        label = name + ("*" if name == "IWAE-DReG" else "")
        evals = group[0].get("evaluations", group[0]["n_samples"])
        stops = ", ".join(str(r["steps"]) + ("" if r.get("stopped_early", True) else "+") for r in group)
        lines.append(
            f"| {model} | {label} | {group[0]['n_samples']} ({evals}) "
            f"| {_cell([r['test_log_px'] for r in group])} "
            f"| {_cell([r['train_log_px'] for r in group])} | {_cell([r['snr_q'] for r in group], 3)} "
            f"| {_cell([r['var_q'] for r in group], 3)} | {_cell([r['best_step'] for r in group], 0)} "
            f"| {stops} | {_cell([r.get('cpu_ms_step', math.nan) for r in group], 1)} |"
        )
    return "\n".join(lines)


def paired(rows: list[dict], reference: str = "DisARM", others=("ARM", "ARMS", "RLOO", "REBAR", "RELAX")):
    """Per model: ``reference`` minus each other estimator in test log p(x), seed by seed (paired)."""
    lines = [
        f"| model | {reference} minus | per seed (test log p(x), nats) | wins of {reference} |",
        "|---|---|---|---:|",
    ]

    def by_seed(model, name):
        return {r["seed"]: r["test_log_px"] for r in rows if r["model"] == model and r["estimator"] == name}

    for model in dict.fromkeys(r["model"] for r in rows):
        ref = by_seed(model, reference)
        for name in others:
            other = by_seed(model, name)
            seeds = sorted(set(ref) & set(other))
            if not seeds:
                continue
            diffs = [ref[s] - other[s] for s in seeds]
            cells = ", ".join(f"{d:+.2f}" for d in diffs)
            lines.append(f"| {model} | {name} | {cells} | {sum(d > 0 for d in diffs)} of {len(diffs)} |")
    return "\n".join(lines)


def report(paths: list[str]) -> None:
    """Print the table and the paired comparisons of JSON-line result files."""
    rows = [json.loads(line) for path in paths for line in open(path, encoding="utf-8") if line.strip()]
    print(table(rows))
    print()
    print(paired(rows))
    cpu = sum(r.get("cpu_s", 0.0) for r in rows)
    stopped = sum(r.get("stopped_early", False) for r in rows)
    print(f"\n{len(rows)} runs, {stopped} stopped early, {cpu / 60:.1f} CPU-minutes in the runs")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=2000, help="most optimisation steps per run")
    parser.add_argument("--eval-every", type=int, default=250, help="steps between validations")
    parser.add_argument("--patience", type=int, default=4, help="validations without improvement")
    parser.add_argument("--evals", type=int, default=6, help="model evaluations per data point and step")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--z-dim", type=int, default=20, help="latents (of the first layer for twolayer)")
    parser.add_argument("--z2-dim", type=int, default=20, help="latents of the second layer (twolayer)")
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--valid-frac", type=float, default=0.1)
    parser.add_argument("--n-is", type=int, default=1000, help="importance samples for test/train log p(x)")
    parser.add_argument("--n-is-train", type=int, default=0, help="importance samples for train (0: --n-is)")
    parser.add_argument("--n-is-valid", type=int, default=100, help="importance samples for validation")
    parser.add_argument("--snr-draws", type=int, default=100)
    parser.add_argument("--estimators", default=",".join(ESTIMATORS))
    parser.add_argument("--models", default="linear,nonlinear")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--out", default=None, help="append one JSON line per run to this file")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 is fastest here)")
    parser.add_argument("--report", nargs="+", default=None, help="only print tables of these JSONL files")
    args = parser.parse_args(argv)
    if args.report:
        report(args.report)
        return

    torch.set_num_threads(args.threads)
    data = load_digits_binary(args.valid_frac)
    print(
        f"digits: {data[0].shape[0]} train / {data[1].shape[0]} valid / {data[2].shape[0]} test images; "
        f"{args.z_dim} latents; E = {args.evals} evaluations per point and step; at most {args.steps} "
        f"steps of batch {args.batch_size}, Adam lr {args.lr}, validation every {args.eval_every} steps "
        f"(patience {args.patience}); torch {torch.__version__}, {args.threads} thread(s), "
        f"{platform.processor() or 'cpu'}",
        flush=True,
    )
    rows = []
    for model in args.models.split(","):
        if model not in MODELS:
            raise ValueError(f"unknown model {model!r}; expected one of {tuple(MODELS)}")
        for name in args.estimators.split(","):
            if model in LAYERED and name in NOT_LAYERED:
                print(f"  {model} {name}: skipped (no form for a layered q)", flush=True)
                continue
            for seed in (int(s) for s in args.seeds.split(",")):
                start = time.perf_counter()
                row = run(name, model, seed, args, data)
                row["wall_s"] = time.perf_counter() - start
                rows.append(row)
                print(
                    f"  {model} {name} seed {seed}: test {row['test_log_px']:.2f}, best step "
                    f"{row['best_step']} of {row['steps']}{' (stopped)' if row['stopped_early'] else ''}, "
                    f"{row['cpu_s']:.0f} CPU s, {row['wall_s']:.0f} s",
                    flush=True,
                )
                if args.out:
                    with open(args.out, "a", encoding="utf-8") as f:
                        f.write(json.dumps(row) + "\n")
    print(
        "\nnats per image; mean ± std over seeds; * Gaussian latents, not the same model; stopped at: "
        "the last step of each seed's run, + where the step budget ended it (no early stop)"
    )
    print(table(rows))


if __name__ == "__main__":
    main()
