"""Non-finite data and mismatched dtypes are refused up front, not after a rollback."""

import pytest
import torch

import bbvae
from bbvae.cli import main
from bbvae.losses import IWAE
from bbvae.models import GaussianInfNet, LinearGaussianGenModel
from bbvae.sequential import SequenceModel
from bbvae.training import Trainer


def _vae(**kw):
    return bbvae.VAE(GaussianInfNet(3, 2), LinearGaussianGenModel(2, 3), max_steps=2, batch_size=4, **kw)


def test_vae_refuses_nan_data_and_casts_float64_data():
    x = torch.randn(8, 3)
    x[2, 1] = float("nan")
    with pytest.raises(ValueError, match="X holds NaN or infinite values"):
        _vae().fit(x)
    vae = _vae(random_state=0).fit(torch.randn(8, 3, dtype=torch.float64))  # float32 model
    assert vae.n_iter_ == 2


def test_sequence_model_refuses_nan_sequences():
    seqs = [torch.randn(5, 2), torch.randn(4, 2)]
    seqs[1][3, 0] = float("inf")
    with pytest.raises(ValueError, match="sequence 1 of X holds NaN or infinite values"):
        SequenceModel(model="ghmm", bound="iwae", max_steps=1).fit(seqs)


def test_trainer_refuses_non_finite_initial_parameters():
    p = LinearGaussianGenModel(2, 3)
    with torch.no_grad():
        p.bias[0] = float("nan")
    trainer = Trainer(IWAE(GaussianInfNet(3, 2), p, n_samples=2), max_steps=1, batch_size=4, progress=False)
    with pytest.raises(ValueError, match=r"non-finite before training \(gen_model.bias\)"):
        trainer.fit(torch.randn(8, 3))


def test_cli_names_an_unreadable_npz(tmp_path, capsys):
    bad = tmp_path / "c.npz"
    bad.write_bytes(b"not a zip file")
    argv = ["train", "--logdir", str(tmp_path / "run"), "--dataset-type", "synthetic"]
    assert main([*argv, "--model", "ghmm", "--dataset-path", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "not a readable .npz file" in err and err.count("\n") == 1
