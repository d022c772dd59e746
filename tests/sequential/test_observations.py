"""Observation families and small building blocks of bbvae.sequential.nets."""

import math

import pytest
import torch
from torch import nn
from torch.distributions import Bernoulli, Categorical, Independent, Laplace, Normal

from bbvae.models import mlp
from bbvae.sequential.nets import (
    BernoulliObservation,
    CallableObservation,
    CategoricalObservation,
    MultiInputMLP,
    NormalObservation,
    make_observation,
    normal_log_prob,
    reverse_padded,
    shift_right,
    standard_normal_log_prob,
)
from bbvae.sequential.vrnn import VRNN

DTYPES = [torch.float32, torch.float64]


@pytest.mark.parametrize("dtype", DTYPES)
def test_bernoulli_log_prob_matches_torch(dtype):
    torch.manual_seed(0)
    obs = BernoulliObservation(5)
    params = torch.randn(3, 4, 5, dtype=dtype) * 3
    x = torch.bernoulli(torch.full((3, 4, 5), 0.4, dtype=dtype))
    ref = Independent(Bernoulli(logits=params), 1).log_prob(x)
    got = obs.log_prob(params, x)
    assert got.shape == (3, 4) and got.dtype == dtype
    torch.testing.assert_close(got, ref)
    torch.testing.assert_close(obs.distribution(params).log_prob(x), ref)
    sample = obs.sample(params)
    assert sample.shape == (3, 4, 5) and set(sample.unique().tolist()) <= {0.0, 1.0}


@pytest.mark.parametrize("dtype", DTYPES)
def test_normal_log_prob_matches_torch(dtype):
    torch.manual_seed(0)
    obs = NormalObservation(3, min_scale=1e-3)
    params = torch.randn(2, 5, 6, dtype=dtype)
    x = torch.randn(2, 5, 3, dtype=dtype)
    loc, raw = params.split(3, dim=-1)
    scale = nn.functional.softplus(raw + 0.25) + 1e-3
    ref = Independent(Normal(loc, scale), 1).log_prob(x)
    torch.testing.assert_close(obs.log_prob(params, x), ref)
    torch.testing.assert_close(obs.distribution(params).log_prob(x), ref)
    assert obs.param_size == 6 and obs.sample(params).shape == (2, 5, 3)
    z, loc1, scale1 = (
        torch.randn(4, 3, dtype=dtype),
        torch.randn(4, 3, dtype=dtype),
        torch.rand(4, 3, dtype=dtype) + 0.1,
    )
    torch.testing.assert_close(
        normal_log_prob(z, loc1, scale1), Independent(Normal(loc1, scale1), 1).log_prob(z)
    )
    torch.testing.assert_close(
        standard_normal_log_prob(z), Independent(Normal(0.0, torch.ones_like(z)), 1).log_prob(z)
    )


@pytest.mark.parametrize("dtype", DTYPES)
def test_categorical_log_prob_matches_torch(dtype):
    torch.manual_seed(0)
    obs = CategoricalObservation(7, embedding_size=4)
    params = torch.randn(3, 2, 7, dtype=dtype)
    x = torch.randint(0, 7, (3, 1))  # broadcast over the particle dim, as in a step
    ref = Categorical(logits=params).log_prob(x.expand(3, 2))
    torch.testing.assert_close(obs.log_prob(params, x), ref)
    sample = obs.sample(params)
    assert sample.shape == (3, 2) and sample.dtype == torch.long
    assert bool(((sample >= 0) & (sample < 7)).all())
    assert obs.features(x).shape == (3, 1, 4)


def test_categorical_sampling_frequencies():
    # 20000 draws from p = softmax(logits): |freq - p| < 4 standard errors sqrt(p(1-p)/n).
    torch.manual_seed(1)
    obs = CategoricalObservation(4)
    logits = torch.tensor([0.0, 1.0, -1.0, 0.5], dtype=torch.float64)
    n = 20000
    draws = obs.sample(logits.expand(n, 4))
    freq = torch.bincount(draws, minlength=4).double() / n
    p = torch.softmax(logits, 0)
    assert bool(((freq - p).abs() < 4 * (p * (1 - p) / n).sqrt()).all())


def test_callable_observation_in_a_model():
    # A user's family: a Laplace with a learned scale, decoded by the user's own network.
    def laplace(params):
        loc, raw = params.split(2, dim=-1)
        return Independent(Laplace(loc, nn.functional.softplus(raw) + 1e-3), 1)

    decoder = nn.Linear(6 + 6, 4)  # [hidden + encoded] -> 2 * obs_dim
    model = VRNN(2, latent_size=6, fc_hidden_sizes=(), observation=laplace, decoder=decoder)
    assert isinstance(model.observation, CallableObservation)
    x = torch.randn(3, 4, 2)
    run = model(x, n_particles=2)
    assert run.log_p.shape == (3, 2) and bool(torch.isfinite(run.log_p).all())
    xs, zs = model.gen_model.sample(2, 3)
    assert xs.shape == (2, 3, 2) and zs.shape == (2, 3, 6)
    with pytest.raises(ValueError, match="decoder"):
        VRNN(2, latent_size=6, observation=laplace)


def test_integer_symbols_of_any_width_are_accepted():
    torch.manual_seed(3)
    model = VRNN(5, latent_size=3, observation="categorical", embedding_size=2).double()
    x = torch.randint(0, 5, (2, 4))
    torch.manual_seed(4)
    ref = model(x, n_particles=2)
    torch.manual_seed(4)
    narrow = model(x.to(torch.int32), n_particles=2)
    torch.testing.assert_close(narrow.log_p, ref.log_p)


def test_observation_argument_errors():
    with pytest.raises(ValueError, match="observation"):
        make_observation("poisson", 3, None, "VRNN")
    with pytest.raises(TypeError, match="observation"):
        make_observation(3.0, 3, None, "VRNN")
    with pytest.raises(ValueError, match="x_mean"):
        VRNN(5, latent_size=4, observation="categorical", x_mean=torch.zeros(5))
    with pytest.raises(ValueError, match=r"x_mean of shape \[3\]"):
        VRNN(3, latent_size=4, x_mean=torch.zeros(4))
    with pytest.raises(ValueError, match="cell"):
        VRNN(3, latent_size=4, cell="rnn")
    model = VRNN(3, latent_size=4)
    with pytest.raises(ValueError, match=r"expected x of shape \[batch, T, 3\], got \[2, 5, 4\]"):
        model(torch.zeros(2, 5, 4))
    with pytest.raises(TypeError, match="floating-point"):
        model(torch.zeros(2, 5, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="input_size=0"):
        model(torch.zeros(2, 5, 3), inputs=torch.zeros(2, 5, 1))
    cat = VRNN(5, latent_size=4, observation="categorical")
    with pytest.raises(TypeError, match="integer"):
        cat(torch.zeros(2, 5))
    with_inputs = VRNN(3, latent_size=4, input_size=2)
    with pytest.raises(ValueError, match="inputs"):
        with_inputs(torch.zeros(2, 5, 3))


@pytest.mark.parametrize("dtype", DTYPES)
def test_init_output_bias(dtype):
    model = VRNN(4, latent_size=3).to(dtype)
    mean = torch.tensor([0.0, 0.25, 0.5, 1.0], dtype=dtype)
    model.init_output_bias(mean)
    bias = model.decoder[-1].bias
    assert bool(torch.isfinite(bias).all())
    torch.testing.assert_close(bias[1:3], torch.logit(mean[1:3]))
    assert bias[0] < -8 and bias[3] > 8  # clamped, not infinite
    with pytest.raises(ValueError, match=r"mean of shape \[4\]"):
        model.init_output_bias(torch.zeros(3, dtype=dtype))
    normal = VRNN(2, latent_size=3, observation="normal")
    normal.init_output_bias(torch.tensor([1.5, -2.0]))
    torch.testing.assert_close(normal.decoder[-1].bias[:2], torch.tensor([1.5, -2.0]))


def test_multi_input_mlp_equals_mlp_on_concatenation():
    torch.manual_seed(0)
    net = MultiInputMLP([3, 2], [5], 4).double()
    ref = mlp([5, 5, 4], nn.ReLU).double()
    with torch.no_grad():
        ref[0].weight.copy_(torch.cat([net.inputs[0].weight, net.inputs[1].weight], dim=1))
        ref[0].bias.copy_(net.bias)
        ref[2].weight.copy_(net.tail[1][0].weight)
        ref[2].bias.copy_(net.tail[1][0].bias)
    a, b = torch.randn(6, 2, 3, dtype=torch.float64), torch.randn(6, 1, 2, dtype=torch.float64)
    expected = ref(torch.cat([a, b.expand(6, 2, 2)], -1))
    torch.testing.assert_close(net(a, b), expected)
    # The split path: project the shared input once, finish per particle.
    torch.testing.assert_close(net.finish(net.project(0, a) + net.project(1, b)), expected)
    # First-layer init matches nn.Linear on the concatenated input: |w| <= 1 / sqrt(fan_in = 5).
    assert float(net.inputs[0].weight.detach().abs().max()) <= 1 / math.sqrt(5)


def test_reverse_padded_and_shift():
    seq = torch.arange(2 * 4, dtype=torch.float64).reshape(2, 4, 1)
    lengths = torch.tensor([4, 2])
    rev = reverse_padded(seq, lengths)
    assert rev[0, :, 0].tolist() == [3.0, 2.0, 1.0, 0.0]
    assert rev[1, :, 0].tolist() == [5.0, 4.0, 6.0, 7.0]  # padding stays in place
    torch.testing.assert_close(reverse_padded(rev, lengths), seq)
    assert shift_right(seq)[1, :, 0].tolist() == [0.0, 4.0, 5.0, 6.0]
