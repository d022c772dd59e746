"""The command line speaks its own language in errors: option names, never Python keywords."""

from __future__ import annotations

import pytest

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
