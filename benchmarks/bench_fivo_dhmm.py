"""FIVO against the IWAE bound (VIMCO) on a discrete HMM, whose latents cannot be reparametrized.

Data: sequences of length ``--length`` drawn from a fixed random ``DiscreteHMM`` (``--states``
states, ``--symbols`` symbols): ``--n-train`` for training, ``--n-test`` held out. A fresh
``DiscreteHMM`` with a learned proposal is trained with

* FIVO (``K = --k`` particles, multinomial resampling when the ESS < K/2, ``gradient="score"``: the
  score-function terms of the proposals and of the resampling decisions, unbiased for the gradient
  of E[log Z-hat]);
* FIVO-segment (the same filter, ``proposal_gradient="segment"``: each proposal's signal is VIMCO's
  leave-one-out signal within its segment between resamplings; the resampling decisions and the
  proposals' effect on later segments carry no gradient: biased, lower variance);
* VIMCO (``K = --k`` samples: the IWAE bound, with leave-one-out baselines);

for the same number of Adam steps and batches, then scored on the test sequences: the exact
log-likelihood (forward algorithm) of the trained model, and its FIVO and IWAE bounds at K, all in
nats per time step, next to the exact log-likelihood of the data-generating model. With
``--curve-every N`` the test exact log-likelihood (forward algorithm, cheap) is also recorded every
N steps (``curve`` in the JSON line; its CPU time is not counted in ``ms_step``).

``python -m benchmarks.bench_fivo_dhmm --out benchmarks/results/fivo_dhmm.jsonl``
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from bbvae.losses import FIVO, VIMCO
from bbvae.sequential import DiscreteHMM, evaluate

NAMES = ("FIVO", "FIVO-segment", "VIMCO")


def make_truth(states: int, symbols: int, seed: int) -> DiscreteHMM:
    torch.manual_seed(seed)
    model = DiscreteHMM(states, n_obs=symbols, proposal="prior")
    with torch.no_grad():
        model.init_logits.copy_(torch.randn(states))
        model.transition_logits.copy_(3.0 * torch.randn(states, states))
        model.emission_logits.copy_(2.0 * torch.randn(states, symbols))
    return model


def train(name: str, args, x_train: torch.Tensor, seed: int, x_test: torch.Tensor | None = None):
    """Train one model; ``(model, CPU ms per step, curve)``, ``curve`` a list of ``[step, exact]``."""
    torch.manual_seed(seed)
    model = DiscreteHMM(args.states, n_obs=args.symbols, proposal="network")
    if name == "FIVO":
        loss = FIVO(model.inf_net, model.gen_model, n_particles=args.k, gradient="score")
    elif name == "FIVO-segment":
        loss = FIVO(model.inf_net, model.gen_model, n_particles=args.k, proposal_gradient="segment")
    else:
        loss = VIMCO(model.inf_net, model.gen_model, n_samples=args.k)
    opt = torch.optim.Adam(loss.parameters(), lr=args.lr)
    order = torch.Generator().manual_seed(seed)
    cpu, curve = 0.0, []
    for step in range(1, args.steps + 1):
        start = time.process_time()  # CPU time of this process: other jobs do not inflate it
        idx = torch.randint(0, x_train.shape[0], (args.batch_size,), generator=order)
        opt.zero_grad(set_to_none=True)
        loss(x_train[idx]).backward()
        opt.step()
        cpu += time.process_time() - start
        if x_test is not None and args.curve_every and step % args.curve_every == 0:
            with torch.no_grad():
                exact = float(model.exact_log_prob(x_test).sum()) / x_test.numel()
            curve.append([step, exact])
    return model, 1000 * cpu / args.steps, curve


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--states", type=int, default=5)
    parser.add_argument("--symbols", type=int, default=6)
    parser.add_argument("--length", type=int, default=50)
    parser.add_argument("--n-train", type=int, default=200)
    parser.add_argument("--n-test", type=int, default=100)
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=0.03)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--out", default=None)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--curve-every", type=int, default=0, help="record test exact log p(x) every N steps")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    truth = make_truth(args.states, args.symbols, seed=123)
    torch.manual_seed(124)
    x_train, _ = truth.sample(args.n_train, args.length)
    x_test, _ = truth.sample(args.n_test, args.length)
    with torch.no_grad():
        exact_truth = float(truth.exact_log_prob(x_test).sum()) / x_test.numel()
    print(
        f"DiscreteHMM, {args.states} states, {args.symbols} symbols, T = {args.length}; K = {args.k}; "
        f"{args.steps} steps of batch {args.batch_size}, Adam lr {args.lr}; data-generating model's "
        f"test log p(x) = {exact_truth:.4f} nats/step",
        flush=True,
    )
    rows = []
    for seed in (int(s) for s in args.seeds.split(",")):
        for name in NAMES:
            model, ms, curve = train(name, args, x_train, seed, x_test)
            torch.manual_seed(seed + 1000)
            scores = evaluate(model, x_test, bounds=("iwae", "fivo", "exact"), n_samples=args.k)
            row = {
                "trained_with": name,
                "seed": seed,
                "test_exact": scores["exact"]["per_step"],
                "test_fivo": scores["fivo"]["per_step"],
                "test_iwae": scores["iwae"]["per_step"],
                "truth_exact": exact_truth,
                "ms_step": ms,
                "curve": curve,
                **{key: getattr(args, key) for key in ("states", "symbols", "length", "k", "steps", "lr")},
            }
            rows.append(row)
            shown = {k: v for k, v in row.items() if k != "curve"}
            print(f"  {name} seed {seed}: {json.dumps(shown)}", flush=True)
            if args.out:
                with open(args.out, "a", encoding="utf-8") as f:
                    f.write(json.dumps(row) + "\n")
    print("\n| trained with | test exact log p(x) | test FIVO bound | test IWAE bound | CPU ms/step |")
    print("|---|---:|---:|---:|---:|")
    for name in NAMES:
        group = [r for r in rows if r["trained_with"] == name]

        def cell(key, group=group):
            values = [r[key] for r in group]
            std = statistics.stdev(values) if len(values) > 1 else 0.0
            return f"{statistics.fmean(values):.4f} ± {std:.4f}"

        cells = " | ".join(cell(key) for key in ("test_exact", "test_fivo", "test_iwae", "ms_step"))
        print(f"| {name} | {cells} |")
    print(f"| data-generating model | {exact_truth:.4f} | | | |")


if __name__ == "__main__":
    main()
