"""How much of the ELBO's gap to the exact log p(x) a per-step flow proposal closes on a Gaussian HMM.

Protocol (issue 12, section 2, the GHMM half): one fixed linear-Gaussian state space model
(:class:`bbvae.sequential.GaussianHMM`, its parameters set by hand below and never trained), so that
log p(x) is exact (Kalman filter) and only q differs. Its posterior is strongly correlated: two
latent dimensions observed through their sum (``x_t = z_1 + z_2 + noise``, emission sd
``--emission-scale``), so the posterior of ``z_t`` is a narrow ridge along ``z_1 + z_2 = x_t``.
Training and test sequences are drawn from the model (seed 0). Proposals, each
``q(z_t | z_{t-1}, x_t)`` (the same conditioning for all), are trained from the same start for the
same number of Adam steps on the ELBO (K = 1) on the training sequences:

* ``diagonal Gaussian``: ``GaussianHMM(proposal="network")``, mean and scale affine in
  ``[z_{t-1}, x_t]``;
* ``full-covariance Gaussian``: ``GaussianHMM(proposal="network", covariance="full")``, affine mean
  and one learned Cholesky factor (the form of the locally optimal proposal after step 1);
* ``Real NVP flow`` / ``MAF flow``: :class:`bbvae.sequential.FlowProposal` on the diagonal one (a
  per-step conditional flow with context ``[z_{t-1}, x_t]``, starting at the identity).

References, not trained: the bootstrap proposal ``p(z_t | z_{t-1})`` and the closed-form locally
optimal ``p(z_t | z_{t-1}, x_t)`` (no q of this conditioning sees future observations, so its gap
is the part that remains without a smoothing proposal). On the test sequences: the ELBO (mean over
``--elbo-draws`` draws per sequence, with its standard error) and the IWAE bound with
``--iwae-particles`` particles; the gap is ``exact log p(x) - bound`` and a proposal's share is
``1 - gap / gap_diagonal``. Gaps are recorded at several step counts (``--checkpoints``).

    python -m benchmarks.bench_flows_ghmm --steps 2000 --out benchmarks/results/flows/ghmm.json
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from pathlib import Path

import torch

from bbvae.sequential import FlowProposal, GaussianHMM, run_particles, smc

GENERATIVE = ("init_loc", "init_log_scale", "transition", "transition_log_scale", "emission",
              "emission_log_scale")  # fmt: skip


def make_model(proposal: str, args, covariance: str = "diag") -> GaussianHMM:
    """The fixed generative model (float64) with the named proposal; only proposal weights train."""
    model = GaussianHMM(2, 1, proposal=proposal, covariance=covariance).double()
    with torch.no_grad():
        model.init_loc.zero_()
        model.init_log_scale.zero_()  # S0 = I
        model.transition.copy_(torch.tensor([[0.8, 0.3], [-0.2, 0.7]], dtype=torch.float64))
        model.transition_log_scale.fill_(math.log(args.transition_scale))
        model.emission.copy_(torch.tensor([[1.0, 1.0]], dtype=torch.float64))
        model.emission_log_scale.fill_(math.log(args.emission_scale))
    for name, param in model.named_parameters():
        param.requires_grad_(name not in GENERATIVE)
    return model


def build(name: str, args) -> torch.nn.Module:
    if name == "bootstrap (prior) proposal":
        return make_model("prior", args)
    if name == "locally optimal p(z_t | z_{t-1}, x_t)":
        return make_model("optimal", args)
    if name == "diagonal Gaussian":
        return make_model("network", args)
    if name == "full-covariance Gaussian":
        return make_model("network", args, covariance="full")
    flow = {"Real NVP flow": "realnvp", "MAF flow": "maf"}[name]
    hidden = (args.flow_hidden,) * 2
    base = make_model("network", args)
    return FlowProposal(base, flow=flow, transforms=args.transforms, hidden=hidden).double()


@torch.no_grad()
def evaluate(model, x: torch.Tensor, exact: torch.Tensor, args) -> dict:
    """ELBO and IWAE gaps to the exact log p(x), nats per sequence (mean over test sequences)."""
    gen = torch.random.fork_rng(devices=[])
    with gen:
        torch.manual_seed(args.seed + 10_000)
        run = run_particles(model, x, args.elbo_draws)
        log_w = run.log_p - run.log_q  # [N, draws]
        elbo_gap = exact.unsqueeze(1) - log_w  # [N, draws], each >= 0 in expectation
        # The mean over sequences of the per-sequence mean; its se from the N * draws values
        # (draws of one sequence are independent given x, sequences independent).
        per_draw = elbo_gap.mean(0)  # [draws]: the test set's mean gap, one value per draw
        iwae = smc(model, x, args.iwae_particles, ess_threshold=0.0).log_z  # [N]
    return {
        "elbo_gap": float(elbo_gap.mean()),
        "elbo_gap_se": float(per_draw.std() / math.sqrt(per_draw.numel())),
        "iwae_gap": float((exact - iwae).mean()),
    }


def train(model, x_train: torch.Tensor, x_test, exact_test, args) -> tuple[list[dict], float]:
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=args.lr)
    gen = torch.Generator().manual_seed(args.seed + 1)
    curve, cpu = [], 0.0
    checkpoints = sorted(set(args.checkpoints) | {args.steps})
    step = 0
    for stop in checkpoints:
        start = time.process_time()
        for _ in range(stop - step):
            idx = torch.randint(0, x_train.shape[0], (args.batch_size,), generator=gen)
            run = run_particles(model, x_train[idx], 1)
            loss = -(run.log_p - run.log_q).mean()  # the negative ELBO, nats per sequence
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        cpu += time.process_time() - start
        step = stop
        scores = evaluate(model, x_test, exact_test, args)
        curve.append({"step": step, "train_cpu_s": round(cpu, 2), **scores})
    return curve, cpu


NAMES = (
    "bootstrap (prior) proposal",
    "diagonal Gaussian",
    "full-covariance Gaussian",
    "Real NVP flow",
    "MAF flow",
    "locally optimal p(z_t | z_{t-1}, x_t)",
)
TRAINED = ("diagonal Gaussian", "full-covariance Gaussian", "Real NVP flow", "MAF flow")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--length", type=int, default=10, help="T, steps per sequence")
    ap.add_argument("--n-train", type=int, default=512)
    ap.add_argument("--n-test", type=int, default=256)
    ap.add_argument("--emission-scale", type=float, default=0.2)
    ap.add_argument("--transition-scale", type=float, default=1.0)
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--checkpoints", type=int, nargs="*", default=[250, 500, 1000])
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--transforms", type=int, default=3)
    ap.add_argument("--flow-hidden", type=int, default=32)
    ap.add_argument("--elbo-draws", type=int, default=64)
    ap.add_argument("--iwae-particles", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--names", nargs="+", choices=NAMES, default=list(NAMES))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/flows/ghmm.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)  # the data: the same for every seed of q
    oracle = make_model("prior", args)
    with torch.no_grad():
        x_train, _ = oracle.sample(args.n_train, args.length)
        x_test, _ = oracle.sample(args.n_test, args.length)
        exact_test = oracle.exact_log_prob(x_test)  # [n_test]
    rows = {}
    for name in args.names:
        torch.manual_seed(args.seed)
        model = build(name, args)
        if name in TRAINED:
            curve, cpu = train(model, x_train, x_test, exact_test, args)
        else:
            curve, cpu = [{"step": 0, "train_cpu_s": 0.0, **evaluate(model, x_test, exact_test, args)}], 0.0
        rows[name] = {"curve": curve, "train_cpu_s": round(cpu, 2), **curve[-1]}
        print(f"{name}: ELBO gap {rows[name]['elbo_gap']:.3f} ± {rows[name]['elbo_gap_se']:.3f}, "
              f"IWAE-{args.iwae_particles} gap {rows[name]['iwae_gap']:.3f} nats/sequence "
              f"({cpu:.0f} CPU s)", flush=True)  # fmt: skip
    diag = rows.get("diagonal Gaussian")
    for r in rows.values():
        for c in [*r["curve"], r]:
            match = next((d for d in diag["curve"] if d["step"] == c["step"]), diag) if diag else None
            c["share_of_diag_gap_closed"] = 1 - c["elbo_gap"] / match["elbo_gap"] if match else None
    out = {
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "machine": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "exact_log_px_per_sequence": float(exact_test.mean()),
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(f"exact log p(x): {float(exact_test.mean()):.3f} nats per sequence (T = {args.length})")
    k = args.iwae_particles
    print(f"| q | ELBO gap | share of the diagonal gap closed | IWAE-{k} gap | train CPU s |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, r in rows.items():
        closed = r["share_of_diag_gap_closed"]
        share = "" if closed is None else f"{100 * closed:.0f} %"
        print(f"| {name} | {r['elbo_gap']:.3f} ± {r['elbo_gap_se']:.3f} | {share} | {r['iwae_gap']:.3f} | "
              f"{r['train_cpu_s']:.0f} |")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
