"""``bbvae`` on raw audio: train -> eval -> sample (WAV files and a picture) on a tiny WAV folder."""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np
import pytest

from bbvae.cli import main
from bbvae.data import read_wav

FRAME = 40
TINY = ["--latent-size", "3", "--hidden-size", "4", "--max-steps", "2", "--log-every", "1"]
TINY += ["--seed", "0", "--threads", "1", "--frame-size", str(FRAME), "--chunk-length", "5"]


def _wav_folder(root: Path) -> Path:
    rng = np.random.default_rng(0)
    t = np.arange(16 * FRAME)
    for split, n in (("train", 4), ("valid", 2), ("test", 2)):
        (root / split).mkdir(parents=True)
        for i in range(n):
            ints = 3000 * np.sin(2 * np.pi * (i + 1) * t / 97) + rng.normal(0, 300, t.shape)
            with wave.open(str(root / split / f"u{i}.wav"), "wb") as f:
                f.setnchannels(1)
                f.setsampwidth(2)
                f.setframerate(8000)
                f.writeframes(ints.astype("<i2").tobytes())
    return root


def run(capsys, *argv: str) -> str:
    status = main(list(argv))
    out, err = capsys.readouterr()
    assert status == 0, err
    return out


@pytest.mark.parametrize("model,observation", [("vrnn", "gmm"), ("rnn", "normal")])
def test_speech_train_eval_sample(tmp_path, capsys, model, observation):
    data = _wav_folder(tmp_path / "audio")
    logdir = tmp_path / "run"
    extra = ["--n-components", "3"] if observation == "gmm" else []
    run(
        capsys, "train", "--logdir", str(logdir), "--dataset-type", "speech", "--dataset-path", str(data),
        "--model", model, "--observation", observation, "--bound", "iwae", *extra, *TINY,
    )  # fmt: skip
    out = run(capsys, "eval", "--logdir", str(logdir))
    assert "2 sequences, 32 steps" in out  # whole test utterances: 2 x 16 frames
    run(
        capsys, "sample", "--logdir", str(logdir), "--prefix-length", "3", "--sample-length", "4",
        "--num-samples", "2", "--batch-size", "2",
    )  # fmt: skip
    with np.load(logdir / "samples.npz") as npz:
        assert npz["samples"].shape == (2, 2, 4, FRAME) and npz["prefixes"].shape == (2, 3, FRAME)
        first = npz["prefixes"][0].reshape(-1)
    folder = logdir / "samples_wav"
    names = sorted(p.name for p in folder.iterdir())
    pieces = [f"prefix{b}_sample{k}.wav" for b in (0, 1) for k in (0, 1)]
    assert names == sorted(["real0.wav", "real1.wav", *pieces])
    x, rate = read_wav(folder / "prefix1_sample0.wav")
    assert rate == 8000 and x.shape == ((3 + 4) * FRAME,)
    real, _ = read_wav(folder / "real0.wav")
    prefix, _ = read_wav(folder / "prefix0_sample1.wav")
    np.testing.assert_allclose(prefix[: 3 * FRAME], real[: 3 * FRAME], atol=2 / 32768)
    assert real.shape == (16 * FRAME,) and np.abs(first).max() > 0
    picture = logdir / "samples.png"
    assert picture.is_file() and picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # Unconditional samples, and everything in one WAV file.
    run(capsys, "sample", "--logdir", str(logdir), "--prefix-length", "0", "--sample-length", "3",
        "--num-samples", "1", "--batch-size", "2")  # fmt: skip
    assert (folder / "sample1_0.wav").is_file()
    out_wav = tmp_path / "all.wav"
    run(capsys, "sample", "--logdir", str(logdir), "--prefix-length", "2", "--sample-length", "3",
        "--num-samples", "2", "--batch-size", "1", "--out", str(out_wav))  # fmt: skip
    with wave.open(str(out_wav), "rb") as f:
        assert f.getnframes() == 2 * ((2 + 3) * FRAME + 2000)  # 0.25 s of silence after each piece
    # bbvae plot: bounds, ESS and the audio picture of a continuation next to the truth.
    out = run(capsys, "plot", str(logdir), "--prefix-length", "4", "--sample-length", "6")
    assert (logdir / "plots" / "samples.png").is_file() and "samples.png" in out


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--dataset-type", "speech"], "--dataset-type speech needs --dataset-path"),
        (["--dataset-type", "speech", "--dataset-path", "{tmp}/f.txt"], "expected --dataset-path to be a"),
        (["--frame-size", "100"], "--frame-size and --chunk-length belong to --dataset-type speech"),
        (["--dataset-type", "speech", "--dataset-path", "{tmp}"], "holds 0 audio file(s)"),
    ],
)
def test_speech_errors(argv, message, tmp_path, capsys):
    (tmp_path / "f.txt").write_text("x")
    argv = ["train", "--logdir", str(tmp_path / "a"), *[a.replace("{tmp}", str(tmp_path)) for a in argv]]
    assert main(argv) == 2
    _, err = capsys.readouterr()
    assert err.startswith("bbvae: error: ") and message in err, err


def test_wav_out_needs_a_speech_model(tmp_path, capsys):
    logdir = tmp_path / "g"
    run(capsys, "train", "--logdir", str(logdir), "--dataset-type", "synthetic", "--max-steps", "1",
        "--latent-size", "2", "--threads", "1")  # fmt: skip
    assert main(["sample", "--logdir", str(logdir), "--out", str(tmp_path / "x.wav")]) == 2
    assert "--out FILE.wav needs a speech model" in capsys.readouterr().err
