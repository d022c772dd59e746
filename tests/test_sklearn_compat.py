"""scikit-learn's ``check_estimator`` on :class:`~bbvae.VAE`.

The networks of a VAE have a fixed input width, while ``check_estimator`` fits data of many widths
(1 to 10 features); with the reference models most checks then stop at the width error (see
README, "VAE and scikit-learn's check_estimator"). To run every check on its merits, this test
uses a model whose parameters do not depend on the width (one latent; every feature shares a
scalar weight), and asserts that exactly the documented checks fail, for the documented reasons.
"""

from __future__ import annotations

import copy
import warnings

import joblib
import pytest
import torch
from torch import nn
from torch.distributions import Independent, Normal

from bbvae import GenModel, InfNet
from bbvae.estimator import VAE

pytest.importorskip("sklearn")


class AnyWidthInfNet(InfNet):
    """q(z|x) = N(a * mean(x) + b, exp(s)^2): one latent, three scalar parameters."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.s = (nn.Parameter(torch.tensor(v)) for v in (0.5, 0.0, -0.5))

    def forward(self, x):
        loc = self.a * x.mean(dim=-1, keepdim=True) + self.b  # [batch, 1]
        return {"loc": loc, "scale": self.s.exp().expand_as(loc)}

    def distribution(self):
        return Independent(Normal(self.params_["loc"], self.params_["scale"]), 1)


class AnyWidthGenModel(GenModel):
    """z ~ N(0, 1), x_d | z ~ N(w z + c, exp(t)^2) for every feature d (the width is read from x)."""

    def __init__(self):
        super().__init__()
        self.w, self.c, self.t = (nn.Parameter(torch.tensor(v)) for v in (1.0, 0.0, 0.0))
        self.width = 1

    def forward(self, x, z):  # z: [batch, K, 1]
        if x is not None:
            self.width = x.shape[-1]
        return {"loc": (self.w * z + self.c).expand(*z.shape[:-1], self.width)}  # [batch, K, D]

    def prior(self):
        return Independent(Normal(self.w.new_zeros(1), self.w.new_ones(1)), 1)

    def likelihood(self):
        loc = self.params_["loc"]
        return Independent(Normal(loc, self.t.exp().expand_as(loc)), 1)


#: the checks that fail, and why (also in the README)
EXPECTED_FAILURES = {
    # joblib.hash of a torch module differs from that of its deepcopy, so the check sees a change
    # where there is none (test_fit_leaves_the_constructors_modules_alone checks it directly).
    "check_estimators_overwrite_params": AssertionError,
    # complex X: bbvae raises a TypeError (a wrong type, in the style guide), the check wants ValueError.
    "check_complex_data": TypeError,
}


def make_vae() -> VAE:
    return VAE(
        AnyWidthInfNet(),
        AnyWidthGenModel(),
        max_steps=3,
        batch_size=8,
        n_samples=2,
        n_samples_eval=2,
        random_state=0,
    )


def test_check_estimator_fails_only_the_documented_checks():
    from sklearn.utils.estimator_checks import check_estimator

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        results = check_estimator(make_vae(), on_fail=None, on_skip=None)
    failed = {r["check_name"]: r["exception"] for r in results if r["status"] == "failed"}
    assert set(failed) == set(EXPECTED_FAILURES), {k: str(v)[:300] for k, v in failed.items()}
    for name, error in EXPECTED_FAILURES.items():
        assert type(failed[name]) is error, failed[name]
    assert "X to hold real numbers" in str(failed["check_complex_data"])
    passed = {r["check_name"] for r in results if r["status"] == "passed"}
    # the checks behind the list: n_features_in_, object dtype, empty data, one sample
    assert {"check_n_features_in_after_fitting", "check_dtype_object", "check_fit2d_1sample"} <= passed
    assert {"check_estimators_empty_data_messages", "check_estimators_nan_inf"} <= passed


def test_fit_leaves_the_constructors_modules_alone():
    est = make_vae()
    before = {k: v.clone() for k, v in est.gen_model.state_dict().items()}
    est.fit(torch.randn(16, 3))
    assert all(torch.equal(est.gen_model.state_dict()[k], v) for k, v in before.items())
    assert est.gen_model.width == 1 and est.gen_model_.width == 3  # only the copy saw the data
    # what check_estimators_overwrite_params trips on: a deepcopy hashes differently, unchanged
    module = AnyWidthGenModel()
    assert joblib.hash(module) != joblib.hash(copy.deepcopy(module))
