"""Gradient estimators for discrete latents on binarised 8x8 digits: a plain script, not a test.

A sigmoid-belief-net VAE (``--z-dim`` Bernoulli latents, MLP decoder and encoder with one
hidden layer) is trained on the scikit-learn digits (1,797 images of 8x8 pixels, 0..16,
binarised as pixel > 7; a fixed 80/20 train/test split) with each estimator for the same
number of steps, batch size, learning rate and initialisation:

* ELBO-score: ``ELBO(estimator="score")``, REINFORCE without a baseline (K = 1);
* NVIL: score function with a learned input-dependent baseline and normalisation (K = 1);
* VIMCO: multi-sample bound with leave-one-out baselines (K = ``--k``);
* RWS: reweighted wake-sleep (K = ``--k``);
* Concrete: the relaxed ELBO at temperature 2/3 (K = 1);
* IWAE-DReG (K = ``--k``): needs a reparametrizable q, so this row trains a *Gaussian*-latent
  VAE of the same size (same decoder architecture on ``--z-dim`` Gaussian latents); it is a
  reference point, not the same model.

Per estimator it prints the log-likelihood estimate on the training and the test images
(``bbvae.evaluation.log_likelihood``, importance sampling with S = 1000 draws from q; their
difference shows overfitting), the test ELBO, the signal-to-noise ratio of
the inference network's (and the generative model's) gradient at the end of training, from
``bbvae.diagnostics.gradient_stats`` over ``--snr-draws`` gradient draws on one training batch:
``||E g|| / sqrt(tr Cov g)`` (its ``snr_norm``; the per-coordinate mean of |mean| / std is
dominated by near-deterministic coordinates once q saturates), and the training time per step.

Run from the repository root: ``python -m benchmarks.bench_estimators_sbn`` (about 10 minutes
on 2 CPU cores with the defaults) or ``--steps 500`` for a quick look.
"""

from __future__ import annotations

import argparse
import math
import platform
import time

import torch
from torch.distributions import Bernoulli, Independent, Normal

from bbvae.base import GenModel
from bbvae.diagnostics import gradient_stats
from bbvae.evaluation import log_likelihood
from bbvae.losses.concrete import Concrete
from bbvae.losses.elbo import ELBO
from bbvae.losses.iwae import IWAE
from bbvae.losses.nvil import NVIL
from bbvae.losses.rws import RWS
from bbvae.losses.vimco import VIMCO
from bbvae.models import BernoulliInfNet, GaussianInfNet, SigmoidBeliefNet, mlp

ESTIMATORS = ("ELBO-score", "NVIL", "VIMCO", "RWS", "Concrete", "IWAE-DReG")


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


def load_digits_binary(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    pixels = load_digits().data  # [1797, 64], values 0..16
    binary = torch.tensor(pixels > 7, dtype=torch.float32)
    train, test = train_test_split(binary, test_size=0.2, random_state=seed)
    return torch.as_tensor(train), torch.as_tensor(test)


def build(name: str, args, x_dim: int):
    hidden = (args.hidden,)
    if name == "IWAE-DReG":
        inf_net = GaussianInfNet(x_dim, args.z_dim, hidden=hidden)
        gen_model = GaussianLatentVAE(args.z_dim, x_dim, hidden)
        return inf_net, gen_model, IWAE(inf_net, gen_model, n_samples=args.k, estimator="dreg")
    inf_net = BernoulliInfNet(x_dim, args.z_dim, hidden=hidden)
    gen_model = SigmoidBeliefNet(args.z_dim, x_dim, hidden=hidden)
    if name == "ELBO-score":
        loss = ELBO(inf_net, gen_model, estimator="score")
    elif name == "NVIL":
        loss = NVIL(inf_net, gen_model, n_samples=1)
    elif name == "VIMCO":
        loss = VIMCO(inf_net, gen_model, n_samples=args.k)
    elif name == "RWS":
        loss = RWS(inf_net, gen_model, n_samples=args.k)
    elif name == "Concrete":
        loss = Concrete(inf_net, gen_model, temperature=2.0 / 3.0)
    else:
        raise ValueError(f"unknown estimator {name!r}; expected one of {ESTIMATORS}")
    return inf_net, gen_model, loss


@torch.no_grad()
def test_elbo(inf_net, gen_model, x, n_draws: int = 100) -> float:
    z = inf_net(x).sample(n_draws)  # [n, S, z_dim]
    return float((gen_model(x, z).log_prob(x, z) - inf_net.log_prob(z)).mean())


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=40000, help="optimisation steps per estimator")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--z-dim", type=int, default=20)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--k", type=int, default=5, help="samples for VIMCO, RWS and IWAE-DReG")
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--n-is", type=int, default=1000, help="importance samples for test log p(x)")
    parser.add_argument("--snr-draws", type=int, default=200)
    parser.add_argument("--estimators", default=",".join(ESTIMATORS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads (small models: 1 is fastest)"
    )
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    x_train, x_test = load_digits_binary(args.seed)
    x_dim = x_train.shape[1]
    print(
        f"digits: {x_train.shape[0]} train / {x_test.shape[0]} test images of {x_dim} binary pixels; "
        f"{args.z_dim} latents, hidden {args.hidden}; {args.steps} steps of batch {args.batch_size}, "
        f"Adam lr {args.lr}; torch {torch.__version__}, {args.threads} thread(s), "
        f"{platform.processor() or 'cpu'}"
    )
    snr_batch = x_train[: args.batch_size]
    rows = []
    for name in args.estimators.split(","):
        torch.manual_seed(args.seed)  # same initialisation and batch order for every estimator
        inf_net, gen_model, loss = build(name, args, x_dim)
        order = torch.Generator().manual_seed(args.seed)
        opt = None
        warmup = min(10, args.steps - 1)  # first calls (lazy initialisation) are not timed
        for step in range(args.steps):
            if step == warmup:
                start = time.perf_counter()
            idx = torch.randint(0, x_train.shape[0], (args.batch_size,), generator=order)
            value = loss(x_train[idx])
            if opt is None:  # after the first call: NVIL creates its baseline network there
                opt = torch.optim.Adam(loss.parameters(), lr=args.lr)
            opt.zero_grad(set_to_none=True)
            value.backward()
            opt.step()
        ms_step = 1000 * (time.perf_counter() - start) / (args.steps - warmup)
        torch.manual_seed(args.seed + 1)
        log_px = float(log_likelihood(inf_net, gen_model, x_test, n_samples=args.n_is).mean())
        train_log_px = float(log_likelihood(inf_net, gen_model, x_train, n_samples=args.n_is).mean())
        elbo = test_elbo(inf_net, gen_model, x_test)
        stats = gradient_stats(loss, snr_batch, args.snr_draws)
        rows.append(
            (
                name,
                train_log_px,
                log_px,
                elbo,
                stats["inf_net"].snr_norm,
                stats["gen_model"].snr_norm,
                ms_step,
            )
        )
        print(f"  {name}: done in {ms_step * args.steps / 1000:.0f} s", flush=True)

    header = (
        f"| {'estimator':<10} | {'train log p(x)':>14} | {'test log p(x)':>13} | {'test ELBO':>9} "
        f"| {'SNR q':>6} | {'SNR p':>6} | {'ms/step':>7} |"
    )
    print(
        f"\nnats per image; log p(x) by importance sampling with S = {args.n_is}; "
        "SNR = ||mean gradient|| / sqrt(trace of its covariance)"
    )
    print(header)
    print("|" + "|".join("-" * (len(c)) for c in header.split("|")[1:-1]) + "|")
    for name, train_log_px, log_px, elbo, snr_q, snr_p, ms in rows:
        label = name + ("*" if name == "IWAE-DReG" else "")
        snr_q_s = f"{snr_q:6.3f}" if math.isfinite(snr_q) else f"{'n/a':>6}"
        print(
            f"| {label:<10} | {train_log_px:>14.2f} | {log_px:>13.2f} | {elbo:>9.2f} | {snr_q_s} "
            f"| {snr_p:>6.3f} | {ms:>7.1f} |"
        )
    if "IWAE-DReG" in args.estimators:
        print("* Gaussian latents (a reparametrizable q), same layer sizes: not the same model.")


if __name__ == "__main__":
    main()
