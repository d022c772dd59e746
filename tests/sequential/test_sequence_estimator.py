"""The scikit-learn-style ``SequenceModel``: parameters, data forms, fitting, scoring, sampling."""

from __future__ import annotations

import inspect
import math

import pytest
import torch

from bbvae.base import NotFittedError
from bbvae.data import SequenceBatch, collate_sequences, gaussian_hmm_data
from bbvae.sequential.estimator import BOUNDS, SequenceModel, to_sequences

TINY = dict(latent_size=3, hidden_size=4, batch_size=2, max_steps=2, log_every=1, random_state=0)


@pytest.fixture(scope="module")
def synthetic():
    return gaussian_hmm_data(12, 6, min_length=3, seed=0)  # ragged, 9 / 1 / 2 sequences


def binary_sequences(lengths=(4, 6, 3, 5), dim=5, seed=0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.rand(n, dim, generator=g) < 0.3).float() for n in lengths]


def symbol_sequences(lengths=(5, 3, 6), n_symbols=4, seed=0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    seqs = [torch.randint(0, n_symbols, (n,), generator=g) for n in lengths]
    seqs[0][0] = n_symbols - 1  # every symbol size is seen
    return seqs


def padded(seqs):
    return collate_sequences(seqs)


# ------------------------------------------------------------------------ parameters
def test_get_set_params_and_sklearn_clone():
    from sklearn.base import clone

    est = SequenceModel(model="srnn", bound="iwae", latent_size=5, callbacks=None)
    expected = set(inspect.signature(SequenceModel.__init__).parameters) - {"self"}
    assert set(est.get_params()) == expected
    assert est.get_params()["model"] == "srnn" and est.get_params()["latent_size"] == 5
    assert est.set_params(bound="fivo", n_samples=8) is est and est.bound == "fivo" and est.n_samples == 8
    with pytest.raises(ValueError, match="invalid parameter 'particles'"):
        est.set_params(particles=3)
    twin = clone(est)
    assert twin is not est and twin.get_params() == est.get_params()
    assert repr(est) == "SequenceModel(latent_size=5, model='srnn', n_samples=8)"


@pytest.mark.parametrize("method", ["score", "score_samples", "sample", "sample_continuations"])
def test_use_before_fit_raises_not_fitted_error(method):
    arg = 2 if method == "sample" else binary_sequences()
    with pytest.raises(NotFittedError, match="SequenceModel instance is not fitted yet"):
        getattr(SequenceModel(), method)(arg)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"model": "lstm"}, ValueError, "expected model in"),
        ({"model": 3}, TypeError, "expected model to be a name"),
        ({"bound": "kl"}, ValueError, "expected bound in"),
        ({"bound": "vimco", "n_samples": 1}, ValueError, "bound='vimco' needs n_samples >= 2"),
        ({"cell": "rnn"}, ValueError, "expected cell in"),
        ({"ess_threshold": 2.0}, ValueError, r"ess_threshold in \[0, 1\]"),
        ({"normalize": "batch"}, ValueError, "expected normalize in"),
        ({"latent_size": 0}, ValueError, "latent_size >= 1"),
        ({"max_steps": None, "max_epochs": None}, ValueError, "set max_steps or max_epochs"),
        ({"eval_bound": "exact"}, ValueError, "has no exact_log_prob"),
        ({"model": "ghmm", "observation": "bernoulli"}, ValueError, "Gaussian observations"),
        ({"observation": "categorical"}, ValueError, "needs integer symbol sequences"),
        ({"random_state": "0"}, TypeError, "random_state"),
    ],
)
def test_invalid_hyperparameters_raise_in_fit(kwargs, error, match):
    est = SequenceModel(**{**TINY, **kwargs})  # the constructor accepts anything
    with pytest.raises(error, match=match):
        est.fit(binary_sequences())
        est.score(binary_sequences())  # eval_bound is checked where it is used


def test_data_that_does_not_fit_the_observation_is_refused(synthetic):
    with pytest.raises(ValueError, match="needs 0/1 data"):
        SequenceModel(observation="bernoulli", **TINY).fit(synthetic)
    with pytest.raises(ValueError, match="which need observation='categorical'"):
        SequenceModel(observation="normal", **TINY).fit(symbol_sequences())
    with pytest.raises(ValueError, match="model='ghmm' needs real-valued data"):
        SequenceModel(model="ghmm", **TINY).fit(symbol_sequences())
    est = SequenceModel(**TINY).fit(binary_sequences(dim=5))
    with pytest.raises(ValueError, match=r"expected float sequences \[T, 5\]"):
        est.score(binary_sequences(dim=6))
    sym = SequenceModel(**TINY).fit(symbol_sequences(n_symbols=4))
    with pytest.raises(ValueError, match=r"expected symbols in 0..3"):
        sym.score([torch.tensor([0, 4])])


# ------------------------------------------------------------------------ fit and score
def test_ghmm_fit_score_matches_the_exact_likelihood(synthetic):
    est = SequenceModel(model="ghmm", bound="fivo", eval_bound="exact", **TINY)
    assert est.fit(synthetic) is est
    assert est.observation_ == "normal" and est.model_.z_dim == 3 and est.obs_shape_ == (2,)
    assert est.n_iter_ == 2 and len(est.loss_history_) == 2 and est.loss_.n_particles == 4
    test = synthetic.split("test")
    batch = padded(test)
    with torch.no_grad():
        exact = est.model_.exact_log_prob(batch.x, lengths=batch.lengths).double()
    per_sequence = est.score_samples(synthetic)  # the test split by default
    assert per_sequence.shape == (len(test),) and per_sequence.dtype == torch.float64
    assert torch.allclose(per_sequence, exact, atol=1e-5, rtol=0)
    # score is in nats per time step: the total over the total length.
    assert est.score(synthetic) == pytest.approx(float(exact.sum()) / float(batch.lengths.sum()), abs=1e-6)
    assert est.score(synthetic, split="train") == pytest.approx(est.score(synthetic.split("train")), abs=1e-9)


def test_bernoulli_vrnn_is_centred_and_starts_at_the_data_mean():
    """The FIVO piano-roll convention: x_mean = training mean, output bias = logit(training mean)."""
    seqs = binary_sequences()
    # SGD with a vanishing learning rate: the fitted model is the initial one (to ~1e-12).
    est = SequenceModel(optimizer="sgd", learning_rate=1e-12, **{**TINY, "max_steps": 1}).fit(seqs)
    mean = torch.cat(seqs).double().mean(0)
    assert est.observation_ == "bernoulli"
    assert torch.allclose(est.model_.x_mean.double(), mean, atol=1e-6)
    bias = list(est.model_.decoder.modules())[-1].bias.double()
    assert torch.allclose(torch.sigmoid(bias), mean.clamp(1e-4, 1 - 1e-4), atol=1e-5)


@pytest.mark.parametrize("normalize", ["length", "sequence"])
def test_training_loss_is_normalised_per_sequence_length(normalize):
    """With the RNN every bound is the exact likelihood, so the first loss is known."""
    seqs = binary_sequences()
    est = SequenceModel(
        model="rnn",
        bound="iwae",
        normalize=normalize,
        optimizer="sgd",
        learning_rate=1e-12,
        **{**TINY, "batch_size": len(seqs), "max_steps": 1},
    ).fit(seqs)
    batch = padded(seqs)
    with torch.no_grad():
        exact = est.model_.exact_log_prob(batch.x, lengths=batch.lengths).double()
    per = exact / batch.lengths.double() if normalize == "length" else exact
    assert est.loss_history_[0] == pytest.approx(-float(per.mean()), abs=1e-4)


def test_symbols_use_a_categorical_model_and_sample_symbols():
    est = SequenceModel(**TINY).fit(symbol_sequences(n_symbols=4))
    assert est.observation_ == "categorical" and est.n_categories_ == 4 and est.obs_shape_ == ()
    x, z = est.sample(3, length=7)
    assert x.shape == (3, 7) and x.dtype == torch.long and 0 <= int(x.min()) and int(x.max()) < 4
    assert z.shape == (3, 7, 3)
    assert math.isfinite(est.score(symbol_sequences(seed=1)))


def test_sampling_shapes_and_default_length():
    seqs = binary_sequences(lengths=(4, 6, 3, 5))
    est = SequenceModel(**TINY).fit(seqs)
    assert est.mean_length_ == 4
    x, z = est.sample(2)
    assert x.shape == (2, 4, 5) and z.shape == (2, 4, 3)
    assert set(x.unique().tolist()) <= {0.0, 1.0}
    xs, zs = est.sample_continuations(seqs[:3], n_samples=2, length=5, n_particles=3)
    assert xs.shape == (3, 2, 5, 5) and zs.shape == (3, 2, 5, 3)
    cropped = SequenceModel(**{**TINY, "max_length": 3}).fit(seqs)
    assert cropped.mean_length_ == 3 and cropped.sample(1)[0].shape == (1, 3, 5)


def test_every_data_form_gives_the_same_fit():
    seqs = binary_sequences(lengths=(5, 5, 5, 5))
    batch = padded(seqs)
    histories = [
        SequenceModel(**TINY).fit(X).loss_history_
        for X in (seqs, batch, SequenceBatch(batch.x, batch.lengths, None), batch.x, batch.x.numpy())
    ]
    assert all(h == histories[0] for h in histories[1:])
    assert [s.shape for s in to_sequences(batch, "train", None, "t")] == [(5, 5)] * 4


@pytest.mark.parametrize("bound", BOUNDS)
def test_every_bound_trains_a_vrnn(bound):
    est = SequenceModel(bound=bound, n_samples=2, **TINY).fit(binary_sequences())
    assert len(est.loss_history_) == 2 and all(math.isfinite(v) for v in est.loss_history_)
    assert math.isfinite(est.score(binary_sequences(seed=1)))


@pytest.mark.parametrize("model", ["srnn", "independent"])
def test_other_models_fit_real_valued_data(model, synthetic):
    est = SequenceModel(model=model, **TINY).fit(synthetic)
    assert est.observation_ == "normal" and math.isfinite(est.score(synthetic))


# ------------------------------------------------------------------------ training plumbing
def test_callback_sees_growing_loss_history():
    seen = []
    SequenceModel(callbacks=[lambda e: seen.append(len(e.loss_history_))], **{**TINY, "max_steps": 3}).fit(
        binary_sequences()
    )
    assert seen == [1, 2, 3]


def test_random_state_makes_fit_reproducible(synthetic):
    from sklearn.base import clone

    est = SequenceModel(model="vrnn", **TINY)
    a, b = clone(est).fit(synthetic), clone(est).fit(synthetic)
    c = clone(est).set_params(random_state=1).fit(synthetic)
    assert a.loss_history_ == b.loss_history_ and a.loss_history_ != c.loss_history_
    for p, q in zip(a.model_.parameters(), b.model_.parameters()):
        assert torch.equal(p, q)


def test_validation_uses_the_valid_split_in_nats_per_step(synthetic):
    est = SequenceModel(model="ghmm", eval_bound="exact", eval_every=1, **TINY).fit(synthetic)
    assert len(est.valid_history_) == 2
    assert est.valid_history_[-1] == pytest.approx(est.score(synthetic, split="valid"), abs=1e-5)
    explicit = SequenceModel(model="ghmm", eval_every=2, **TINY).fit(
        synthetic, X_valid=synthetic.split("test")
    )
    assert len(explicit.valid_history_) == 1


def test_load_restores_a_fit_from_its_checkpoint(synthetic, tmp_path):
    params = dict(model="ghmm", eval_bound="exact", **TINY)
    est = SequenceModel(logdir=str(tmp_path), **params).fit(synthetic)
    loaded = SequenceModel(**params).load(synthetic, tmp_path / "last.pt")
    assert loaded.n_iter_ == 2 and loaded.loss_history_ == est.loss_history_
    assert torch.equal(loaded.score_samples(synthetic), est.score_samples(synthetic))
    with pytest.raises(ValueError, match="does not match this model"):
        SequenceModel(**{**params, "latent_size": 5}).load(synthetic, tmp_path / "last.pt")


def test_score_with_a_random_state_repeats_and_leaves_the_global_stream_alone():
    from bbvae.data import PianoRollData

    data = PianoRollData.load()
    est = SequenceModel(latent_size=4, max_steps=2, random_state=0).fit(data)
    torch.manual_seed(11)
    expected_next = torch.rand(3)
    torch.manual_seed(11)
    first = est.score(data, split="valid", random_state=3)
    assert torch.equal(torch.rand(3), expected_next)  # the global generator did not move
    assert est.score(data, split="valid", random_state=3) == first
    assert est.score(data, split="valid", random_state=4) != first
    per_sequence = est.score_samples(data, split="valid", random_state=3)
    assert torch.equal(per_sequence, est.score_samples(data, split="valid", random_state=3))
    with pytest.raises(ValueError, match="random_state"):
        est.score(data, random_state=-1)
