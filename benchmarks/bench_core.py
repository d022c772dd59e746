"""Time one training step (forward, backward, Adam) of ELBO and IWAE on the reference models.

Run: python -m pytest benchmarks/bench_core.py --benchmark-columns=mean,stddev,rounds
"""

import pytest
import torch

from bbvae.losses import ELBO, IWAE
from bbvae.models import BernoulliInfNet, GaussianInfNet, LinearGaussianGenModel, SigmoidBeliefNet

BATCH, X_DIM, Z_DIM, HIDDEN = 64, 784, 50, (200,)


def _step_fn(loss, x):
    opt = torch.optim.Adam(loss.parameters(), lr=1e-3)

    def step():
        opt.zero_grad(set_to_none=True)
        loss(x).backward()
        opt.step()

    return step


def _linear_gaussian():
    torch.manual_seed(0)
    p = LinearGaussianGenModel(Z_DIM, X_DIM)
    q = GaussianInfNet(X_DIM, Z_DIM, hidden=HIDDEN)
    x, _ = p.sample(BATCH)
    return q, p, x


def _bernoulli():
    torch.manual_seed(0)
    p = SigmoidBeliefNet(Z_DIM, X_DIM, hidden=HIDDEN)
    q = BernoulliInfNet(X_DIM, Z_DIM, hidden=HIDDEN)
    x, _ = p.sample(BATCH)
    return q, p, x


@pytest.mark.parametrize("k", [1, 16, 64])
@pytest.mark.parametrize("loss_cls", [ELBO, IWAE], ids=["elbo", "iwae"])
def test_linear_gaussian_step(benchmark, loss_cls, k):
    q, p, x = _linear_gaussian()
    benchmark.group = "linear-Gaussian"
    benchmark(_step_fn(loss_cls(q, p, n_samples=k), x))


@pytest.mark.parametrize("k", [1, 16, 64])
def test_bernoulli_score_elbo_step(benchmark, k):
    # IWAE needs a reparametrizable q: Bernoulli latents use the score-function ELBO here
    # (VIMCO / NVIL / RWS are timed in bench_estimators_sbn.py).
    q, p, x = _bernoulli()
    benchmark.group = "Bernoulli (sigmoid belief net)"
    benchmark(_step_fn(ELBO(q, p, n_samples=k, estimator="score"), x))
