"""Edge cases: zero-weight samples, long histories, schedules across eval and checkpoints."""

import math

import pytest
import torch

from bbvae.losses import ELBO, FIVO, IWAE, NVIL, Concrete
from bbvae.losses.base import LossHistory
from bbvae.sequential import GaussianHMM


@pytest.mark.parametrize("estimator", ["reparam", "dreg"])
def test_iwae_zero_weight_samples_give_finite_gradients(linear_gaussian, truncated, estimator):
    lg = linear_gaussian
    p = truncated(lg.p, threshold=0.0)  # about half the samples have log p = -inf
    torch.manual_seed(0)
    loss = IWAE(lg.q, p, n_samples=8, estimator=estimator)
    value = loss(lg.x)
    assert torch.isneginf(loss.log_p_).any() and torch.isfinite(value)
    value.backward()
    for prm in list(lg.q.parameters()) + list(p.parameters()):
        assert prm.grad is not None and torch.isfinite(prm.grad).all()


def test_an_infinite_bound_gives_an_infinite_value_and_no_nan_gradient(linear_gaussian, truncated):
    lg = linear_gaussian
    p = truncated(lg.p, threshold=-1e9)  # every sample has zero weight
    with pytest.warns(RuntimeWarning, match=r"data point\(s\) \[0, 1, 2, 3\]"):
        value = ELBO(lg.q, p, n_samples=2)(lg.x)
    assert value == math.inf
    value.backward()
    assert all(torch.isfinite(prm.grad).all() for prm in lg.q.parameters())


def test_loss_history_chunks_on_device_and_reads_back_in_order():
    history = LossHistory()
    values = torch.randn(2500, dtype=torch.float64)
    for v in values:
        history.append(v)
    assert len(history._pending) <= LossHistory.chunk and len(history) == 2500  # bounded list
    assert history.to_list() == values.tolist()
    history.append(torch.tensor(1.5))
    assert len(history) == 2501 and history.to_list()[-1] == 1.5


def test_concrete_schedule_advances_only_in_training_and_is_checkpointed(sbn):
    seen = []

    def schedule(step):
        seen.append(step)
        return 1.0 / (1 + step)

    loss = Concrete(sbn.q, sbn.p, temperature=schedule)
    for _ in range(3):
        loss(sbn.x)
    loss.eval()
    with torch.no_grad():
        loss(sbn.x)
    assert seen == [0, 1, 2, 3] and loss.n_calls_ == 3
    restored = Concrete(sbn.q, sbn.p, temperature=schedule)
    restored.load_state_dict(loss.state_dict())
    assert restored.n_calls_ == 3


def test_nvil_default_baseline_names_a_changed_data_shape(sbn):
    loss = NVIL(sbn.q, sbn.p)
    loss.prepare(sbn.x)
    with pytest.raises(ValueError, match=r"built for data of 6 values per row, got x of shape \[4, 7\]"):
        loss._baseline_module(sbn.x)(torch.zeros(4, 7, dtype=sbn.x.dtype))


def test_fivo_checks_its_settings_at_construction_and_reports_max_weight():
    model = GaussianHMM(1, 1)
    with pytest.raises(ValueError, match=r"expected ess_threshold in \[0, 1\], got 1.5"):
        FIVO(model.inf_net, model.gen_model, ess_threshold=1.5)
    loss = FIVO(model.inf_net, model.gen_model, n_particles=3)
    x, _ = model.sample(2, 4)
    loss(x)
    assert loss.max_weight_.shape == (2,) and torch.all(loss.max_weight_ <= 1.0)
