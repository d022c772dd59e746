"""NVIL (and the plain score-function ELBO it improves on) against exact ELBO gradients."""

import math

import pytest
import torch
from torch import nn

from bbvae.diagnostics import gradient_stats
from bbvae.losses.elbo import ELBO
from bbvae.losses.nvil import NVIL


def _nvil_ready(q, p, x, **kwargs):
    """An NVIL whose baseline network exists and outputs non-zero values, with running stats."""
    loss = NVIL(q, p, **kwargs)
    for _ in range(3):
        loss(x)
    if kwargs.get("baseline", None) is None:
        with torch.no_grad():  # a baseline that is far from zero, to show it adds no bias
            loss.baseline_net_.out.weight.normal_(0.0, 1.0)
            loss.baseline_net_.out.bias.fill_(-3.0)
        assert loss(x) is not None and loss.baseline_.abs().min() > 0.1
    return loss


SCORE_LOSSES = {
    "elbo-score": lambda q, p, x: ELBO(q, p, estimator="score"),
    "nvil": lambda q, p, x: _nvil_ready(q, p, x, normalize=False),
    "nvil-centering-only": lambda q, p, x: _nvil_ready(q, p, x, normalize=False, baseline=False),
}


@pytest.mark.parametrize("name", list(SCORE_LOSSES))
def test_gradient_is_unbiased_on_linear_gaussian(
    name, linear_gaussian, exact_gaussian_elbo, averaged_gradient, flat_grad
):
    m = linear_gaussian
    params = [*m.q.parameters(), *m.p.parameters()]
    exact = flat_grad(-exact_gaussian_elbo(m.p, m.q, m.x).mean(), params)
    torch.manual_seed(1)
    loss = SCORE_LOSSES[name](m.q, m.p, m.x)
    mean, se = averaged_gradient(loss, m.x, params, n_rep=500, n_calls=40)  # 20,000 draws per point
    assert se.norm() < 0.05 * exact.norm()  # the comparison has power
    # every coordinate within 4 standard errors (40 independent calls give the standard error)
    assert ((mean - exact).abs() <= 4 * se + 1e-9).all(), ((mean - exact) / se).abs().max()


@pytest.mark.parametrize("name", list(SCORE_LOSSES))
def test_gradient_matches_enumeration_on_sigmoid_belief_net(
    name, sbn, exact_sbn_elbo, averaged_gradient, flat_grad
):
    params = [*sbn.q.parameters(), *sbn.p.parameters()]
    exact = flat_grad(-exact_sbn_elbo(sbn.p, sbn.q, sbn.x).mean(), params)
    torch.manual_seed(2)
    loss = SCORE_LOSSES[name](sbn.q, sbn.p, sbn.x)
    mean, se = averaged_gradient(loss, sbn.x, params, n_rep=500, n_calls=40)
    assert se.norm() < 0.05 * exact.norm()
    # within 4 standard errors; a column of x that is all zero gives exactly-zero coordinates
    assert ((mean - exact).abs() <= 4 * se + 1e-9).all(), ((mean - exact) / (se + 1e-12)).abs().max()


N_DRAWS = 100


def test_baselines_reduce_the_variance_of_q_gradients(sbn):
    k = 4
    torch.manual_seed(3)
    plain = gradient_stats(ELBO(sbn.q, sbn.p, n_samples=k, estimator="score"), sbn.x, N_DRAWS)["inf_net"]
    # NVIL with its input-dependent baseline trained by its own regression (p and q fixed);
    # normalize=False so that no rescaling of the gradient counts as variance reduction.
    nvil = NVIL(sbn.q, sbn.p, n_samples=k, normalize=False)
    nvil(sbn.x)
    opt = torch.optim.Adam(nvil.baseline_net_.parameters(), lr=0.01)
    for _ in range(150):
        opt.zero_grad(set_to_none=True)
        nvil(sbn.x).backward()
        opt.step()
    trained = gradient_stats(nvil, sbn.x, N_DRAWS)["inf_net"]
    centred = gradient_stats(NVIL(sbn.q, sbn.p, n_samples=k, normalize=False, baseline=False), sbn.x, N_DRAWS)
    ratio_trained = trained.total_variance / plain.total_variance  # measured about 0.04
    ratio_centred = centred["inf_net"].total_variance / plain.total_variance  # measured about 0.07
    assert ratio_trained < 0.5
    assert ratio_centred < 0.5
    # the input-dependent baseline does better than the running mean alone
    assert ratio_trained < 0.8 * ratio_centred, (ratio_trained, ratio_centred)
    # same expected gradient for q (NVIL drops only zero-mean terms): means agree within noise
    se = (trained.variance / N_DRAWS + plain.variance / N_DRAWS).sqrt()
    assert ((trained.mean - plain.mean).abs() <= 4 * se + 1e-9).all()


def test_variance_normalisation_divides_the_q_gradient(linear_gaussian):
    m = linear_gaussian
    losses = [NVIL(m.q, m.p, n_samples=3, baseline=False, normalize=flag) for flag in (True, False)]
    grads = []
    for loss in losses:
        torch.manual_seed(4)
        for _ in range(3):  # identical histories, so identical running statistics
            loss(m.x)
        m.q.zero_grad()
        m.p.zero_grad()
        loss(m.x).backward()
        grads.append(([p.grad.clone() for p in m.q.parameters()], [p.grad.clone() for p in m.p.parameters()]))
    normalized, plain = losses
    scale = normalized.signal_std_.clamp_min(1.0)
    assert scale > 1.0  # the learning signal of this model varies by more than 1 nat
    torch.testing.assert_close(normalized.signal_std_, plain.signal_std_)
    for g_norm, g_plain in zip(grads[0][0], grads[1][0]):
        torch.testing.assert_close(g_norm, g_plain / scale)
    for g_norm, g_plain in zip(grads[0][1], grads[1][1]):  # p's gradient is not rescaled
        torch.testing.assert_close(g_norm, g_plain)


def test_running_statistics_use_only_earlier_calls(linear_gaussian):
    m = linear_gaussian
    d = 0.5
    loss = NVIL(m.q, m.p, n_samples=2, baseline=False, decay=d)
    torch.manual_seed(5)
    means, variances = [], []
    for _ in range(3):
        loss(m.x)
        log_w = loss.log_p_ - loss.log_q_  # [batch, K], the residual when there is no baseline
        if means:  # from the second call on, the centring uses the earlier calls only
            weight = 1 - d ** len(means)
            expected_mean = sum(d ** (len(means) - 1 - i) * (1 - d) * mu for i, mu in enumerate(means))
            expected_var = sum(d ** (len(variances) - 1 - i) * (1 - d) * v for i, v in enumerate(variances))
            torch.testing.assert_close(loss.signal_mean_, expected_mean / weight)
            torch.testing.assert_close(loss.signal_std_, (expected_var / weight).sqrt())
        else:  # the first call has no history and uses its own batch
            torch.testing.assert_close(loss.signal_mean_, log_w.mean())
        means.append(log_w.mean())
        variances.append(log_w.var(correction=0))
        centred = (log_w - loss.signal_mean_) / loss.signal_std_.clamp_min(1.0)
        torch.testing.assert_close(loss.learning_signal_, centred)
    # evaluation mode leaves the statistics alone
    state = {k: v.clone() for k, v in loss.state_dict().items()}
    loss.eval()
    loss(m.x)
    for k, v in loss.state_dict().items():
        torch.testing.assert_close(v, state[k])


def test_default_baseline_is_built_on_first_call_and_learns(sbn):
    loss = NVIL(sbn.q, sbn.p, n_samples=2)
    n_before = len(list(loss.parameters()))
    assert not hasattr(loss, "baseline_net_")
    loss(sbn.x)
    params = list(loss.baseline_net_.parameters())
    assert len(list(loss.parameters())) == n_before + len(params)
    assert all(p.dtype == torch.float64 for p in params)
    assert loss.baseline_.shape == (4,) and (loss.baseline_ == 0).all()  # zero output layer at first

    def regression_error():
        with torch.no_grad():
            errors = []
            for _ in range(50):
                loss(sbn.x)
                target = loss.log_p_ - loss.log_q_ - loss.signal_mean_
                errors.append((target - loss.baseline_.unsqueeze(1)).pow(2).mean())
        return torch.stack(errors).mean()

    torch.manual_seed(6)
    before = regression_error()
    opt = torch.optim.Adam(loss.parameters(), lr=0.01)  # created after the first call
    for _ in range(150):
        opt.zero_grad(set_to_none=True)
        loss(sbn.x).backward()
        opt.step()
    # the data points have different learning signals; an input-dependent baseline captures them
    assert regression_error() < 0.7 * before


def test_user_baseline_and_disabled_baseline(linear_gaussian):
    m = linear_gaussian

    class Affine(nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = nn.Linear(3, 1, dtype=torch.float64)

        def forward(self, x):
            return self.linear(x).squeeze(-1)

    net = Affine()
    loss = NVIL(m.q, m.p, baseline=net)
    loss(m.x)
    torch.testing.assert_close(loss.baseline_, net(m.x).detach())
    assert not hasattr(loss, "baseline_net_")
    names = {name for name, _ in loss.named_parameters()}
    assert {"baseline.linear.weight", "baseline.linear.bias"} <= names
    loss(m.x).backward()
    assert net.linear.weight.grad is not None  # trained by regression through loss.backward()

    off = NVIL(m.q, m.p, baseline=False)
    off(m.x)
    assert (off.baseline_ == 0).all() and not hasattr(off, "baseline_net_")
    assert len(list(off.parameters())) == len(list(m.q.parameters())) + len(list(m.p.parameters()))

    with pytest.raises(
        ValueError, match=r"NVIL: expected baseline\(x\) of shape \[4\] = \[batch\], got \[4, 1\]"
    ):
        NVIL(m.q, m.p, baseline=nn.Linear(3, 1, dtype=torch.float64))(m.x)
    with pytest.raises(TypeError, match="NVIL: expected baseline to be None"):
        NVIL(m.q, m.p, baseline="mlp")
    with pytest.raises(ValueError, match=r"NVIL: expected decay in \[0, 1\), got 1.0"):
        NVIL(m.q, m.p, decay=1.0)
    with pytest.raises(TypeError, match="NVIL: expected normalize to be a bool"):
        NVIL(m.q, m.p, normalize=1)


def test_reported_value_is_the_elbo_estimate(linear_gaussian):
    m = linear_gaussian
    loss = NVIL(m.q, m.p, n_samples=3)
    torch.manual_seed(7)
    value = loss(m.x)
    elbo = (loss.log_p_ - loss.log_q_).mean(dim=1)
    torch.testing.assert_close(loss.bound_, elbo)
    torch.testing.assert_close(value.detach(), -elbo.mean())
    assert loss.loss_history_ == pytest.approx([-elbo.mean().item()])
    assert loss.learning_signal_.shape == (4, 3)


def test_nan_log_weights_raise_naming_the_tensor(linear_gaussian, truncated):
    m = linear_gaussian
    bad = truncated(m.p, threshold=0.0, fill=math.nan)
    with pytest.raises(ValueError, match=r"NVIL: log p\(x, z\) contains \d+ NaN"):
        NVIL(m.q, bad, n_samples=4)(m.x)


def test_float32(linear_gaussian):
    q, p, x = linear_gaussian.q.float(), linear_gaussian.p.float(), linear_gaussian.x.float()
    loss = NVIL(q, p, n_samples=2)
    value = loss(x)
    value.backward()
    assert value.dtype == torch.float32 and loss.baseline_net_.hidden.weight.dtype == torch.float32
    assert all(torch.isfinite(p.grad).all() for p in loss.parameters())
