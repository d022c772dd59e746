"""The scikit-learn-style estimator ``VAE``: parameters, fitting, scoring, sampling, callbacks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from bbvae.base import NotFittedError
from bbvae.estimator import VAE
from bbvae.models import (
    BernoulliInfNet,
    GaussianInfNet,
    LinearGaussianGenModel,
    SigmoidBeliefNet,
)

X_DIM, Z_DIM = 3, 2


def make_vae(**kwargs) -> VAE:
    torch.manual_seed(0)
    gen = LinearGaussianGenModel(Z_DIM, X_DIM).double()
    q = GaussianInfNet(X_DIM, Z_DIM).double()
    settings = dict(n_samples=3, batch_size=8, max_steps=6, log_every=2, random_state=0)
    settings.update(kwargs)
    return VAE(q, gen, **settings)


def data(n: int = 24) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, X_DIM, generator=g, dtype=torch.float64)


# ------------------------------------------------------------------------ parameters
def test_constructor_stores_arguments_unchanged_and_get_set_params_round_trip():
    est = make_vae(loss="elbo", loss_options={"estimator": "stl"})
    params = est.get_params()
    assert params["inf_net"] is est.inf_net and params["loss_options"] is est.loss_options
    assert params["loss"] == "elbo" and params["n_samples"] == 3 and params["random_state"] == 0
    import inspect

    expected = set(inspect.signature(VAE.__init__).parameters) - {"self"}
    assert set(est.get_params(deep=False)) == expected
    assert est.set_params(n_samples=7, learning_rate=0.5) is est
    assert est.n_samples == 7 and est.get_params()["learning_rate"] == 0.5
    with pytest.raises(ValueError, match="invalid parameter 'n_sample'"):
        est.set_params(n_sample=2)
    assert "n_samples=7" in repr(est) and "GaussianInfNet(...)" in repr(est)


def test_sklearn_clone_copies_parameters_and_drops_fitted_state():
    from sklearn.base import clone

    est = make_vae().fit(data())
    twin = clone(est)
    assert type(twin) is VAE and twin is not est
    assert twin.get_params(deep=False).keys() == est.get_params(deep=False).keys()
    assert twin.n_samples == est.n_samples and twin.random_state == est.random_state
    # Modules are deep-copied, with equal weights.
    assert twin.inf_net is not est.inf_net
    for a, b in zip(twin.inf_net.state_dict().values(), est.inf_net.state_dict().values()):
        assert torch.equal(a, b)
    assert not twin.__sklearn_is_fitted__() and not hasattr(twin, "loss_history_")


def test_sklearn_check_is_fitted_uses_the_hook():
    from sklearn.exceptions import NotFittedError as SkNotFitted
    from sklearn.utils.validation import check_is_fitted

    est = make_vae()
    with pytest.raises(SkNotFitted):
        check_is_fitted(est)
    check_is_fitted(est.fit(data()))


@pytest.mark.parametrize("method", ["score", "score_samples", "sample"])
def test_use_before_fit_raises_not_fitted_error(method):
    est = make_vae()
    arg = 3 if method == "sample" else data(4)
    with pytest.raises(NotFittedError, match="not fitted yet") as info:
        getattr(est, method)(arg)
    assert isinstance(info.value, ValueError) and isinstance(info.value, AttributeError)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"loss": "fivo"}, ValueError, "expected loss in"),
        ({"loss": 3}, TypeError, "expected loss to be"),
        ({"n_samples": 0}, ValueError, "n_samples >= 1, got 0"),
        ({"loss": "vimco", "n_samples": 1}, ValueError, "VIMCO needs n_samples >= 2, got 1"),
        ({"learning_rate": -1.0}, ValueError, "learning_rate > 0"),
        ({"batch_size": "8"}, TypeError, "batch_size to be an int"),
        ({"max_steps": None, "max_epochs": None}, ValueError, "set max_steps or max_epochs"),
        ({"random_state": 1.5}, TypeError, "random_state"),
        ({"device": "banana"}, ValueError, "invalid device 'banana'"),
        ({"callbacks": [3]}, TypeError, "callbacks"),
    ],
)
def test_invalid_hyperparameters_raise_in_fit_not_in_init(kwargs, error, match):
    est = make_vae(**kwargs)  # the constructor accepts anything
    with pytest.raises(error, match=match):
        est.fit(data())
    assert not est.__sklearn_is_fitted__()


# ------------------------------------------------------------------------ fit, score, sample
def test_fit_returns_self_trains_copies_and_sets_fitted_attributes():
    est = make_vae()
    before = {k: v.clone() for k, v in est.gen_model.state_dict().items()}
    assert est.fit(data()) is est
    assert est.n_iter_ == 6 and len(est.loss_history_) == 6 and est.stop_reason_ == "max_steps"
    assert all(math.isfinite(v) for v in est.loss_history_)
    assert est.n_epochs_ == 2  # 24 rows in batches of 8: 3 steps per epoch
    assert est.inf_net_ is not est.inf_net and est.gen_model_ is not est.gen_model
    assert est.loss_.inf_net is est.inf_net_ and est.seed_ == 0 and est.obs_shape_ == (X_DIM,)
    # The constructor's module is untouched; the fitted copy moved.
    for name, value in est.gen_model.state_dict().items():
        assert torch.equal(value, before[name])
    assert any(not torch.equal(v, before[k]) for k, v in est.gen_model_.state_dict().items())


def test_score_sample_shapes_and_feature_check():
    est = make_vae(n_samples_eval=20).fit(data())
    scores = est.score_samples(data(5))
    assert scores.shape == (5,) and scores.dtype == torch.float64 and torch.isfinite(scores).all()
    score = est.score(data(5))
    assert isinstance(score, float)
    x, z = est.sample(4)
    assert x.shape == (4, X_DIM) and z.shape == (4, Z_DIM)
    with pytest.raises(ValueError, match=r"expected X of shape \[N, 3\]"):
        est.score(torch.zeros(2, 4, dtype=torch.float64))
    # numpy input takes the model's dtype
    assert est.score_samples(data(3).numpy()).shape == (3,)


def test_score_samples_is_exact_when_q_is_the_posterior():
    """IWAE with the exact posterior as proposal is exact for every draw, so score_samples == log p(x)."""
    torch.manual_seed(0)
    gen = LinearGaussianGenModel(Z_DIM, X_DIM).double()
    # SGD with a vanishing learning rate: one step leaves the model where it is (to ~1e-12).
    est = VAE(gen.exact_inf_net(), gen, optimizer="sgd", learning_rate=1e-12, max_steps=1, n_samples_eval=7)
    est.fit(data(8))
    x = data(6)
    exact = est.gen_model_.exact_log_prob(x).detach().double()
    assert torch.allclose(est.score_samples(x), exact, atol=1e-8, rtol=0)
    assert est.score(x) == pytest.approx(float(exact.mean()), abs=1e-8)


def test_callback_sees_growing_loss_history_during_training():
    seen = []

    def record(estimator):
        seen.append((estimator.n_iter_, len(estimator.loss_history_)))

    est = make_vae(callbacks=[record]).fit(data())
    assert seen == [(2, 2), (4, 4), (6, 6)]
    assert len(est.loss_history_) == 6


def test_callback_returning_true_stops_training():
    est = make_vae(max_steps=50, callbacks=[lambda e: e.n_iter_ >= 4]).fit(data())
    assert est.n_iter_ == 4 and est.stop_reason_ == "callback"


def test_random_state_makes_fit_reproducible():
    from sklearn.base import clone

    est = make_vae(random_state=3)
    first = clone(est).fit(data()).loss_history_
    again = clone(est).fit(data()).loss_history_
    other = clone(est).set_params(random_state=4).fit(data()).loss_history_
    assert first == again
    assert first != other


@pytest.mark.parametrize("loss", ["elbo", "vimco", "nvil", "rws"])
def test_score_function_losses_train_discrete_latents(loss):
    torch.manual_seed(0)
    x = (torch.rand(16, 6, dtype=torch.float64) < 0.5).double()
    est = VAE(
        BernoulliInfNet(6, 3).double(),
        SigmoidBeliefNet(3, 6).double(),
        loss=loss,
        loss_options={"estimator": "score"} if loss == "elbo" else None,
        n_samples=3,
        batch_size=8,
        max_steps=4,
        log_every=2,
        n_samples_eval=8,
        random_state=0,
    ).fit(x)
    assert len(est.loss_history_) == 4 and math.isfinite(est.score(x))


def test_nvil_default_baseline_is_built_before_training_and_trained():
    """NVIL creates its baseline network on the first call; fit builds it first so it is optimised."""
    torch.manual_seed(0)
    x = (torch.rand(16, 6, dtype=torch.float64) < 0.5).double()
    est = VAE(
        BernoulliInfNet(6, 3).double(),
        SigmoidBeliefNet(3, 6).double(),
        loss="nvil",
        n_samples=2,
        batch_size=8,
        max_steps=3,
        random_state=0,
    ).fit(x)
    baseline = est.loss_.baseline_net_
    optimised = {id(p) for group in est.trainer_.optimizer_.param_groups for p in group["params"]}
    assert all(id(p) in optimised for p in baseline.parameters())
    assert len(est.loss_history_) == 3  # the building call is not in the history


def test_fit_with_validation_data_records_valid_history():
    est = make_vae(max_steps=4, eval_every=2).fit(data(), X_valid=data(6))
    assert len(est.valid_history_) == 2 and all(math.isfinite(v) for v in est.valid_history_)
    with pytest.raises(ValueError, match="X_valid rows"):
        make_vae().fit(data(), X_valid=torch.zeros(3, 5, dtype=torch.float64))


def test_fit_accepts_numpy_data():
    est = make_vae(max_steps=2).fit(np.asarray(data()))
    assert est.n_iter_ == 2


def test_score_with_a_random_state_repeats_and_leaves_the_global_stream_alone():
    est = make_vae(n_samples_eval=4).fit(data())
    torch.manual_seed(11)
    expected_next = torch.rand(3)
    torch.manual_seed(11)
    first = est.score(data(6), random_state=3)
    assert torch.equal(torch.rand(3), expected_next)  # the global generator did not move
    assert est.score(data(6), random_state=3) == first
    assert est.score(data(6), random_state=4) != first  # the seed is used, not ignored
    per_row = est.score_samples(data(6), random_state=3)
    assert torch.equal(per_row, est.score_samples(data(6), random_state=3))
    assert float(per_row.mean()) == first
    with pytest.raises(ValueError, match="random_state"):
        est.score(data(6), random_state=-1)
    with pytest.raises(TypeError, match="random_state"):
        est.score(data(6), random_state=1.5)
