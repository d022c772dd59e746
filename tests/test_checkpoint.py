"""Atomic checkpoint writes, safe loading and the random-generator state they carry."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from bbvae.checkpoint import (
    CheckpointError,
    capture_rng_state,
    load_checkpoint,
    remove_stale_temporaries,
    restore_rng_state,
    save_checkpoint,
)


def _files(directory):
    return sorted(p.name for p in directory.iterdir())


def test_save_and_load_round_trip(tmp_path):
    state = {"format": "demo", "w": torch.arange(6.0).reshape(2, 3), "step": 7, "hist": [1.5, 2.5]}
    path = save_checkpoint(state, tmp_path / "sub" / "c.pt")
    assert path == tmp_path / "sub" / "c.pt"
    loaded = load_checkpoint(path, expected_format="demo")
    assert torch.equal(loaded["w"], state["w"])
    assert loaded["step"] == 7 and loaded["hist"] == [1.5, 2.5]
    assert _files(tmp_path / "sub") == ["c.pt"]  # no temporary file left behind


def test_failed_write_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint({"w": torch.ones(3), "step": 1}, path)
    real_save = torch.save

    def failing_save(obj, f, *args, **kwargs):
        f.write(b"half a checkpoint")  # part of the data reaches the disk, then the write fails
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint({"w": torch.zeros(3), "step": 2}, path)
    monkeypatch.setattr(torch, "save", real_save)
    loaded = load_checkpoint(path)
    assert loaded["step"] == 1 and torch.equal(loaded["w"], torch.ones(3))
    assert _files(tmp_path) == ["last.pt"]


def test_interrupted_write_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    # KeyboardInterrupt is not an Exception: the temporary file must still be removed.
    path = tmp_path / "last.pt"
    save_checkpoint({"step": 1}, path)

    def interrupted(obj, f, *args, **kwargs):
        f.write(b"x")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint({"step": 2}, path)
    monkeypatch.undo()
    assert load_checkpoint(path)["step"] == 1
    assert _files(tmp_path) == ["last.pt"]


def test_load_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        load_checkpoint(tmp_path / "nope.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="bad.pt"):
        load_checkpoint(bad)
    save_checkpoint({"format": "other"}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="format 'bbvae.trainer'.*got format 'other'"):
        load_checkpoint(tmp_path / "other.pt", expected_format="bbvae.trainer")
    with pytest.raises(TypeError, match="dict"):
        save_checkpoint([1, 2], tmp_path / "list.pt")


def test_rng_state_round_trip_through_a_file(tmp_path):
    torch.manual_seed(3)
    np.random.seed(4)
    random.seed(5)
    np.random.standard_normal()  # leaves a cached Gaussian in numpy's state
    state = capture_rng_state()
    expected = (torch.rand(4), np.random.standard_normal(3), random.random())
    save_checkpoint({"rng": state}, tmp_path / "rng.pt")
    torch.manual_seed(99)
    np.random.seed(99)
    random.seed(99)
    restore_rng_state(load_checkpoint(tmp_path / "rng.pt")["rng"])  # weights_only load
    got = (torch.rand(4), np.random.standard_normal(3), random.random())
    assert torch.equal(got[0], expected[0])
    assert np.array_equal(got[1], expected[1])
    assert got[2] == expected[2]


def test_stale_temporaries_of_one_file_are_removed_and_nothing_else(tmp_path):
    names = [
        ".last.pt.abc123.tmp",
        ".last.pt.x.tmp",
        ".best.pt.abc123.tmp",
        "last.pt",
        ".last.pt.keep",
        "x.tmp",
    ]
    for name in names:
        (tmp_path / name).write_bytes(b"partial")
    removed = remove_stale_temporaries(tmp_path / "last.pt")
    assert sorted(p.name for p in removed) == [".last.pt.abc123.tmp", ".last.pt.x.tmp"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        set(names) - {".last.pt.abc123.tmp", ".last.pt.x.tmp"}
    )
    assert remove_stale_temporaries(tmp_path / "missing" / "last.pt") == []
