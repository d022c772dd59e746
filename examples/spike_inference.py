"""Infer binary spike trains from calcium-fluorescence traces with four discrete-latent estimators.

Generative model of one trace of ``T`` steps (a standard model of calcium imaging, e.g.
Vogelstein et al. 2010; Speiser et al. 2017 amortise its inference with a network):

* spikes ``s_t ~ Bernoulli(rate)``, independent;
* calcium ``c_t = gamma * c_{t-1} + A * s_t`` (autoregressive decay, ``c_0 = A s_0``), i.e.
  ``c = A * K s`` with the lower-triangular decay kernel ``K[t, u] = gamma^(t - u)``;
* fluorescence ``y_t = c_t + e_t``, ``e_t ~ N(0, sigma^2)``.

The spikes are binary, so q(s | y) has no reparametrized sampler. An inference network (a
1-D convolutional net over the trace, seeing a window around each step) gives per-step
Bernoulli logits, and the model is trained on simulated traces with VIMCO, NVIL, RWS and the
Concrete relaxation, each for the same number of steps from the same initialisation. The
generative parameters (rate, gamma, A, sigma) are learned too, starting away from the truth
(``--fixed-gen`` holds them at the truth). On held-out traces with known spikes it reports
the spike-detection accuracy and F1 (q's spike probability thresholded at 0.5), the
correlation of q's probabilities with the true spikes, the ELBO and an importance-sampled
log-likelihood, and the learned generative parameters.

Run from the repository root: ``python -m examples.spike_inference`` (about 1 minute on 2 CPU
cores; or ``PYTHONPATH=. python examples/spike_inference.py``), or ``--steps 300`` for a quick
look.
"""

from __future__ import annotations

import argparse
import math
import time

import torch
from torch import nn
from torch.distributions import Bernoulli, Independent, Normal

from bbvae.base import GenModel, InfNet
from bbvae.evaluation import log_likelihood
from bbvae.losses.concrete import Concrete
from bbvae.losses.nvil import NVIL
from bbvae.losses.rws import RWS
from bbvae.losses.vimco import VIMCO

TRUTH = {"rate": 0.05, "gamma": 0.9, "amplitude": 1.0, "sigma": 0.3}
INIT = {"rate": 0.15, "gamma": 0.7, "amplitude": 0.6, "sigma": 0.6}


class CalciumModel(GenModel):
    """p(s, y): Bernoulli spikes, AR(1) calcium, Gaussian fluorescence noise; latents ``[T]``.

    Accepts real-valued ``s`` in ``[0, 1]^T`` (the Concrete relaxation feeds those), since the
    calcium is linear in ``s``.

    ``params_``: ``loc`` ``[batch, n_samples, T]`` (the calcium ``c``).
    """

    def __init__(self, n_steps: int, rate: float, gamma: float, amplitude: float, sigma: float) -> None:
        super().__init__()
        self.n_steps = n_steps
        self.rate_logit = nn.Parameter(torch.tensor(math.log(rate / (1 - rate))))
        self.gamma_logit = nn.Parameter(torch.tensor(math.log(gamma / (1 - gamma))))
        self.log_amplitude = nn.Parameter(torch.tensor(math.log(amplitude)))
        self.log_sigma = nn.Parameter(torch.tensor(math.log(sigma)))
        lag = torch.arange(n_steps).unsqueeze(1) - torch.arange(n_steps).unsqueeze(0)  # [T, T]: t - u
        self.register_buffer("lag", lag.to(torch.get_default_dtype()))

    def kernel(self) -> torch.Tensor:
        """``[T, T]`` lower-triangular ``A * gamma^(t - u)`` for ``t >= u``, else 0."""
        gamma = torch.sigmoid(self.gamma_logit)
        decay = gamma ** self.lag.clamp(min=0)
        return self.log_amplitude.exp() * torch.where(self.lag >= 0, decay, torch.zeros_like(decay))

    def forward(self, x, z: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"loc": z @ self.kernel().T}  # [batch, K, T]: c = A K s, no loop over time

    def prior(self):
        return Independent(Bernoulli(logits=self.rate_logit.expand(self.n_steps)), 1)

    def likelihood(self):
        loc = self.params_["loc"]
        return Independent(Normal(loc, self.log_sigma.exp().expand_as(loc)), 1)

    @torch.no_grad()
    def summary(self) -> dict[str, float]:
        return {
            "rate": float(torch.sigmoid(self.rate_logit)),
            "gamma": float(torch.sigmoid(self.gamma_logit)),
            "amplitude": float(self.log_amplitude.exp()),
            "sigma": float(self.log_sigma.exp()),
        }


class SpikeInfNet(InfNet):
    """q(s | y): per-step Bernoulli logits from a 1-D conv net over the trace (non-causal window).

    ``params_``: ``logits`` ``[batch, T]``.
    """

    def __init__(self, channels: int = 16, width: int = 9) -> None:
        super().__init__()
        pad = width // 2
        self.net = nn.Sequential(
            nn.Conv1d(1, channels, width, padding=pad),
            nn.Tanh(),
            nn.Conv1d(channels, channels, width, padding=pad),
            nn.Tanh(),
            nn.Conv1d(channels, 1, 1),
        )

    def forward(self, y: torch.Tensor) -> dict[str, torch.Tensor]:
        if y.dim() != 2:
            raise ValueError(f"SpikeInfNet: expected y of shape [batch, T], got {list(y.shape)}")
        return {"logits": self.net(y.unsqueeze(1)).squeeze(1)}  # [batch, 1, T] -> [batch, T]

    def distribution(self):
        return Independent(Bernoulli(logits=self.params_["logits"]), 1)


def make_loss(name: str, inf_net: InfNet, gen_model: GenModel, k: int, temperature: float):
    if name == "VIMCO":
        return VIMCO(inf_net, gen_model, n_samples=k)
    if name == "NVIL":
        return NVIL(inf_net, gen_model, n_samples=1)
    if name == "RWS":
        return RWS(inf_net, gen_model, n_samples=k)
    if name == "Concrete":
        return Concrete(inf_net, gen_model, temperature=temperature, n_samples=1)
    raise ValueError(f"unknown estimator {name!r}; expected VIMCO, NVIL, RWS or Concrete")


@torch.no_grad()
def evaluate(inf_net, gen_model, y, spikes, n_is: int) -> dict[str, float]:
    probs = torch.sigmoid(inf_net(y).params_["logits"])  # [n, T]
    pred = (probs > 0.5).to(spikes.dtype)
    tp = float((pred * spikes).sum())
    fp = float((pred * (1 - spikes)).sum())
    fn = float(((1 - pred) * spikes).sum())
    p_c, s_c = probs - probs.mean(), spikes - spikes.mean()
    corr = float((p_c * s_c).sum() / (p_c.norm() * s_c.norm()))
    z = inf_net(y).sample(16)  # ELBO from 16 draws per trace
    elbo = (gen_model(y, z).log_prob(y, z) - inf_net.log_prob(z)).mean()
    return {
        "accuracy": float((pred == spikes).float().mean()),
        "f1": 2 * tp / max(2 * tp + fp + fn, 1.0),
        "corr": corr,
        "elbo": float(elbo),
        "log_lik": float(log_likelihood(inf_net, gen_model, y, n_samples=n_is, chunk_size=250).mean()),
    }


def main(argv=None) -> dict[str, dict[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=1500, help="optimisation steps per estimator")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--T", type=int, default=100, help="time steps per trace")
    parser.add_argument("--n-train", type=int, default=1024)
    parser.add_argument("--n-test", type=int, default=256)
    parser.add_argument("--k", type=int, default=5, help="samples per trace for VIMCO and RWS")
    parser.add_argument("--temperature", type=float, default=2.0 / 3.0, help="Concrete temperature")
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--n-is", type=int, default=1000, help="importance samples for the test log p(y)")
    parser.add_argument("--fixed-gen", action="store_true", help="hold the generative model at the truth")
    parser.add_argument("--estimators", default="VIMCO,NVIL,RWS,Concrete")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads (this small model runs best on one)"
    )
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    truth = CalciumModel(args.T, **TRUTH)
    y_train, s_train = truth.sample(args.n_train)  # [n, T] each
    y_test, s_test = truth.sample(args.n_test)
    print(
        f"{args.n_train} training / {args.n_test} test traces of {args.T} steps; true spike rate "
        f"{TRUTH['rate']}, observed {float(s_train.mean()):.3f}; {args.steps} steps of batch "
        f"{args.batch_size} per estimator"
    )
    init_inf = SpikeInfNet()
    init_gen = CalciumModel(args.T, **(TRUTH if args.fixed_gen else INIT))

    results = {}
    for name in args.estimators.split(","):
        torch.manual_seed(args.seed + 1)
        inf_net, gen_model = SpikeInfNet(), CalciumModel(args.T, **INIT)
        inf_net.load_state_dict(init_inf.state_dict())  # the same start for every estimator
        gen_model.load_state_dict(init_gen.state_dict())
        gen_model.requires_grad_(not args.fixed_gen)
        loss = make_loss(name, inf_net, gen_model, args.k, args.temperature)
        loss.prepare(y_train[: args.batch_size])  # NVIL builds its baseline network from the data shape
        opt = torch.optim.Adam([p for p in loss.parameters() if p.requires_grad], lr=args.lr)
        start = time.perf_counter()
        for _ in range(args.steps):
            idx = torch.randint(0, args.n_train, (args.batch_size,))
            opt.zero_grad(set_to_none=True)
            loss(y_train[idx]).backward()
            opt.step()
        seconds = time.perf_counter() - start
        results[name] = {
            **evaluate(inf_net, gen_model, y_test, s_test, args.n_is),
            **gen_model.summary(),
            "ms_step": 1000 * seconds / args.steps,
        }
        print(f"  {name}: {seconds:.1f} s")

    header = (
        f"{'estimator':<10} {'accuracy':>8} {'F1':>6} {'corr':>6} {'ELBO':>9} {'log p(y)':>9} "
        f"{'rate':>6} {'gamma':>6} {'A':>6} {'sigma':>6} {'ms/step':>8}"
    )
    print(
        "\nHeld-out traces (ELBO and log p(y) in nats per trace; log p(y) importance-sampled, "
        f"S = {args.n_is}):"
    )
    print(header)
    print("-" * len(header))
    for name, r in results.items():
        print(
            f"{name:<10} {r['accuracy']:>8.4f} {r['f1']:>6.3f} {r['corr']:>6.3f} {r['elbo']:>9.2f} "
            f"{r['log_lik']:>9.2f} {r['rate']:>6.3f} {r['gamma']:>6.3f} {r['amplitude']:>6.3f} "
            f"{r['sigma']:>6.3f} {r['ms_step']:>8.1f}"
        )
    t = TRUTH
    print(
        f"{'truth':<10} {'':>8} {'':>6} {'':>6} {'':>9} {'':>9} {t['rate']:>6.3f} {t['gamma']:>6.3f} "
        f"{t['amplitude']:>6.3f} {t['sigma']:>6.3f}"
    )
    return results


if __name__ == "__main__":
    main()
