"""How much of the ELBO's gap a flow q(z|x) closes on the digits Gaussian VAE, at equal steps.

Protocol (one fixed generative model, so that only q differs): a VAE with a Gaussian decoder
(learned per-pixel scale) and a diagonal Gaussian q is trained on scikit-learn's 8x8 digits (scaled
to [0, 1], 1500 train / 297 test) for ``--vae-steps`` steps; then, with p frozen, three fresh
inference networks are trained for ``--q-steps`` steps each on the ELBO: a diagonal Gaussian q, a
full-covariance Gaussian q (:class:`bbvae.models.GaussianInfNet`, ``covariance="full"``: one
learned Cholesky factor), and a :class:`bbvae.flows.FlowInfNet` (Real NVP). On the test digits the
ELBO (``--elbo-samples`` draws) of each q is compared with log p(x), importance-sampled with
``--is-samples`` draws from the best q (the maximum over the three estimates); the gap is
``log p(x) - ELBO`` and the flow's share is ``1 - gap_flow / gap_diag``.

    python -m benchmarks.bench_flows --vae-steps 2000 --q-steps 1500 \\
        --out benchmarks/results/flows/digits.json
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
from torch import nn
from torch.distributions import Independent, Normal
from torch.nn import functional as F

from bbvae.base import GenModel
from bbvae.evaluation import log_likelihood
from bbvae.flows import FlowInfNet
from bbvae.losses import ELBO
from bbvae.models import GaussianInfNet, mlp


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


def train(loss, params, x: torch.Tensor, steps: int, batch: int, lr: float, seed: int) -> float:
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(params, lr=lr)
    start = time.process_time()
    for _ in range(steps):
        idx = torch.randint(0, x.shape[0], (batch,), generator=gen)
        opt.zero_grad()
        loss(x[idx]).backward()
        opt.step()
    return time.process_time() - start


@torch.no_grad()
def elbo(q, p, x: torch.Tensor, n: int) -> float:
    z = q(x).sample(n)
    return float((p(x, z).log_prob(x, z) - q.log_prob(z)).mean())


def main(argv: list[str] | None = None) -> int:
    from sklearn.datasets import load_digits

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--latent-size", type=int, default=4)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--vae-steps", type=int, default=2000)
    ap.add_argument("--q-steps", type=int, default=1500)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--elbo-samples", type=int, default=100)
    ap.add_argument("--is-samples", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/flows/digits.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    x_all = torch.as_tensor(load_digits().data, dtype=torch.float32) / 16.0
    perm = torch.randperm(x_all.shape[0], generator=torch.Generator().manual_seed(0))
    x_train, x_test = x_all[perm[:1500]], x_all[perm[1500:]]
    d, L = x_all.shape[1], args.latent_size
    p = GaussianDecoder(L, d, args.hidden)
    q0 = GaussianInfNet(d, L, hidden=(args.hidden,))
    vae_cpu = train(ELBO(q0, p, 1), [*q0.parameters(), *p.parameters()], x_train, args.vae_steps,
                    args.batch_size, args.lr, args.seed)  # fmt: skip
    p.requires_grad_(False)
    qs = {
        "diagonal Gaussian": GaussianInfNet(d, L, hidden=(args.hidden,)),
        "full-covariance Gaussian": GaussianInfNet(d, L, hidden=(args.hidden,), covariance="full"),
        "Real NVP flow": FlowInfNet(d, L, hidden=(args.hidden,), flow="realnvp", transforms=4),
    }
    rows = {}
    for name, q in qs.items():
        cpu = train(ELBO(q, p, 1), list(q.parameters()), x_train, args.q_steps, args.batch_size, args.lr,
                    args.seed + 1)  # fmt: skip
        with torch.no_grad():
            log_px = float(log_likelihood(q, p, x_test, n_samples=args.is_samples).mean())
        rows[name] = {"elbo": elbo(q, p, x_test, args.elbo_samples), "is_log_px": log_px, "train_cpu_s": cpu}
    ref = max(r["is_log_px"] for r in rows.values())
    for r in rows.values():
        r["gap"] = ref - r["elbo"]
    diag = rows["diagonal Gaussian"]["gap"]
    for r in rows.values():
        r["share_of_diag_gap_closed"] = 1 - r["gap"] / diag if diag > 0 else math.nan
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    out = {"settings": settings, "vae_train_cpu_s": vae_cpu, "log_px_reference": ref,
           "n_test": x_test.shape[0], "rows": rows}  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(f"log p(x) (IS, {args.is_samples} draws, best q): {ref:.2f} nats per digit")
    print("| q(z|x) | test ELBO | gap to log p(x) | share of the diagonal q's gap closed | q train CPU s |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, r in rows.items():
        print(f"| {name} | {r['elbo']:.2f} | {r['gap']:.2f} | {100 * r['share_of_diag_gap_closed']:.0f} % | "
              f"{r['train_cpu_s']:.0f} |")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
