"""Pictures and TensorBoard: ``bbvae plot`` renders every PNG headless at its size, and the
TensorBoard scalars are the log's."""

from __future__ import annotations

import json
import struct
import sys
from pathlib import Path

import pytest
import torch

from bbvae import plots
from bbvae.cli import main
from bbvae.losses import IWAE
from bbvae.models import GaussianInfNet, LinearGaussianGenModel
from bbvae.training import TensorBoardLogger, Trainer

pytest.importorskip("matplotlib")

TINY = ["--latent-size", "3", "--hidden-size", "4", "--log-every", "1", "--seed", "0", "--threads", "1"]
PLOT = ["--max-sequences", "6", "--prefix-length", "6", "--sample-length", "6", "--num-prefixes", "2"]


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) read from a PNG's IHDR chunk; fails unless the file is a PNG."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def expected(name: str) -> tuple[int, int]:
    width, height = plots.SIZES[name]
    return round(width * plots.DPI), round(height * plots.DPI)


def run(capsys, *argv: str) -> str:
    status = main(list(argv))
    out, err = capsys.readouterr()
    assert status == 0, err
    return out


def test_plot_draws_bounds_ess_and_pianoroll_samples(tmp_path, capsys):
    logdir = tmp_path / "jsb"
    run(
        capsys,
        "train",
        "--logdir",
        str(logdir),
        "--max-length",
        "14",
        "--max-steps",
        "4",
        "--eval-every",
        "2",
        *TINY,
    )
    out = run(capsys, "plot", str(logdir), *PLOT)
    pictures = {"bounds.png": "bounds", "ess.png": "ess", "samples.png": "pianorolls"}
    for file, name in pictures.items():
        path = logdir / "plots" / file
        assert path.stat().st_size > 5000 and png_size(path) == expected(name), file
        assert str(path) in out


def test_plot_writes_text_samples(tmp_path, capsys):
    corpus = tmp_path / "small.txt"
    lines = [f"line {i}: to be, or not to be, that is the question {i % 7}\n" for i in range(80)]
    corpus.write_text("".join(lines), encoding="utf-8")
    logdir = tmp_path / "text"
    data = ["--dataset-type", "text", "--dataset-path", str(corpus), "--max-length", "20"]
    run(capsys, "train", "--logdir", str(logdir), *data, "--max-steps", "2", *TINY)
    run(capsys, "plot", str(logdir), *PLOT, "--out", str(tmp_path / "pictures"))
    text = (tmp_path / "pictures" / "samples_plot.txt").read_text(encoding="utf-8")
    assert text.count("--- truth ---") == text.count("--- model ---") == 2
    assert "unconditional sample 1" in text
    assert png_size(tmp_path / "pictures" / "ess.png") == expected("ess")


def test_plot_without_matplotlib_names_the_extra(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # `import matplotlib.figure` fails
    assert main(["plot", str(tmp_path)]) == 2
    assert "pip install 'bbvae[plots]'" in capsys.readouterr().err
    with pytest.raises(ImportError, match=r"bbvae\[plots\]"):
        plots.plot_ess(torch.ones(1, 2).numpy(), torch.tensor([2]).numpy(), 2, tmp_path / "x.png")


def test_ess_plot_leaves_out_steps_past_each_length(tmp_path):
    # Sequence 1 ends after step 2: its huge ESS there must not count at step 3.
    ess = torch.tensor([[4.0, 2.0, 1.0], [4.0, 4.0, 100.0]]).numpy()
    path = plots.plot_ess(ess, torch.tensor([3, 2]).numpy(), 4, tmp_path / "ess.png")
    assert png_size(path) == expected("ess")


def _events(directory: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(directory))
    accumulator.Reload()
    return {
        tag: [(e.step, e.value) for e in accumulator.Scalars(tag)] for tag in accumulator.Tags()["scalars"]
    }


def test_tensorboard_scalars_are_the_log_rows(tmp_path):
    pytest.importorskip("tensorboard")
    torch.manual_seed(0)
    x = LinearGaussianGenModel(2, 3).double().sample(32)[0]
    loss = IWAE(GaussianInfNet(3, 2).double(), LinearGaussianGenModel(2, 3).double(), 2)
    trainer = Trainer(
        loss,
        batch_size=8,
        max_steps=6,
        log_every=2,
        eval_every=3,
        logdir=tmp_path,
        tensorboard=True,
        progress=False,
    )
    trainer.fit(x, valid_data=x[:8])
    rows = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    events = _events(tmp_path / "tensorboard")

    def check(tag, expected):  # TensorBoard keeps float32 values
        assert [step for step, _ in events[tag]] == [step for step, _ in expected], tag
        assert [v for _, v in events[tag]] == pytest.approx([v for _, v in expected], rel=1e-6), tag

    check("loss", [(r["step"], r["loss"]) for r in rows])
    check("bound/train", [(r["step"], -r["loss"]) for r in rows])
    valid = [(r["step"], r["valid_bound"]) for r in rows if r["valid_bound"] is not None]
    check("bound/valid", valid)
    check("lr", [(r["step"], r["lr"]) for r in rows])
    assert len(valid) == 2 and len(rows) == 4
    with pytest.raises(ValueError, match="tensorboard=True writes to logdir"):
        Trainer(loss, max_steps=1, tensorboard=True, progress=False).fit(x)


def test_cli_tensorboard_flag_and_logger_callback(tmp_path, capsys):
    pytest.importorskip("tensorboard")
    logdir = tmp_path / "hmm"
    data = ["--dataset-type", "synthetic", "--max-steps", "3"]
    run(capsys, "train", "--logdir", str(logdir), *data, "--tensorboard", *TINY)
    events = _events(logdir / "tensorboard")
    assert [step for step, _ in events["loss"]] == [1, 2, 3]
    assert TensorBoardLogger(tmp_path / "x").log_dir == tmp_path / "x"
