"""The ``bbvae`` command line: train -> eval -> sample on tiny budgets, and its error reports."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from bbvae.cli import main

REPO = Path(__file__).resolve().parents[1]
TINY = [
    "--latent-size",
    "3",
    "--hidden-size",
    "4",
    "--max-steps",
    "2",
    "--log-every",
    "1",
    "--seed",
    "0",
    "--threads",
    "1",
]


def run(capsys, *argv: str) -> str:
    status = main(list(argv))
    out, err = capsys.readouterr()
    assert status == 0, err
    return out


def eval_table(out: str) -> dict[str, tuple[float, float]]:
    rows = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] in ("ELBO", "IWAE", "FIVO", "EXACT"):
            rows[parts[0]] = (float(parts[1]), float(parts[2]))
    return rows


def test_pianoroll_train_eval_sample_on_the_embedded_chorales(tmp_path, capsys):
    logdir = tmp_path / "jsb"
    out = run(capsys, "train", "--logdir", str(logdir), "--max-length", "5", *TINY)
    assert "the embedded JSB chorales" in out and "done: 2 steps" in out
    assert {"config.json", "last.pt", "log.jsonl"} <= {p.name for p in logdir.iterdir()}
    settings = json.loads((logdir / "config.json").read_text())["settings"]
    assert settings["model"] == "vrnn" and settings["bound"] == "fivo" and settings["latent_size"] == 3

    # eval rebuilds the model from the logdir alone
    rows = eval_table(run(capsys, "eval", "--logdir", str(logdir), "--split", "valid"))
    assert set(rows) == {"ELBO", "IWAE", "FIVO"}
    saved = json.loads((logdir / "eval_valid.json").read_text())
    assert saved["n_steps"] == 5 * saved["n_sequences"]  # every chorale is longer than 5 steps
    for name, (per_step, per_sequence) in rows.items():
        bound = saved["bounds"][name.lower()]
        assert per_step == pytest.approx(bound["per_step"], abs=1e-4) and per_step < 0
        assert per_sequence == pytest.approx(5 * per_step, abs=1e-2)

    run(
        capsys,
        "sample",
        "--logdir",
        str(logdir),
        "--prefix-length",
        "3",
        "--sample-length",
        "4",
        "--num-samples",
        "2",
        "--batch-size",
        "2",
    )
    with np.load(logdir / "samples.npz") as npz:
        assert npz["prefixes"].shape == (2, 3, 88) and npz["prefix_lengths"].tolist() == [3, 3]
        assert npz["samples"].shape == (2, 2, 4, 88) and npz["latents"].shape == (2, 2, 4, 3)
        assert set(np.unique(npz["samples"])) <= {0.0, 1.0}
    midi = sorted(p.name for p in (logdir / "samples_midi").iterdir())
    assert midi == [
        "prefix0_sample0.mid",
        "prefix0_sample1.mid",
        "prefix1_sample0.mid",
        "prefix1_sample1.mid",
    ]


def test_text_train_eval_sample(tmp_path, capsys):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the cat sat on the mat. " * 30, encoding="utf-8")
    logdir = tmp_path / "text"
    run(
        capsys,
        "train",
        "--logdir",
        str(logdir),
        "--dataset-type",
        "text",
        "--dataset-path",
        str(corpus),
        "--model",
        "srnn",
        "--bound",
        "iwae",
        "--max-length",
        "8",
        *TINY,
    )
    assert set(eval_table(run(capsys, "eval", "--logdir", str(logdir)))) == {"ELBO", "IWAE", "FIVO"}
    run(
        capsys,
        "sample",
        "--logdir",
        str(logdir),
        "--prefix-length",
        "4",
        "--sample-length",
        "6",
        "--num-samples",
        "3",
        "--batch-size",
        "2",
    )
    with np.load(logdir / "samples.npz") as npz:
        vocabulary = str(npz["vocabulary"])
        assert vocabulary == "".join(sorted(set("the cat sat on the mat. ")))
        assert npz["samples"].shape == (2, 3, 6) and npz["samples"].dtype == np.int64
        assert npz["prefixes"].shape == (2, 4) and int(npz["samples"].max()) < len(vocabulary)
        first_prefix = "".join(vocabulary[i] for i in npz["prefixes"][0])
    text = (logdir / "samples.txt").read_text(encoding="utf-8")
    assert text.startswith(f"=== prefix 0 ===\n{first_prefix}\n--- sample 0 ---\n{first_prefix}")
    assert text.count("--- sample") == 6


def test_synthetic_ghmm_train_resume_eval_sample(tmp_path, capsys):
    logdir = tmp_path / "ghmm"
    common = ["--logdir", str(logdir)]
    run(
        capsys,
        "train",
        *common,
        "--dataset-type",
        "synthetic",
        "--model",
        "ghmm",
        "--max-length",
        "5",
        "--eval-every",
        "1",
        *TINY,
    )
    out = run(capsys, "train", *common, "--resume", "--max-steps", "3")
    assert "done: 3 steps" in out  # resumed with the saved settings: one more step
    rows = eval_table(run(capsys, "eval", *common, "--num-samples-eval", "8"))
    assert set(rows) == {"ELBO", "IWAE", "FIVO", "EXACT"}
    assert rows["ELBO"][0] <= rows["EXACT"][0] + 0.5  # a bound (loosely: one random estimate)
    assert eval_table(run(capsys, "eval", *common, "--checkpoint", "best"))
    run(capsys, "sample", *common, "--prefix-length", "0", "--sample-length", "4", "--num-samples", "2")
    with np.load(logdir / "samples.npz") as npz:
        assert npz["samples"].shape == (4, 2, 4, 2) and npz["prefixes"].shape == (4, 0, 2)
        assert npz["prefix_lengths"].tolist() == [0, 0, 0, 0]


def test_synthetic_data_from_a_file(tmp_path, capsys):
    g = torch.Generator().manual_seed(0)
    arrays = {s: torch.randn(3, 4, 2, generator=g).numpy() for s in ("train", "valid", "test")}
    path = tmp_path / "seqs.npz"
    np.savez(path, **arrays, test_lengths=np.array([4, 2, 3]))
    logdir = tmp_path / "rnn"
    run(
        capsys,
        "train",
        "--logdir",
        str(logdir),
        "--dataset-type",
        "synthetic",
        "--dataset-path",
        str(path),
        "--model",
        "rnn",
        *TINY,
    )
    out = run(capsys, "eval", "--logdir", str(logdir))
    assert "3 sequences, 9 steps" in out
    rows = eval_table(out)  # the RNN has no latents: every bound is the exact likelihood
    assert rows["ELBO"][0] == pytest.approx(rows["EXACT"][0], abs=1e-4)


@pytest.mark.parametrize(
    "argv, message",
    [
        ([], "the following arguments are required"),
        (["fit"], "invalid choice: 'fit'"),
        (["train"], "the following arguments are required: --logdir"),
        (["train", "--logdir", "{tmp}/a", "--max-steps", "0"], "--max-steps: expected a positive integer"),
        (["train", "--logdir", "{tmp}/a", "--learning-rate", "fast"], "expected a positive number"),
        (
            ["train", "--logdir", "{tmp}/a", "--dataset-type", "text"],
            "--dataset-type text needs --dataset-path",
        ),
        (["train", "--logdir", "{tmp}/a", "--dataset-path", "{tmp}/missing.pkl"], "no such file"),
        (["train", "--logdir", "{tmp}/a", "--model", "ghmm"], "--model ghmm needs real-valued data"),
        (
            ["train", "--logdir", "{tmp}/a", "--bound", "rws", "--num-samples", "1"],
            "needs --num-samples >= 2",
        ),
        (["train", "--logdir", "{tmp}/a", "--device", "banana"], "invalid device 'banana'"),
        (["train", "--logdir", "{tmp}/a", "--resume"], "has no last.pt to continue from"),
        (["eval", "--logdir", "{tmp}/nothing"], "no such directory"),
        (["eval", "--logdir", "{tmp}", "--threads", "0"], "--threads: expected a positive integer"),
        (["sample", "--logdir", "{tmp}"], "holds no trained model"),
        (["train", "--logdir", "{tmp}/a", "--dataset-path", "{tmp}/not_a_pickle.txt"], "not a readable"),
    ],
)
def test_errors_are_one_line_with_status_2(argv, message, tmp_path, capsys):
    (tmp_path / "not_a_pickle.txt").write_text("hello")
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert err.startswith("bbvae: error: ") and err.count("\n") == 1, err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "a" / "last.pt").exists()


def test_a_trained_logdir_is_not_overwritten_and_missing_checkpoints_are_reported(tmp_path, capsys):
    logdir = str(tmp_path / "g")
    run(
        capsys,
        "train",
        "--logdir",
        logdir,
        "--dataset-type",
        "synthetic",
        "--model",
        "rnn",
        "--max-length",
        "3",
        *TINY,
    )
    config = (tmp_path / "g" / "config.json").read_text()
    for argv, message in [
        (["train", "--logdir", logdir, "--max-steps", "2"], "already holds a trained model"),
        (["eval", "--logdir", logdir, "--checkpoint", "best"], "has no best.pt"),
        (["train", "--logdir", logdir, "--resume", "--latent-size", "7", "--model", "vrnn"], "cannot resume"),
    ]:
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("bbvae: error: ") and err.count("\n") == 1 and message in err, err
    assert (tmp_path / "g" / "config.json").read_text() == config  # the failed resume changed nothing
    assert eval_table(run(capsys, "eval", "--logdir", logdir))


def test_python_dash_m_entry_point():
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    done = subprocess.run(
        [sys.executable, "-m", "bbvae", "--help"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "usage: bbvae" in done.stdout and "{train,eval,sample,plot}" in done.stdout


def test_length_bucketing_is_a_training_setting(tmp_path, capsys):
    logdir = tmp_path / "bucketed"
    run(
        capsys,
        "train",
        "--logdir",
        str(logdir),
        "--dataset-type",
        "synthetic",
        "--length-bucketing",
        "2",
        *TINY,
    )
    assert json.loads((logdir / "config.json").read_text())["settings"]["length_bucketing"] == 2
    state = torch.load(logdir / "last.pt", weights_only=False)
    assert state["config"]["length_bucketing"] == 2
