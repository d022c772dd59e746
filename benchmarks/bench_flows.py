"""How much of the ELBO's gap a flow q(z|x) closes on the digits Gaussian VAE, at equal steps.

Protocol (one fixed generative model, so that only q differs): a VAE with a Gaussian decoder
(learned per-pixel scale) and a diagonal Gaussian q is trained on scikit-learn's 8x8 digits (scaled
to [0, 1]; 1,200 train / 300 validation / 297 test, a fixed permutation) for ``--vae-steps`` steps
with ``--p-objective`` (the ELBO, or IWAE with ``--p-particles``); then, with p frozen, fresh
inference networks (``--configs``) are trained for ``--q-steps`` steps each on the ELBO (one draw
per digit), all from the same seed and batch order:

* ``diag``: a diagonal Gaussian (:class:`bbvae.models.GaussianInfNet`);
* ``fullshared``: a full-covariance Gaussian with one learned Cholesky factor shared by all digits
  (``GaussianInfNet(covariance="full")``);
* ``full``: a full-covariance Gaussian whose Cholesky factor comes from x (:class:`CholeskyInfNet`);
* ``realnvp`` / ``maf`` / ``nsf``: :class:`bbvae.flows.FlowInfNet` (zuko's Real NVP, MAF, NSF on a
  Gaussian base from x, starting at the identity), options ``t`` (layers), ``h`` (width of the two
  hidden layers of every layer's network), ``c`` (context size).

Every config may set ``lr``: ``"realnvp:t=8:h=128:lr=1e-3"``. **Selection uses the validation
split only**: the ELBO gap of every config is measured on it, and the flow (and the diagonal) with
the highest validation ELBO are the selected ones; the test split is scored once, for the baseline
configs and the selected ones. The gap is ``log p(x) - ELBO`` with log p(x) importance-sampled with
``--is-samples`` draws from the best proposal (the maximum over all the estimates, the per-digit
ones below included); a flow's share is ``1 - gap_flow / gap_diag``, against ``diag`` and against
the selected diagonal q. The IWAE bound with ``--iwae-k`` particles is reported beside it.

Amortisation (on the test digits, not used for any choice): each digit gets its own optimised q,
started at the amortised one and trained for ``--local-steps`` steps on the ELBO (Cremer et al.,
2018, "Inference suboptimality in VAEs"): a diagonal Gaussian, a full-covariance Gaussian, and the
selected flow (or ``--local-flow``) refined (per-digit base and context, the flow's weights trained
on the test digits).
The optimised diagonal q's gap is the diagonal family's approximation gap; the rest of the amortised
diagonal q's gap is its amortisation gap, which a richer family does not remove by itself.

    python -m benchmarks.bench_flows --q-steps 3000 --out benchmarks/results/flows/digits_sweep.json

``--protocol joint`` runs the other protocol instead, p and q trained together (one VAE per q
family): :mod:`benchmarks.bench_flows_joint`, which takes its own options.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import time
from pathlib import Path

import torch
from torch import nn
from torch.distributions import Independent, MultivariateNormal, Normal
from torch.nn import functional as F

from bbvae.base import GenModel, InfNet
from bbvae.evaluation import log_likelihood
from bbvae.flows import FlowInfNet
from bbvae.losses import ELBO, IWAE
from bbvae.models import GaussianInfNet, mlp

DEFAULT_CONFIGS = [
    "diag",
    "diag:lr=1e-3",
    "fullshared",
    "full",
    "realnvp:t=4",  # the earlier run's flow
    "realnvp:t=8",
    "realnvp:t=4:h=128:c=32",
    "realnvp:t=4:lr=1e-3",
    "maf:t=4",
    "nsf:t=4",
]
BASELINES = ("diag", "fullshared", "full", "realnvp:t=4")
FLOW_KINDS = ("realnvp", "maf", "nsf")


class GaussianDecoder(GenModel):
    """z ~ N(0, I), x | z ~ N(mlp(z), diag(s^2)) with a learned per-pixel scale."""

    def __init__(self, z_dim: int, x_dim: int, hidden: int) -> None:
        super().__init__()
        self.z_dim = z_dim
        self.net = mlp([z_dim, hidden, hidden, x_dim], nn.ReLU)
        self.raw_scale = nn.Parameter(torch.full((x_dim,), -1.0))

    def forward(self, x, z):
        return {"loc": self.net(z)}

    def prior(self):
        zeros = self.raw_scale.new_zeros(self.z_dim)
        return Independent(Normal(zeros, torch.ones_like(zeros)), 1)

    def likelihood(self):
        loc = self.params_["loc"]
        return Independent(Normal(loc, (F.softplus(self.raw_scale) + 1e-3).expand_as(loc)), 1)


class CholeskyInfNet(InfNet):
    """q(z|x) = N(mu(x), L(x) L(x)^T) with the lower-triangular L(x) ``[batch, L, L]`` from an MLP."""

    def __init__(self, x_dim: int, z_dim: int, hidden: int) -> None:
        super().__init__()
        self.z_dim = z_dim
        self.rows, self.cols = torch.tril_indices(z_dim, z_dim)
        self.net = mlp([x_dim, hidden, z_dim + self.rows.numel()], nn.ReLU)

    def forward(self, x):
        loc, raw = self.net(x).split([self.z_dim, self.rows.numel()], dim=-1)
        tril = raw.new_zeros(*raw.shape[:-1], self.z_dim, self.z_dim)
        tril[..., self.rows, self.cols] = raw  # [batch, L, L]
        diag = F.softplus(tril.diagonal(dim1=-2, dim2=-1)) + 1e-4
        return {"loc": loc, "scale_tril": tril.tril(-1) + torch.diag_embed(diag)}

    def distribution(self):
        return MultivariateNormal(self.params_["loc"], scale_tril=self.params_["scale_tril"])


class LocalGaussian(InfNet):
    """One free Gaussian per data point of a fixed set of ``N`` points (x only gives the batch size).

    ``loc`` ``[N, L]``; ``covariance="diag"``: ``log_scale`` ``[N, L]``; ``"full"``: a raw
    lower-triangular factor ``[N, L, L]`` (exp on the diagonal).
    """

    def __init__(self, loc: torch.Tensor, scale: torch.Tensor, covariance: str) -> None:
        super().__init__()
        self.covariance = covariance
        self.loc = nn.Parameter(loc.detach().clone())
        if covariance == "diag":
            self.log_scale = nn.Parameter(scale.detach().log())
        else:
            self.raw_tril = nn.Parameter(torch.diag_embed(scale.detach().log()))

    def forward(self, x):
        if x.shape[0] != self.loc.shape[0]:
            raise ValueError(
                f"LocalGaussian: expected the {self.loc.shape[0]} points it was built for, got {x.shape[0]}"
            )
        if self.covariance == "diag":
            return {"loc": self.loc, "scale": self.log_scale.exp()}
        raw = self.raw_tril
        tril = raw.tril(-1) + torch.diag_embed(raw.diagonal(dim1=-2, dim2=-1).exp())
        return {"loc": self.loc, "scale_tril": tril}

    def distribution(self):
        p = self.params_
        if self.covariance == "diag":
            return Independent(Normal(p["loc"], p["scale"]), 1)
        return MultivariateNormal(p["loc"], scale_tril=p["scale_tril"])


class LocalFlow(FlowInfNet):
    """A trained :class:`FlowInfNet` refined on a fixed set of points: free per-point base and context."""

    def __init__(self, amortised: FlowInfNet, x: torch.Tensor) -> None:
        nn.Module.__init__(self)
        self.x_dim, self.latent_size = amortised.x_dim, amortised.latent_size
        self.context_size = amortised.context_size
        self.flow = copy.deepcopy(amortised.flow)
        with torch.no_grad():
            p = amortised.forward(x)
        self.loc = nn.Parameter(p["loc"].clone())
        self.log_scale = nn.Parameter(p["scale"].log())
        self.context = nn.Parameter(p["context"].clone())

    def forward(self, x):
        return {"loc": self.loc, "scale": self.log_scale.exp(), "context": self.context}


def parse_config(text: str) -> dict:
    kind, *opts = text.split(":")
    if kind not in ("diag", "fullshared", "full", *FLOW_KINDS):
        raise ValueError(f"--configs: expected diag, fullshared, full, realnvp, maf or nsf, got {text!r}")
    out = {"kind": kind}
    for opt in opts:
        key, _, value = opt.partition("=")
        if key not in ("t", "h", "c", "lr"):
            raise ValueError(f"--configs: unknown option {key!r} in {text!r} (expected t, h, c, lr)")
        out[key] = float(value) if key == "lr" else int(value)
    return out


def build_q(cfg: dict, d: int, latent: int, hidden: int) -> InfNet:
    kind = cfg["kind"]
    if kind == "diag":
        return GaussianInfNet(d, latent, hidden=(hidden,))
    if kind == "fullshared":
        return GaussianInfNet(d, latent, hidden=(hidden,), covariance="full")
    if kind == "full":
        return CholeskyInfNet(d, latent, hidden)
    width = cfg.get("h", 64)
    return FlowInfNet(d, latent, hidden=(hidden,), flow=kind, transforms=cfg.get("t", 4),
                      context_size=cfg.get("c", 16), flow_hidden=(width, width))  # fmt: skip


def train(loss, params, x: torch.Tensor, steps: int, batch: int | None, lr: float, seed: int) -> float:
    """Adam on ``loss`` over minibatches of ``x`` (``batch=None``: all of x every step); CPU seconds."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(params, lr=lr)
    start = time.process_time()
    for _ in range(steps):
        xb = x if batch is None else x[torch.randint(0, x.shape[0], (batch,), generator=gen)]
        opt.zero_grad(set_to_none=True)
        loss(xb).backward()
        opt.step()
    return time.process_time() - start


@torch.no_grad()
def scores(q, p, x: torch.Tensor, args) -> dict:
    """ELBO (``--elbo-samples`` draws; its Monte Carlo se), IWAE-k and the IS log p(x), per digit."""
    z = q(x).sample(args.elbo_samples)
    log_w = p(x, z).log_prob(x, z) - q.log_prob(z)  # [N, S]
    per_draw = log_w.mean(0)  # [S]: the set's mean ELBO, one value per draw
    k, reps = args.iwae_k, 10
    z = q(x).sample(k * reps)
    log_w_k = (p(x, z).log_prob(x, z) - q.log_prob(z)).reshape(x.shape[0], reps, k)  # [N, reps, k]
    iwae = (torch.logsumexp(log_w_k, dim=-1) - math.log(k)).mean()  # IWAE-k, mean of reps estimates
    return {
        "elbo": float(log_w.mean()),
        "elbo_mc_se": float(per_draw.std() / math.sqrt(per_draw.numel())),
        f"iwae{args.iwae_k}": float(iwae),
        "is_log_px": float(log_likelihood(q, p, x, n_samples=args.is_samples).mean()),
    }


def add_gaps(rows: dict, selected_diag: str, args) -> float:
    """Gaps to the best IS estimate; shares of the gap of ``diag`` and of the selected diagonal q."""
    ref = max(r["is_log_px"] for r in rows.values())
    for r in rows.values():
        r["gap"] = ref - r["elbo"]
        r[f"iwae{args.iwae_k}_gap"] = ref - r[f"iwae{args.iwae_k}"]
    keys = {"share_of_diag_gap_closed": "diag", "share_of_selected_diag_gap_closed": selected_diag}
    for key, name in keys.items():
        diag = rows[name]["gap"] if name in rows else math.nan
        for r in rows.values():
            r[key] = 1 - r["gap"] / diag if diag > 0 else math.nan
    return ref


def main(argv: list[str] | None = None) -> int:
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--protocol", choices=("frozen", "joint"), default="frozen")
    known, rest = pre.parse_known_args(argv)
    if known.protocol == "joint":
        from benchmarks.bench_flows_joint import main as joint_main

        return joint_main(rest)
    from sklearn.datasets import load_digits

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--protocol", choices=("frozen", "joint"), default="frozen",
                    help="frozen: p trained with a diagonal q, then frozen (below); joint: p and q train "
                    "together, one VAE per q (benchmarks.bench_flows_joint, its own options)")  # fmt: skip
    ap.add_argument("--latent-size", type=int, default=4)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--vae-steps", type=int, default=2000)
    ap.add_argument("--p-objective", choices=("elbo", "iwae"), default="elbo")
    ap.add_argument("--p-particles", type=int, default=16, help="K of --p-objective iwae")
    ap.add_argument("--q-steps", type=int, default=3000)
    ap.add_argument("--configs", nargs="+", default=DEFAULT_CONFIGS)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=2e-3, help="learning rate of p and of configs without lr")
    ap.add_argument("--elbo-samples", type=int, default=100)
    ap.add_argument("--iwae-k", type=int, default=16)
    ap.add_argument("--is-samples", type=int, default=2000)
    ap.add_argument("--local-steps", type=int, default=2000, help="per-digit q steps (0: none)")
    ap.add_argument("--local-samples", type=int, default=16)
    ap.add_argument("--local-flow", default=None, help="flow refined per digit (default: the selected)")
    ap.add_argument("--local-lr", type=float, default=1e-2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/flows/digits_sweep.json"))
    args = ap.parse_args(argv)
    configs = {name: parse_config(name) for name in args.configs}
    missing = [b for b in ("diag", "realnvp:t=4") if b not in configs]
    if missing:
        raise ValueError(f"--configs: expected the baselines {missing} among them")
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    x_all = torch.as_tensor(load_digits().data, dtype=torch.float32) / 16.0
    perm = torch.randperm(x_all.shape[0], generator=torch.Generator().manual_seed(0))
    x_train, x_valid, x_test = x_all[perm[:1200]], x_all[perm[1200:1500]], x_all[perm[1500:]]
    d, latent = x_all.shape[1], args.latent_size
    p = GaussianDecoder(latent, d, args.hidden)
    q0 = GaussianInfNet(d, latent, hidden=(args.hidden,))
    p_loss = ELBO(q0, p, 1) if args.p_objective == "elbo" else IWAE(q0, p, args.p_particles)
    vae_cpu = train(p_loss, [*q0.parameters(), *p.parameters()], x_train, args.vae_steps, args.batch_size,
                    args.lr, args.seed)  # fmt: skip
    p.requires_grad_(False)

    # ---- selection on the validation split
    trained, valid = {}, {}
    for name, cfg in configs.items():
        torch.manual_seed(args.seed + 1)
        q = build_q(cfg, d, latent, args.hidden)
        cpu = train(ELBO(q, p, 1), list(q.parameters()), x_train, args.q_steps, args.batch_size,
                    cfg.get("lr", args.lr), args.seed + 1)  # fmt: skip
        trained[name] = q
        valid[name] = {**scores(q, p, x_valid, args), "train_cpu_s": round(cpu, 2)}
        print(f"[valid] {name}: ELBO {valid[name]['elbo']:.3f}, IS {valid[name]['is_log_px']:.3f} "
              f"({cpu:.0f} CPU s)", flush=True)  # fmt: skip
    flows = [n for n, c in configs.items() if c["kind"] in FLOW_KINDS]
    diags = [n for n, c in configs.items() if c["kind"] == "diag"]
    best_flow = max(flows, key=lambda n: valid[n]["elbo"])
    best_diag = max(diags, key=lambda n: valid[n]["elbo"])
    add_gaps(valid, best_diag, args)
    local_flow = best_flow if args.local_flow is None else args.local_flow
    if local_flow not in flows:
        raise ValueError(f"--local-flow: expected one of the flow configs {flows}, got {local_flow!r}")

    # ---- the test split, once, for the baselines and the selected configs
    on_test = [n for n in configs if n in BASELINES or n in (best_flow, best_diag)]
    test = {n: {**scores(trained[n], p, x_test, args), "train_cpu_s": valid[n]["train_cpu_s"]}
            for n in on_test}  # fmt: skip

    # ---- amortisation: per-digit optimised q on the test digits (analysis only)
    local = {}
    if args.local_steps > 0:
        with torch.no_grad():
            base = trained["diag"](x_test).params_
        makers = {
            "per-digit diagonal Gaussian": lambda: LocalGaussian(base["loc"], base["scale"], "diag"),
            "per-digit full-covariance Gaussian": lambda: LocalGaussian(base["loc"], base["scale"], "full"),
            f"{local_flow} refined per digit": lambda: LocalFlow(trained[local_flow], x_test),
        }
        for name, make in makers.items():
            torch.manual_seed(args.seed + 2)
            q = make()
            cpu = train(ELBO(q, p, args.local_samples), list(q.parameters()), x_test, args.local_steps, None,
                        args.local_lr, args.seed + 2)  # fmt: skip
            local[name] = {**scores(q, p, x_test, args), "train_cpu_s": round(cpu, 2)}
            print(f"[test, local] {name}: ELBO {local[name]['elbo']:.3f} ({cpu:.0f} CPU s)", flush=True)
    everything = {**test, **local}
    ref_test = add_gaps(everything, best_diag, args)
    ref_valid = max(r["is_log_px"] for r in valid.values())
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    out = {
        "settings": settings,
        "vae_train_cpu_s": round(vae_cpu, 2),
        "selected": {"flow": best_flow, "diag": best_diag},
        "valid": {"log_px_reference": ref_valid, "n": x_valid.shape[0], "rows": valid},
        "test": {"log_px_reference": ref_test, "n": x_test.shape[0], "rows": test, "per_digit": local},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    k = args.iwae_k
    for split, ref, rows in (("validation", ref_valid, valid), ("test", ref_test, everything)):
        print(f"\n{split}: log p(x) (IS, {args.is_samples} draws, best q) {ref:.2f} nats per digit")
        print(f"| q(z\\|x) | ELBO | gap | share of the gap of diag / of {best_diag} closed | IWAE-{k} gap | "
              "q train CPU s |")  # fmt: skip
        print("| --- | ---: | ---: | ---: | ---: | ---: |")
        for name, r in rows.items():
            a, b = 100 * r["share_of_diag_gap_closed"], 100 * r["share_of_selected_diag_gap_closed"]
            share = f"{a:.0f} % / {b:.0f} %"
            print(f"| {name} | {r['elbo']:.2f} ± {r['elbo_mc_se']:.2f} | {r['gap']:.2f} | {share} | "
                  f"{r[f'iwae{k}_gap']:.2f} | {r['train_cpu_s']:.0f} |")  # fmt: skip
    print(f"\nselected on validation: flow {best_flow}, diagonal {best_diag}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
