"""ELBO, IWAE and FIVO against the exact likelihood, on a Gaussian HMM where it is known.

Data come from a random stable linear-Gaussian state space model (``gaussian_hmm_data``). A
``GaussianHMM`` with a learned proposal network q(z_t | z_{t-1}, x_t) is trained three times from
the same initialisation, once with each objective (K particles / samples). Its marginal
likelihood log p(x) is computed exactly by the Kalman filter, so at every evaluation point we can
report, on held-out sequences, the trained model's exact log p(x) and how far below it each
bound lies (the gap = log p(x) - bound, which is >= 0 in expectation). In the FIVO paper's
terms: the ELBO's gap is the KL of q from the posterior, IWAE's shrinks with K, and FIVO's is
small whenever resampling keeps the particles near the data.

Run::

    python examples/gaussian_hmm.py                     # ~1 minute: 300 steps per objective
    python examples/gaussian_hmm.py --plot gap.png      # also plot the gaps (needs matplotlib)
    python examples/gaussian_hmm.py --steps 3000 --length 100 --num-particles 8

Prints one table: for each objective, at each evaluation step, the exact log p(x), the bound the
model was trained with and their gap, all in nats per time step; then every final model scored
with every bound, and the generating model's own log p(x) as the ceiling.
"""

from __future__ import annotations

import argparse
import time

import torch

from bbvae.data import gaussian_hmm_data
from bbvae.losses import ELBO, FIVO, IWAE
from bbvae.sequential import GaussianHMM, evaluate
from bbvae.training import Callback, Trainer

BOUNDS = ("elbo", "iwae", "fivo")


class Tracker(Callback):
    """Every ``every`` steps (and before the first), score held-out data with every bound."""

    def __init__(self, model: GaussianHMM, batch, every: int, k: int, seed: int) -> None:
        self.model, self.batch, self.every, self.k, self.seed = model, batch, every, k, seed
        self.records: list[dict] = []

    def record(self, step: int) -> None:
        self.records.append({"step": step, **score(self.model, self.batch, self.k, self.seed)})

    def on_fit_start(self, trainer) -> None:
        self.record(0)

    def on_step_end(self, trainer, step: int) -> None:
        if step % self.every == 0:
            self.record(step)


def score(model: GaussianHMM, batch, k: int, seed: int) -> dict[str, float]:
    """ELBO, IWAE, FIVO (K = k) and the exact log p(x), nats per time step (seeded draws)."""
    param = next(model.parameters())
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        report = evaluate(model, batch.x.to(param), batch.lengths, bounds=(*BOUNDS, "exact"), n_samples=k)
    return {name: report[name]["per_step"] for name in (*BOUNDS, "exact")}


def make_loss(bound: str, model: GaussianHMM, k: int):
    q, p = model.inf_net, model.gen_model
    if bound == "fivo":
        return FIVO(q, p, n_particles=k)
    return (IWAE if bound == "iwae" else ELBO)(q, p, n_samples=k)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bounds", default="elbo,iwae,fivo", help="comma-separated objectives to train with")
    p.add_argument(
        "--sequences", type=int, default=200, help="sequences drawn (80%% train, 10%% valid, 10%% test)"
    )
    p.add_argument("--length", type=int, default=25, help="steps per sequence")
    p.add_argument("--z-dim", type=int, default=2)
    p.add_argument("--x-dim", type=int, default=2)
    p.add_argument("--num-particles", type=int, default=4, help="K in training and evaluation")
    p.add_argument("--steps", type=int, default=300, help="optimizer steps per objective")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--learning-rate", type=float, default=1e-2)
    p.add_argument("--eval-every", type=int, default=50, help="steps between evaluations")
    p.add_argument("--plot", default=None, help="save a plot of the gaps to this file (needs matplotlib)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    p.add_argument("--seed", type=int, default=0, help="seeds the data, the initialisation and training")
    return p


def main(argv: list[str] | None = None) -> dict:
    parser = build_parser()
    args = parser.parse_args(argv)
    bounds = [b.strip() for b in args.bounds.split(",") if b.strip()]
    if not bounds or any(b not in BOUNDS for b in bounds):
        parser.error(
            f"--bounds: expected a comma-separated subset of {','.join(BOUNDS)}, got {args.bounds!r}"
        )
    torch.set_num_threads(args.threads)
    data = gaussian_hmm_data(args.sequences, args.length, z_dim=args.z_dim, x_dim=args.x_dim, seed=args.seed)
    test = data.full_batch("test")
    with torch.no_grad():
        true_ll = float(data.model.exact_log_prob(test.x.double(), test.lengths).sum()) / data.num_steps(
            "test"
        )
    print(
        f"Gaussian HMM data: {len(data.train)} training and {len(data.test)} test sequences of "
        f"{args.length} steps, z_dim {args.z_dim}, x_dim {args.x_dim}; K = {args.num_particles}"
    )

    runs = {}
    for bound in bounds:
        torch.manual_seed(args.seed)  # the same initialisation for every objective
        model = GaussianHMM(args.z_dim, args.x_dim, proposal="network")
        tracker = Tracker(model, test, args.eval_every, args.num_particles, args.seed + 1)
        trainer = Trainer(
            make_loss(bound, model, args.num_particles),
            learning_rate=args.learning_rate,
            batch_size=args.batch_size,
            max_steps=args.steps,
            log_every=max(1, min(50, args.steps)),
            seed=args.seed,
            progress=False,
            callbacks=[tracker],
        )
        t0 = time.perf_counter()
        trainer.fit(data.train)
        if tracker.records[-1]["step"] != trainer.n_iter_:
            tracker.record(trainer.n_iter_)
        runs[bound] = {"records": tracker.records, "seconds": time.perf_counter() - t0}

    print_tables(runs, true_ll, len(data.test))
    if args.plot:
        plot(runs, true_ll, args.plot)
    return {"true_log_p": true_ll, "runs": runs}


def print_tables(runs: dict, true_ll: float, n_test: int) -> None:
    names = list(runs)
    print(
        "\nexact log p(x) of the model being trained, its training bound and the gap, "
        f"nats/step ({n_test} test sequences)"
    )
    print(f"{'':>6}" + "".join(f" | {'trained with ' + b.upper():^26}" for b in names))
    print(f"{'step':>6}" + " | {:>8} {:>8} {:>8}".format("log p", "bound", "gap") * len(names))
    steps = [r["step"] for r in runs[names[0]]["records"]]
    for i, step in enumerate(steps):
        row = f"{step:>6}"
        for b in names:
            rec = runs[b]["records"][i]
            row += f" | {rec['exact']:>8.3f} {rec[b]:>8.3f} {rec['exact'] - rec[b]:>8.3f}"
        print(row)
    print(
        "\nfinal models scored with every bound "
        f"(nats/step; the generating model's log p(x) is {true_ll:.3f})"
    )
    print(f"{'trained with':<13}" + "".join(f"{b.upper():>9}" for b in BOUNDS) + f"{'exact':>9}   seconds")
    for b in names:
        rec = runs[b]["records"][-1]
        cells = "".join(f"{rec[c]:>9.3f}" for c in BOUNDS)
        print(f"{b.upper():<13}{cells}{rec['exact']:>9.3f}   {runs[b]['seconds']:>7.1f}")


def plot(runs: dict, true_ll: float, path: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(
            f"\nmatplotlib is not installed, so no plot was written to {path} "
            "(the table above has the numbers)"
        )
        return
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for b, run in runs.items():
        steps = [r["step"] for r in run["records"]]
        left.plot(steps, [r["exact"] - r[b] for r in run["records"]], marker="o", label=b.upper())
        right.plot(steps, [r["exact"] for r in run["records"]], marker="o", label=f"trained with {b.upper()}")
    right.axhline(true_ll, color="k", linestyle="--", label="generating model")
    # symlog: a Monte Carlo estimate of a small gap can come out slightly negative.
    left.set_yscale("symlog", linthresh=1e-2)
    left.set(xlabel="training step", ylabel="log p(x) - bound (nats/step)", title="gap of the training bound")
    right.set(
        xlabel="training step", ylabel="exact log p(x) (nats/step)", title="exact log-likelihood (Kalman)"
    )
    left.legend()
    right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
