"""The table of bad inputs and bbvae's messages (benchmarks/README.md, "Bad input").

Runs a selection of the inputs of tests/test_bad_inputs.py and tests/test_cli_messages.py through
the Python API and the command line and prints one markdown row per input: where it went, what
it was, the error type and the message.

    python benchmarks/bad_inputs.py
"""

from __future__ import annotations

import contextlib
import io
import tempfile
import warnings
from pathlib import Path

import numpy as np
import scipy.sparse
import torch

from bbvae.cli import main as cli
from bbvae.estimator import VAE
from bbvae.losses import FIVO, IWAE
from bbvae.models import GaussianInfNet, LinearGaussianGenModel
from bbvae.sequential import VRNN
from bbvae.sequential.estimator import SequenceModel


def outcome(call) -> tuple[str, str]:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            call()
    except Exception as exc:
        return type(exc).__name__, str(exc)
    return "accepted", ""


def cli_outcome(argv: list[str]) -> tuple[str, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        status = cli(argv)
    return f"exit {status}", err.getvalue().strip()


def vae() -> VAE:
    torch.manual_seed(0)
    return VAE(GaussianInfNet(3, 2), LinearGaussianGenModel(2, 3), max_steps=2, n_samples_eval=2)


def rows(tmp: Path) -> list[tuple[str, str, tuple[str, str]]]:
    nan = torch.rand(6, 3)
    nan[2, 1] = float("nan")
    seq = SequenceModel("vrnn", latent_size=2, hidden_size=3, max_steps=1, batch_size=2)
    torch.manual_seed(0)
    model = VRNN(3, latent_size=2, hidden_size=3, observation="normal")
    iwae = IWAE(GaussianInfNet(3, 2), LinearGaussianGenModel(2, 3), n_samples=2)
    fivo = FIVO(model.inf_net, model.gen_model, n_particles=2)
    out = [
        ("VAE.fit", "X [100, 4] for a 3-wide model", outcome(lambda: vae().fit(torch.rand(100, 4)))),
        ("VAE.fit", "X 1-D [6]", outcome(lambda: vae().fit(torch.rand(6)))),
        ("VAE.fit", "X 0-D", outcome(lambda: vae().fit(torch.tensor(1.0)))),
        ("VAE.fit", "X [0, 3]", outcome(lambda: vae().fit(torch.zeros(0, 3)))),
        ("VAE.fit", "X [12, 0]", outcome(lambda: vae().fit(torch.zeros(12, 0)))),
        ("VAE.fit", "X with a NaN", outcome(lambda: vae().fit(nan))),
        ("VAE.fit", "X int64 / bool 0/1", outcome(lambda: vae().fit(torch.ones(6, 3, dtype=torch.long)))),
        ("VAE.fit", "X strings", outcome(lambda: vae().fit(np.array([["a", "b", "c"]] * 4)))),
        (
            "VAE.fit",
            "X object array (dict)",
            outcome(lambda: vae().fit(np.array([[1.0, {}, 2.0]] * 4, dtype=object))),
        ),
        ("VAE.fit", "X complex", outcome(lambda: vae().fit(torch.rand(6, 3, dtype=torch.complex64)))),
        ("VAE.fit", "X scipy CSR", outcome(lambda: vae().fit(scipy.sparse.csr_matrix(np.eye(6, 3))))),
        ("VAE.fit", "X torch sparse", outcome(lambda: vae().fit(torch.eye(6, 3).to_sparse()))),
        (
            "SequenceModel.fit",
            "int64 [N, T, D] piano roll",
            outcome(lambda: seq.fit(torch.ones(4, 5, 3).long())),
        ),
        (
            "SequenceModel.fit",
            "X_valid with an inf",
            outcome(lambda: seq.fit(torch.rand(4, 5, 3), X_valid=torch.full((2, 5, 3), float("inf")))),
        ),
        ("SequenceModel.fit", "[N, 0, D]", outcome(lambda: seq.fit(torch.zeros(4, 0, 3)))),
        ("IWAE(x)", "x with a NaN", outcome(lambda: iwae(nan))),
        ("IWAE(x)", "x float64 for a float32 model", outcome(lambda: iwae(torch.rand(4, 3).double()))),
        ("IWAE(x)", "x a numpy array", outcome(lambda: iwae(np.zeros((4, 3))))),
        ("IWAE(x)", "x [0, 3]", outcome(lambda: iwae(torch.zeros(0, 3)))),
        (
            "FIVO(x, lengths)",
            "lengths [5, 2] with T = 4",
            outcome(lambda: fivo(torch.rand(2, 4, 3), lengths=torch.tensor([5, 2]))),
        ),
        (
            "FIVO(x, lengths)",
            "NaN within the lengths",
            outcome(lambda: fivo(torch.full((2, 4, 3), float("nan")), lengths=torch.tensor([4, 2]))),
        ),
    ]
    g = np.random.default_rng(0)
    splits = {s: g.normal(size=(3, 15, 2)) for s in ("train", "valid", "test")}
    np.savez(tmp / "neg.npz", **splits, train_lengths=np.array([15, -3, 4]))
    bad_valid = {**splits, "valid": splits["valid"].copy()}
    bad_valid["valid"][1, 7, 0] = np.inf
    np.savez(tmp / "inf.npz", **bad_valid)
    (tmp / "file").write_text("x")
    synthetic = ["--dataset-type", "synthetic", "--max-steps", "1", "--threads", "1"]
    out += [
        (
            "bbvae train",
            ".npz with train_lengths[1] = -3",
            cli_outcome(
                ["train", "--logdir", str(tmp / "a"), *synthetic, "--dataset-path", str(tmp / "neg.npz")]
            ),
        ),
        (
            "bbvae train",
            ".npz with an inf in valid only",
            cli_outcome(
                ["train", "--logdir", str(tmp / "b"), *synthetic, "--dataset-path", str(tmp / "inf.npz")]
            ),
        ),
        (
            "bbvae train",
            "--logdir under a regular file",
            cli_outcome(["train", "--logdir", str(tmp / "file" / "run"), *synthetic]),
        ),
    ]
    cli(["train", "--logdir", str(tmp / "c"), *synthetic, "--latent-size", "4"])
    out.append(
        (
            "bbvae train",
            "--resume with another --latent-size",
            cli_outcome(["train", "--logdir", str(tmp / "c"), "--resume", "--latent-size", "8"]),
        )
    )
    return out


def main() -> None:
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        table = rows(Path(tmp))
    print("| entry point | input | outcome | message |\n|---|---|---|---|")
    for where, what, (kind, message) in table:
        message = " ".join(message.replace(tmp, "TMP").split()).replace("|", "\\|")
        print(f"| {where} | {what} | {kind} | {message} |")


if __name__ == "__main__":
    main()
