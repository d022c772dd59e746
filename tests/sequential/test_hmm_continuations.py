"""Prefix-conditioned sampling for the two HMMs (their filtering state is the last latent)."""

import torch

from bbvae.sequential import DiscreteHMM, GaussianHMM
from bbvae.sequential.sampling import sample_continuations


def test_discrete_hmm_continuation_follows_a_deterministic_cycle():
    torch.manual_seed(0)
    n = 4
    model = DiscreteHMM(n, n_obs=n, proposal="optimal")
    with torch.no_grad():
        cycle = torch.roll(torch.eye(n), shifts=1, dims=1)  # state s -> s + 1 (mod n)
        model.transition_logits.copy_(30.0 * cycle - 15.0)
        model.emission_logits.copy_(30.0 * torch.eye(n) - 15.0)  # state s emits symbol s
    prefix = torch.tensor([[0, 1, 2], [3, 0, 1]])
    x, z = sample_continuations(model, prefix, n_samples=6, sample_len=5)
    assert x.shape == (2, 6, 5) and z.shape == (2, 6, 5)
    expected = (prefix[:, -1:, None] + torch.arange(1, 6)).remainder(n)  # [2, 1, 5]
    assert torch.equal(x, expected.expand(2, 6, 5))


def test_gaussian_hmm_continuation_starts_from_the_filtered_state():
    torch.manual_seed(0)
    model = GaussianHMM(1, 1, proposal="optimal", transition_scale=1e-3, emission_scale=1e-3)
    with torch.no_grad():
        model.transition.fill_(1.0)  # a nearly constant latent, observed almost exactly
        model.emission.fill_(1.0)
    prefix = torch.tensor([[[2.0], [2.0], [2.0]], [[-1.0], [-1.0], [-1.0]]])
    x, _ = sample_continuations(model, prefix, n_samples=3, sample_len=4)
    assert x.shape == (2, 3, 4, 1)
    torch.testing.assert_close(x[0], torch.full((3, 4, 1), 2.0), atol=0.05, rtol=0)
    torch.testing.assert_close(x[1], torch.full((3, 4, 1), -1.0), atol=0.05, rtol=0)
