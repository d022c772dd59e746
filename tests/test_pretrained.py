"""Pretrained models: save/load round trip, the shipped models' reported numbers, the CLI."""

from __future__ import annotations

import math
import statistics

import pytest
import torch

from bbvae import pretrained
from bbvae.cli import main
from bbvae.data import PianoRollData
from bbvae.sequential import SequenceModel


@pytest.fixture(scope="module")
def jsb():
    return PianoRollData.load()


@pytest.fixture(scope="module")
def tiny_saved(tmp_path_factory, jsb):
    est = SequenceModel(latent_size=4, max_steps=3, max_length=20, random_state=0).fit(jsb)
    meta = {"data": "jsb", "description": "a 3-step test model", "training": {"steps": 3, "epochs": 0}}
    path = pretrained.save(est, tmp_path_factory.mktemp("pre"), "tiny", meta)
    return est, path


def test_save_and_load_give_the_same_model(tiny_saved, jsb):
    est, path = tiny_saved
    loaded = pretrained.load(path)
    assert loaded.pretrained_["description"] == "a 3-step test model" and loaded.n_iter_ == 3
    for name, value in est.model_.state_dict().items():
        assert torch.equal(loaded.model_.state_dict()[name], value), name
    assert loaded.max_length is None  # scores whole sequences, whatever training cut
    est.set_params(max_length=None)
    assert loaded.score(jsb, split="valid", random_state=5) == est.score(jsb, split="valid", random_state=5)
    x, _ = loaded.sample(2, 6)
    assert x.shape == (2, 6, 88)


def test_unknown_names_list_what_is_available():
    with pytest.raises(ValueError, match=r"no model named 'nope'; available: \["):
        pretrained.load("nope")


@pytest.mark.parametrize("name", pretrained.available())
def test_shipped_models_reproduce_their_reported_test_bounds(name, jsb):
    est = SequenceModel.pretrained(name)
    reported = est.pretrained_["test"]
    for bound in ("fivo", "iwae"):
        r = reported[bound]
        est.set_params(eval_bound=bound, n_samples_eval=r["n_samples"])
        values = [est.score(jsb, split="test", random_state=9000 + i) for i in range(3)]
        se_new = statistics.stdev(values) / math.sqrt(len(values))
        tolerance = 4 * math.hypot(r["se"], se_new) + 1e-3  # 1e-3: float32 summation order
        assert abs(statistics.fmean(values) - r["mean"]) < tolerance, (bound, values, r)


@pytest.mark.parametrize("name", pretrained.available())
def test_cli_evaluates_and_samples_a_shipped_model(name, tmp_path, capsys):
    assert main(["eval", "--pretrained", name, "--split", "valid", "--seed", "1"]) == 0
    printed = capsys.readouterr().out
    assert f"pretrained {name!r}" in printed and "FIVO" in printed
    out = tmp_path / "samples.mid"
    assert (
        main(
            [
                "sample",
                "--pretrained",
                name,
                "--out",
                str(out),
                "--batch-size",
                "2",
                "--num-samples",
                "2",
                "--sample-length",
                "8",
                "--prefix-length",
                "4",
            ]
        )
        == 0
    )
    import mido

    assert mido.MidiFile(out).length > 0


def test_cli_pretrained_errors_are_one_line(capsys, tiny_saved):
    assert main(["sample", "--pretrained", "nope", "--out", "x.mid"]) == 2
    assert "--pretrained: pretrained: no model named 'nope'" in capsys.readouterr().err
    _, path = tiny_saved
    assert main(["sample", "--pretrained", str(path)]) == 2
    assert "give --out FILE.mid or FILE.npz" in capsys.readouterr().err
    assert main(["eval"]) == 2
    assert "give --logdir (a trained run) or --pretrained NAME" in capsys.readouterr().err
    assert main(["train"]) == 2
    assert "--logdir" in capsys.readouterr().err
