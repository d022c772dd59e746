"""PerStep: any loss's bound and gradient divided by each sequence's length."""

import pytest
import torch

from bbvae.losses import IWAE, PerStep
from bbvae.sequential import RNN


def test_per_step_divides_bound_and_gradient_by_length():
    torch.manual_seed(0)
    model = RNN(5, hidden_size=8).double()
    x = (torch.rand(3, 7, 5, dtype=torch.float64) < 0.3).double()
    lengths = torch.tensor([7, 4, 2])
    plain, per_step = IWAE(model.inf_net, model.gen_model, n_samples=2), None
    per_step = PerStep(IWAE(model.inf_net, model.gen_model, n_samples=2))
    torch.manual_seed(1)
    plain(x, lengths=lengths)
    torch.manual_seed(1)
    value = per_step(x, lengths=lengths)
    torch.testing.assert_close(per_step.bound_, plain.bound_ / lengths)
    # the RNN's bound is exact, so the gradient is that of the mean per-step log-likelihood
    value.backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    (-(model.exact_log_prob(x, lengths) / lengths).mean()).backward()
    for g, p in zip(grads, model.parameters()):
        torch.testing.assert_close(g, p.grad)
    assert per_step.normalize == "length" and per_step.log_p_.shape == (3, 2)


def test_per_step_rejects_non_losses():
    with pytest.raises(TypeError, match="expected a bbvae Loss"):
        PerStep(torch.nn.Linear(2, 2))
