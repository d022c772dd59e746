"""Bad input to the Python API: one table of inputs, tried on VAE, SequenceModel and every loss.

Each row is an input no model can use (wrong shape, wrong dtype, NaN/inf, empty, a scalar, an
object array, a sparse matrix, ...). Every entry point must refuse it with the error type the
style guide gives (ValueError for values and shapes, TypeError for types) and a message naming
the argument the user passed (``X`` for the estimators, ``x`` or ``lengths`` for the losses),
never a raw error from deep inside torch. Inputs that are usable (integer or boolean 0/1 data
for a VAE, NaN padding past the sequences' lengths) must be accepted.
"""

from __future__ import annotations

import re
import warnings

import numpy as np
import pytest
import scipy.sparse
import torch

from bbvae.estimator import VAE
from bbvae.losses import ELBO, FIVO, IWAE, NVIL, RWS, VIMCO, Concrete, PerStep, WakeSleep
from bbvae.models import BernoulliInfNet, GaussianInfNet, LinearGaussianGenModel, SigmoidBeliefNet
from bbvae.sequential import VRNN
from bbvae.sequential.estimator import SequenceModel

D = 3  # data width of every model here


def names(message: str, argument: str) -> bool:
    return re.search(rf"(?<![\w.]){re.escape(argument)}(?![\w(])", message) is not None


def check(call, error: type[Exception], argument: str) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a bad input may also trip a warning on its way
        with pytest.raises(error) as info:
            call()
    message = str(info.value)
    assert names(message, argument), f"the message does not name {argument}: {message}"
    assert "Tensor of shape" not in message and "SparseCPU" not in message, message  # no torch dump
    return message


def nan_at(shape, index) -> torch.Tensor:
    x = torch.rand(*shape)
    x[index] = float("nan")
    return x


# ----------------------------------------------------------------------------- static data
# (label, bad value, error) for rows [N, D]
ROWS = [
    ("wrong width", lambda: torch.rand(6, D + 1), ValueError),
    ("1-D", lambda: torch.rand(6), ValueError),
    ("3-D", lambda: torch.rand(6, D, 2), ValueError),
    ("0-D", lambda: torch.tensor(1.0), ValueError),
    ("no rows", lambda: torch.zeros(0, D), ValueError),
    ("NaN", lambda: nan_at((6, D), (2, 1)), ValueError),
    ("inf", lambda: torch.full((6, D), float("inf")), ValueError),
    ("complex", lambda: torch.rand(6, D, dtype=torch.complex64), TypeError),
    ("object holding strings", lambda: np.array([[1.0, "a", None]] * 6, dtype=object), TypeError),
    ("strings", lambda: np.array([["a"] * D] * 6), TypeError),
    ("scipy sparse", lambda: scipy.sparse.csr_matrix(np.eye(6, D)), TypeError),
    ("torch sparse", lambda: torch.eye(6, D).to_sparse(), TypeError),
    ("a dict", lambda: {"x": torch.rand(6, D)}, TypeError),
]


def vae(**kwargs) -> VAE:
    torch.manual_seed(0)
    settings = dict(n_samples=2, batch_size=4, max_steps=2, n_samples_eval=2, random_state=0)
    return VAE(GaussianInfNet(D, 2), LinearGaussianGenModel(2, D), **{**settings, **kwargs})


@pytest.fixture(scope="module")
def fitted_vae() -> VAE:
    return vae().fit(torch.rand(8, D))


@pytest.mark.parametrize("label, value, error", ROWS, ids=[r[0] for r in ROWS])
def test_vae_fit_and_score_refuse_bad_rows_naming_x(label, value, error, fitted_vae):
    check(lambda: vae().fit(value()), error, "X")
    check(lambda: vae().fit(torch.rand(8, D), X_valid=value()), error, "X_valid")
    check(lambda: fitted_vae.score(value()), error, "X")


def test_vae_wrong_width_is_reported_with_the_users_array_shape_before_training():
    message = check(lambda: vae(max_steps=10**6).fit(torch.rand(100, D + 1)), ValueError, "X")
    assert "X has rows of shape [4] (X is [100, 4])" in message and "GaussianInfNet" in message


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.bool, np.int64, np.uint8, "list"])
def test_vae_takes_integer_and_boolean_01_data_as_the_models_floats(dtype):
    # A Bernoulli model's data often come as 0/1 integers or booleans: same fit as the floats.
    torch.manual_seed(1)
    floats = (torch.rand(16, D) < 0.5).float()
    if dtype == "list":
        data = floats.int().tolist()
    elif isinstance(dtype, torch.dtype):
        data = floats.to(dtype)
    else:
        data = floats.numpy().astype(dtype)

    def fit(x):
        torch.manual_seed(0)
        est = VAE(BernoulliInfNet(D, 2), SigmoidBeliefNet(2, D), loss="vimco", n_samples=2, batch_size=4)
        return est.set_params(max_steps=3, n_samples_eval=2, random_state=0).fit(x)

    reference, est = fit(floats), fit(data)
    for name, value in reference.gen_model_.state_dict().items():
        assert torch.equal(est.gen_model_.state_dict()[name], value), name
    assert est.score(data, random_state=0) == reference.score(floats, random_state=0)
    assert est.n_features_in_ == D


# ----------------------------------------------------------------------------- sequences
SEQUENCES = [
    ("1-D", lambda: torch.rand(5), ValueError),
    ("0-D", lambda: torch.tensor(1.0), ValueError),
    ("no sequences", lambda: torch.zeros(0, 5, D), ValueError),
    ("zero-length sequences", lambda: torch.zeros(4, 0, D), ValueError),
    ("NaN", lambda: nan_at((4, 5, D), (1, 2, 0)), ValueError),
    ("inf", lambda: torch.full((4, 5, D), float("inf")), ValueError),
    ("steps [D, 2]", lambda: torch.rand(4, 5, D, 2), ValueError),
    ("ragged widths", lambda: [torch.rand(5, D), torch.rand(4, D + 1)], ValueError),
    ("integer frames", lambda: torch.ones(4, 5, D, dtype=torch.long), ValueError),
    ("complex", lambda: torch.rand(4, 5, D, dtype=torch.complex64), TypeError),
    ("object holding strings", lambda: np.array([[[1.0, "a", None]] * 5] * 4, dtype=object), TypeError),
    ("scipy sparse", lambda: scipy.sparse.csr_matrix(np.eye(4, D)), TypeError),
    ("torch sparse", lambda: torch.rand(4, 5, D).to_sparse(), TypeError),
    ("a None sequence", lambda: [torch.rand(5, D), None], TypeError),
]


def sequence_model() -> SequenceModel:
    return SequenceModel("vrnn", latent_size=2, hidden_size=3, max_steps=1, batch_size=2, random_state=0)


@pytest.fixture(scope="module")
def fitted_sequence_model() -> SequenceModel:
    return sequence_model().fit(torch.rand(4, 5, D))


@pytest.mark.parametrize("label, value, error", SEQUENCES, ids=[s[0] for s in SEQUENCES])
def test_sequence_model_fit_and_score_refuse_bad_sequences(label, value, error, fitted_sequence_model):
    check(lambda: sequence_model().fit(value()), error, "X")
    check(lambda: sequence_model().fit(torch.rand(4, 5, D), X_valid=value()), error, "X_valid")
    check(lambda: fitted_sequence_model.score(value()), error, "X")


def test_integer_frames_get_a_hint_to_cast():
    message = check(lambda: sequence_model().fit(torch.ones(4, 5, D, dtype=torch.long)), ValueError, "X")
    assert "cast frames (0/1 piano rolls, counts) to float first" in message


# ----------------------------------------------------------------------------- every loss
def gaussian(cls, **kwargs):
    torch.manual_seed(0)
    return cls(GaussianInfNet(D, 2), LinearGaussianGenModel(2, D), **kwargs)


def binary(cls, **kwargs):
    torch.manual_seed(0)
    return cls(BernoulliInfNet(D, 2), SigmoidBeliefNet(2, D), **kwargs)


STATIC_LOSSES = {
    "ELBO": lambda: gaussian(ELBO),
    "IWAE": lambda: gaussian(IWAE, n_samples=3),
    "VIMCO": lambda: binary(VIMCO, n_samples=3),
    "NVIL": lambda: binary(NVIL),
    "RWS": lambda: binary(RWS, n_samples=3),
    "WakeSleep": lambda: binary(WakeSleep),
    "Concrete": lambda: binary(Concrete),
}
X_CASES = [
    ("wrong width", lambda: torch.rand(4, D + 2), ValueError),
    ("1-D", lambda: torch.rand(4), ValueError),
    ("0-D", lambda: torch.tensor(1.0), ValueError),
    ("empty batch", lambda: torch.zeros(0, D), ValueError),
    ("NaN", lambda: nan_at((4, D), (0, 0)), ValueError),
    ("inf", lambda: torch.full((4, D), float("inf")), ValueError),
    ("int64", lambda: torch.ones(4, D, dtype=torch.long), TypeError),
    ("bool", lambda: torch.ones(4, D, dtype=torch.bool), TypeError),
    ("float64 for a float32 model", lambda: torch.rand(4, D, dtype=torch.float64), TypeError),
    ("numpy array", lambda: np.zeros((4, D)), TypeError),
    ("list", lambda: [[0.0] * D] * 4, TypeError),
    ("torch sparse", lambda: torch.eye(4, D).to_sparse(), TypeError),
    ("complex", lambda: torch.rand(4, D, dtype=torch.complex64), TypeError),
]


@pytest.mark.parametrize("loss", list(STATIC_LOSSES))
@pytest.mark.parametrize("label, value, error", X_CASES, ids=[c[0] for c in X_CASES])
def test_every_static_loss_refuses_bad_x_naming_it(loss, label, value, error):
    check(lambda: STATIC_LOSSES[loss]()(value()), error, "x")


def vrnn():
    torch.manual_seed(0)
    return VRNN(D, latent_size=2, hidden_size=3, observation="normal")


def sequence_losses():
    m = vrnn()
    return {
        "FIVO": FIVO(m.inf_net, m.gen_model, n_particles=2),
        "IWAE": IWAE(m.inf_net, m.gen_model, n_samples=2),
        "PerStep(ELBO)": PerStep(ELBO(m.inf_net, m.gen_model)),
    }


SEQUENCE_X_CASES = [
    ("wrong width", lambda: torch.rand(2, 4, D + 1), None, ValueError, "x"),
    ("[batch, T]", lambda: torch.rand(2, 4), None, ValueError, "x"),
    ("0-D", lambda: torch.tensor(1.0), None, ValueError, "x"),
    ("empty batch", lambda: torch.zeros(0, 4, D), None, ValueError, "x"),
    ("no time steps", lambda: torch.zeros(2, 0, D), None, ValueError, "x"),
    ("NaN within lengths", lambda: nan_at((2, 4, D), (1, 1, 0)), torch.tensor([4, 2]), ValueError, "x"),
    ("int64", lambda: torch.ones(2, 4, D, dtype=torch.long), None, TypeError, "x"),
    ("torch sparse", lambda: torch.rand(2, 4, D).to_sparse(), None, TypeError, "x"),
    ("complex", lambda: torch.rand(2, 4, D, dtype=torch.complex64), None, TypeError, "x"),
    ("lengths > T", lambda: torch.rand(2, 4, D), torch.tensor([5, 2]), ValueError, "lengths"),
    ("lengths 0", lambda: torch.rand(2, 4, D), torch.tensor([0, 2]), ValueError, "lengths"),
    ("float lengths", lambda: torch.rand(2, 4, D), torch.tensor([1.0, 2.0]), TypeError, "lengths"),
    ("one length too many", lambda: torch.rand(2, 4, D), torch.tensor([1, 2, 3]), ValueError, "lengths"),
]


@pytest.mark.parametrize("loss", ["FIVO", "IWAE", "PerStep(ELBO)"])
@pytest.mark.parametrize(
    "label, value, lengths, error, argument", SEQUENCE_X_CASES, ids=[c[0] for c in SEQUENCE_X_CASES]
)
def test_every_sequence_loss_refuses_bad_x_and_lengths_naming_them(
    loss, label, value, lengths, error, argument
):
    context = {} if lengths is None else {"lengths": lengths}
    check(lambda: sequence_losses()[loss](value(), **context), error, argument)


@pytest.mark.parametrize("loss", ["FIVO", "IWAE", "PerStep(ELBO)"])
def test_nan_padding_past_the_lengths_is_accepted(loss):
    x, lengths = torch.rand(2, 4, D), torch.tensor([4, 2])
    padded = x.clone()
    padded[1, 2:] = float("nan")
    torch.manual_seed(3)
    clean = sequence_losses()[loss](x, lengths=lengths)
    torch.manual_seed(3)
    value = sequence_losses()[loss](padded, lengths=lengths)
    assert torch.isfinite(value) and torch.equal(value, clean)
