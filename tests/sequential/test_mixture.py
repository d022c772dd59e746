"""The Gaussian-mixture observation family: exact log-densities, draws, and the models that use it."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from bbvae.losses.fivo import FIVO
from bbvae.losses.iwae import IWAE
from bbvae.sequential import RNN, SRNN, VRNN, GaussianMixtureObservation, NormalObservation
from bbvae.sequential.observations import make_observation


def _by_hand(params: np.ndarray, x: np.ndarray, k: int, d: int) -> np.ndarray:
    """log sum_k softmax(logits)_k prod_j N(x_j; mu_kj, s_kj), written out in float64 numpy."""
    logits, loc, raw = params[..., :k], params[..., k : k + k * d], params[..., k + k * d :]
    loc = loc.reshape(*loc.shape[:-1], k, d)
    scale = np.log1p(np.exp(raw.reshape(*raw.shape[:-1], k, d) + 0.25)) + 1e-3
    log_w = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    z = (x[..., None, :] - loc) / scale
    log_comp = (-0.5 * z**2 - np.log(scale) - 0.5 * math.log(2 * math.pi)).sum(-1)
    a = log_w + log_comp
    top = a.max(-1, keepdims=True)
    return (top + np.log(np.exp(a - top).sum(-1, keepdims=True)))[..., 0]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_log_prob_is_the_logsumexp_of_the_components(dtype):
    torch.manual_seed(0)
    k, d = 4, 3
    obs = GaussianMixtureObservation(d, n_components=k)
    assert obs.param_size == k + 2 * k * d and obs.obs_shape == (d,)
    params = torch.randn(2, 5, obs.param_size, dtype=dtype)
    x = torch.randn(2, 5, d, dtype=dtype) * 2
    got = obs.log_prob(params, x)
    assert got.shape == (2, 5) and got.dtype == dtype
    ref = _by_hand(params.double().numpy(), x.double().numpy(), k, d)
    tol = 1e-10 if dtype == torch.float64 else 1e-4
    np.testing.assert_allclose(got.double().numpy(), ref, rtol=tol, atol=tol)
    torch.testing.assert_close(obs.distribution(params).log_prob(x), got)


def test_one_component_is_the_normal_family():
    torch.manual_seed(1)
    d = 5
    gmm, normal = GaussianMixtureObservation(d, n_components=1), NormalObservation(d)
    params = torch.randn(7, 2 * d, dtype=torch.float64)
    x = torch.randn(7, d, dtype=torch.float64)
    with_logit = torch.cat([torch.randn(7, 1, dtype=torch.float64), params], dim=-1)
    torch.testing.assert_close(gmm.log_prob(with_logit, x), normal.log_prob(params, x))


def test_draws_match_the_mixture_moments():
    torch.manual_seed(2)
    k, d, n = 3, 2, 40_000
    obs = GaussianMixtureObservation(d, n_components=k)
    one = torch.randn(obs.param_size, dtype=torch.float64) * 1.5
    mean, var = obs.mean_variance(one)
    dist = obs.distribution(one)
    torch.testing.assert_close(mean, dist.mean)
    torch.testing.assert_close(var, dist.variance)
    x = obs.sample(one.expand(n, -1))
    assert x.shape == (n, d) and x.dtype == torch.float64
    se_mean = (var / n).sqrt()
    assert ((x.mean(0) - mean).abs() < 4 * se_mean).all(), (x.mean(0), mean, se_mean)
    dev2 = (x - mean).square()
    se_var = dev2.std(0) / math.sqrt(n)
    assert ((dev2.mean(0) - var).abs() < 4 * se_var).all(), (dev2.mean(0), var, se_var)
    # Component frequencies: with components far apart, each draw's component is its nearest mean,
    # and the counts are binomial(n, pi_j).
    logits = torch.tensor([0.3, -1.0, 0.7], dtype=torch.float64)
    loc = torch.tensor([[0.0, 0.0], [20.0, 0.0], [0.0, 20.0]], dtype=torch.float64)
    far = torch.cat([logits, loc.reshape(-1), torch.full((k * d,), -3.0, dtype=torch.float64)])
    x = obs.sample(far.expand(n, -1))
    nearest = (x.unsqueeze(-2) - loc).square().sum(-1).argmin(-1)
    freq = torch.bincount(nearest, minlength=k).double() / n
    pi = torch.softmax(logits, 0)
    assert ((freq - pi).abs() < 4 * (pi * (1 - pi) / n).sqrt()).all(), (freq, pi)


def test_init_bias_starts_every_component_at_the_mean():
    obs = GaussianMixtureObservation(3, n_components=2)
    bias = torch.randn(obs.param_size)
    mean = torch.tensor([0.5, -1.0, 2.0])
    obs.init_bias(bias, mean)
    log_w, loc, _ = obs.parts(bias)
    torch.testing.assert_close(log_w.exp(), torch.full((2,), 0.5))
    torch.testing.assert_close(loc, mean.expand(2, 3))


def test_errors_name_the_argument():
    with pytest.raises(ValueError, match="n_components"):
        GaussianMixtureObservation(3, n_components=0)
    obs = GaussianMixtureObservation(3, n_components=2)
    with pytest.raises(ValueError, match=r"expected params \[\.\.\., 14\] \(K=2, D=3\), got \[\.\.\., 13\]"):
        obs.log_prob(torch.zeros(4, 13), torch.zeros(4, 3))
    fam = make_observation("gmm", 6, None, "VRNN")
    assert isinstance(fam, GaussianMixtureObservation) and fam.n_components == 20


@pytest.mark.parametrize(
    "cls,kwargs",
    [(VRNN, dict(latent_size=4)), (SRNN, dict(latent_size=4)), (RNN, dict(hidden_size=8))],
)
def test_models_train_with_mixture_outputs(cls, kwargs):
    torch.manual_seed(3)
    d = 6
    model = cls(d, observation=GaussianMixtureObservation(d, n_components=3), **kwargs)
    x = torch.randn(3, 7, d)
    lengths = torch.tensor([7, 5, 2])
    model.init_output_bias(x.mean(dim=(0, 1)))
    q, p = model.inf_net, model.gen_model
    loss = FIVO(q, p, 3) if cls is not RNN else IWAE(q, p, 1)
    score = IWAE(q, p, 8)

    def seeded_bound() -> float:
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            return float(score(x, lengths=lengths))

    before = seeded_bound()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    values = []
    for _ in range(20):
        opt.zero_grad()
        value = loss(x, lengths=lengths)
        value.backward()
        opt.step()
        values.append(float(value.detach()))
    assert all(math.isfinite(v) for v in values)
    assert seeded_bound() < before - 1.0  # the negative bound fell by more than a nat


def test_sequence_model_with_gmm_observation():
    from bbvae.sequential import SequenceModel

    torch.manual_seed(4)
    seqs = [torch.randn(n, 5) for n in (9, 6, 8, 7)]
    for name in ("vrnn", "rnn", "srnn"):
        est = SequenceModel(
            model=name, bound="iwae", observation="gmm", n_components=3, latent_size=4, max_steps=4,
            batch_size=2, random_state=0,
        )
        est.fit(seqs)
        assert isinstance(est.model_.observation, GaussianMixtureObservation)
        assert est.model_.observation.n_components == 3 and est.observation_ == "gmm"
        assert all(math.isfinite(v) for v in est.loss_history_)
        assert math.isfinite(est.score(seqs))
        x, _ = est.sample(2, 3)
        assert x.shape == (2, 3, 5) and bool(torch.isfinite(x).all())
    with pytest.raises(ValueError, match="n_components"):
        SequenceModel(observation="gmm", n_components=0, max_steps=1).fit(seqs)
