"""Synthetic Gaussian-HMM data: reproducible, ragged when asked, scored exactly by its model."""

import pytest
import torch

from bbvae.data.synthetic import gaussian_hmm_data


def test_reproducible_and_leaves_global_rng_alone():
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = gaussian_hmm_data(20, 15, min_length=4, seed=7)
    after = torch.rand(1)
    b = gaussian_hmm_data(20, 15, min_length=4, seed=7)
    assert torch.equal(before, after)
    assert all(torch.equal(s, t) for s, t in zip(a.train, b.train))
    c = gaussian_hmm_data(20, 15, min_length=4, seed=8)
    assert not torch.equal(a.train[0], c.train[0])


def test_splits_lengths_and_batches():
    data = gaussian_hmm_data(40, 12, x_dim=3, min_length=5, seed=0)
    assert (len(data.train), len(data.valid), len(data.test)) == (32, 4, 4)
    lengths = [len(s) for s in data.train]
    assert min(lengths) >= 5 and max(lengths) <= 12 and len(set(lengths)) > 1
    batches = list(data.batches("train", 10, shuffle=True, generator=torch.Generator().manual_seed(0)))
    assert sum(len(b.lengths) for b in batches) == 32
    for b in batches:
        assert b.x.shape[0] == b.lengths.shape[0] and b.x.shape[2] == 3
        assert b.x.shape[1] == int(b.lengths.max())
        assert torch.all(b.x[~b.mask] == 0)  # zero padding
    assert data.num_steps("train") == sum(lengths)


def test_generating_model_scores_the_data_better_than_a_fresh_model():
    from bbvae.sequential.ghmm import GaussianHMM

    data = gaussian_hmm_data(60, 20, seed=0)
    batch = data.full_batch("train", dtype=torch.float64)
    true_ll = data.model.exact_log_prob(batch.x, batch.lengths).mean()
    torch.manual_seed(0)
    other_ll = GaussianHMM(2, 2).double().exact_log_prob(batch.x, batch.lengths).mean()
    assert true_ll > other_ll + 1.0


def test_bad_arguments():
    with pytest.raises(ValueError, match="min_length"):
        gaussian_hmm_data(10, 5, min_length=6)
    with pytest.raises(ValueError, match="fractions"):
        gaussian_hmm_data(10, 5, fractions=(0.5, 0.5, 0.5))
    with pytest.raises(ValueError, match="split"):
        gaussian_hmm_data(10, 5).split("training")
