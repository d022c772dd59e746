"""The command line speaks its own language in errors: option names, never Python keywords."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bbvae.cli import main

TINY = ["--dataset-type", "synthetic", "--model", "rnn", "--max-length", "3", "--latent-size", "3"]
TINY += ["--max-steps", "1", "--seed", "0", "--threads", "1"]


def fail(capsys, *argv: str) -> str:
    assert main(list(argv)) == 2
    err = capsys.readouterr().err
    assert err.startswith("bbvae: error: ") and err.count("\n") == 1, err
    return err


@pytest.mark.parametrize("under", [False, True])
def test_a_logdir_that_is_or_lies_under_a_file_names_logdir(under, tmp_path, capsys):
    (tmp_path / "plain").write_text("not a directory")
    logdir = tmp_path / "plain" / "run" if under else tmp_path / "plain"
    err = fail(capsys, "train", "--logdir", str(logdir), *TINY)
    assert f"--logdir {str(logdir)!r}" in err and "is a file" in err
    assert (tmp_path / "plain").read_text() == "not a directory"


def test_resume_with_another_latent_size_names_the_option_not_python(tmp_path, capsys):
    logdir = str(tmp_path / "run")
    assert main(["train", "--logdir", logdir, *TINY]) == 0
    capsys.readouterr()
    err = fail(capsys, "train", "--logdir", logdir, "--resume", "--latent-size", "5", "--max-steps", "2")
    assert "--latent-size 5 here, 3 in the run" in err
    assert "resume=" not in err and "logdir=" not in err and "latent_size" not in err
    err = fail(capsys, "train", "--logdir", logdir, "--resume", "--seed", "4")
    assert "--seed 4 here, 0 in the run" in err
    # what a resumed run may change still works
    assert main(["train", "--logdir", logdir, "--resume", "--max-steps", "2", "--learning-rate", "0.01"]) == 0


def synthetic_file(tmp_path, name: str = "data.npz", **overrides):
    g = np.random.default_rng(0)
    arrays = {split: g.normal(size=(3, 15, 2)).astype(np.float32) for split in ("train", "valid", "test")}
    arrays.update(overrides)
    path = tmp_path / name
    if name.endswith(".npz"):
        np.savez(path, **arrays)
    else:
        torch.save({k: torch.as_tensor(v) for k, v in arrays.items()}, path)
    return str(path)


FILE_CASES = [
    ({"train_lengths": np.array([15, -3, 4])}, "train_lengths[1] = -3 is outside 1..15"),
    ({"test_lengths": np.array([15, 40, 4])}, "test_lengths[1] = 40 is outside 1..15"),
    ({"valid_lengths": np.array([2, 3])}, "expected valid_lengths to be 3 integers"),
    ({"train_lengths": np.array([1.5, 2.0, 3.0])}, "expected train_lengths to be 3 integers"),
    ({"test": np.zeros((3, 15, 3))}, "the splits' sequences differ in width D"),
]
STRINGS = ({"train": np.array([["a", "b"]])}, "expected train to hold numbers")  # (.npz only)


@pytest.mark.parametrize(
    "suffix, overrides, message",
    [(suffix, *case) for suffix in (".npz", ".pt") for case in FILE_CASES] + [(".npz", *STRINGS)],
)
def test_synthetic_files_are_checked_key_by_key(suffix, overrides, message, tmp_path, capsys):
    path = synthetic_file(tmp_path, "data" + suffix, **overrides)
    err = fail(capsys, "train", "--logdir", str(tmp_path / "run"), "--dataset-type", "synthetic",
               "--dataset-path", path, "--max-steps", "1")  # fmt: skip
    assert f"--dataset-path {path!r}: {message}" in err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("split", ["valid", "test"])
def test_a_nan_or_inf_in_any_split_is_found_before_training(split, tmp_path, capsys):
    g = np.random.default_rng(1)
    bad = g.normal(size=(3, 15, 2))
    bad[2, 9, 1] = np.inf if split == "valid" else np.nan
    path = synthetic_file(tmp_path, **{split: bad})
    err = fail(capsys, "train", "--logdir", str(tmp_path / "run"), "--dataset-type", "synthetic",
               "--dataset-path", path, "--max-steps", "1")  # fmt: skip
    assert f"the {split!r} split holds NaN or infinite values (first in sequence 2, step 9)" in err
    assert not (tmp_path / "run" / "last.pt").exists()


def test_nan_padding_past_the_lengths_of_a_synthetic_file_is_fine(tmp_path, capsys):
    g = np.random.default_rng(2)
    train = g.normal(size=(3, 15, 2))
    train[1, 10:] = np.nan  # padding past train_lengths[1] = 10
    path = synthetic_file(tmp_path, train=train, train_lengths=np.array([15, 10, 15]))
    argv = ["train", "--logdir", str(tmp_path / "run"), "--dataset-type", "synthetic", "--dataset-path", path]
    assert main([*argv, "--max-steps", "1", "--latent-size", "2", "--threads", "1"]) == 0
    capsys.readouterr()
