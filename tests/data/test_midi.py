"""Tests of bbvae.data.midi, on MIDI files written with mido in a temporary folder."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from bbvae.data import (
    PianoRollData,
    load_midi_folder,
    midi_to_pianoroll,
    pianoroll_to_midi,
    roll_to_notes,
)

mido = pytest.importorskip("mido")


def _random_roll(seed: int, steps: int = 40) -> np.ndarray:
    rng = np.random.default_rng(seed)
    roll = np.zeros((steps, 88), dtype=bool)
    roll[:, 20:60] = rng.random((steps, 40)) < 0.15
    roll[:, 0] = np.arange(steps) % 4 == 0  # lowest key, isolated strikes
    roll[5:9, 87] = True  # highest key, held
    roll[:2] = False  # leading rests
    roll[-3:] = False  # trailing rests
    return roll


def _hand_made_midi(path):
    """Type 1, two tracks, a tempo change, note_on velocity 0 as a note-off, a drum note.

    At 96 ticks per beat: 120 bpm for the first 192 ticks (1 s), then 60 bpm.
    note 60: ticks 0..96 (beats 0..1, 0 s..0.5 s); note 64: ticks 96..288 (beats 1..3,
    0.5 s..2 s); drum note 36 on channel 10: ticks 0..144; the file ends at tick 384 (beat 4, 3 s).
    """
    midi = mido.MidiFile(type=1, ticks_per_beat=96)
    tempo_track = mido.MidiTrack(
        [
            mido.MetaMessage("set_tempo", tempo=500_000, time=0),
            mido.MetaMessage("set_tempo", tempo=1_000_000, time=192),
            mido.MetaMessage("end_of_track", time=192),
        ]
    )
    notes = mido.MidiTrack(
        [
            mido.Message("note_on", note=60, velocity=90, time=0),
            mido.Message("note_on", note=36, velocity=90, channel=9, time=0),
            mido.Message("note_off", note=60, velocity=0, time=96),
            mido.Message("note_on", note=64, velocity=90, time=0),
            mido.Message("note_off", note=36, velocity=0, channel=9, time=48),
            mido.Message("note_on", note=64, velocity=0, time=144),
            mido.MetaMessage("end_of_track", time=96),
        ]
    )
    midi.tracks.extend([tempo_track, notes])
    midi.save(path)
    return path


@pytest.mark.parametrize("seed", [0, 1])
def test_round_trip_roll_midi_roll(tmp_path, seed):
    roll = _random_roll(seed)
    path = pianoroll_to_midi(roll, tmp_path / "sample.mid", step_seconds=0.25)
    assert path.is_file()
    np.testing.assert_array_equal(midi_to_pianoroll(path, step_seconds=0.25), roll)
    # 0.25 s per step at 120 bpm is half a beat.
    np.testing.assert_array_equal(midi_to_pianoroll(path, steps_per_beat=2), roll)
    # A coarser grid merges pairs of steps (onsets/offsets snap to the nearest step).
    assert midi_to_pianoroll(path, step_seconds=0.5).shape == (20, 88)


def test_round_trip_from_tensor_and_other_tempo(tmp_path):
    roll = torch.as_tensor(_random_roll(2), dtype=torch.float32)
    path = pianoroll_to_midi(roll, tmp_path / "t.mid", 0.3, bpm=97.0, ticks_per_beat=960)
    np.testing.assert_array_equal(midi_to_pianoroll(path, step_seconds=0.3), roll.bool().numpy())


def test_round_trip_jsb_chorales(tmp_path):
    data = PianoRollData.load()
    for i, roll in enumerate(data.test[:5]):
        path = pianoroll_to_midi(roll, tmp_path / f"chorale{i}.mid", step_seconds=0.5)
        back = midi_to_pianoroll(path, steps_per_beat=1)
        np.testing.assert_array_equal(back, roll)
        assert roll_to_notes(back) == roll_to_notes(roll)


def test_held_notes_become_one_note(tmp_path):
    roll = np.zeros((6, 88), dtype=bool)
    roll[1:5, 39] = True  # middle C held for four steps
    path = pianoroll_to_midi(roll, tmp_path / "held.mid", step_seconds=0.5)
    messages = [m for m in mido.MidiFile(path).tracks[0] if m.type in ("note_on", "note_off")]
    assert [(m.type, m.note) for m in messages] == [("note_on", 60), ("note_off", 60)]


def test_hand_made_file_with_tempo_change(tmp_path):
    path = _hand_made_midi(tmp_path / "hand.mid")
    by_beat = midi_to_pianoroll(path, steps_per_beat=1)
    assert roll_to_notes(by_beat) == [(60,), (64,), (64,), ()]
    by_seconds = midi_to_pianoroll(path, step_seconds=0.5)
    assert roll_to_notes(by_seconds) == [(60,), (64,), (64,), (64,), (), ()]
    with_drums = midi_to_pianoroll(path, steps_per_beat=2, include_drums=True)
    assert roll_to_notes(with_drums)[:4] == [(36, 60), (36, 60), (36, 64), (64,)]


def test_out_of_range_notes(tmp_path):
    midi = mido.MidiFile(type=0, ticks_per_beat=4)
    midi.tracks.append(
        mido.MidiTrack(
            [
                mido.Message("note_on", note=12, velocity=90, time=4),
                mido.Message("note_on", note=60, velocity=90, time=0),
                mido.Message("note_off", note=12, time=4),
                mido.Message("note_off", note=60, time=0),
            ]
        )
    )
    midi.save(tmp_path / "low.mid")
    with pytest.raises(
        ValueError,
        match=r"low.mid: note 12 at step 1 is outside the piano range "
        r"21\.\.108; pass out_of_range='drop'",
    ):
        midi_to_pianoroll(tmp_path / "low.mid", steps_per_beat=1)
    roll = midi_to_pianoroll(tmp_path / "low.mid", steps_per_beat=1, out_of_range="drop")
    assert roll_to_notes(roll) == [(), (60,)]


def test_load_midi_folder(tmp_path):
    pianoroll_to_midi(_random_roll(0), tmp_path / "b.mid", 0.25)
    pianoroll_to_midi(_random_roll(1, steps=10), tmp_path / "a.MIDI", 0.25)
    (tmp_path / "sub").mkdir()
    pianoroll_to_midi(_random_roll(2, steps=12), tmp_path / "sub" / "c.mid", 0.25)
    (tmp_path / "notes.txt").write_text("not midi")
    rolls = load_midi_folder(tmp_path, step_seconds=0.25)
    assert list(rolls) == ["a.MIDI", "b.mid"]
    np.testing.assert_array_equal(rolls["b.mid"], _random_roll(0))
    deep = load_midi_folder(tmp_path, steps_per_beat=2, recursive=True)
    assert list(deep) == ["a.MIDI", "b.mid", "sub/c.mid"]
    assert [r.shape[0] for r in deep.values()] == [10, 40, 12]
    data = PianoRollData(train=list(deep.values()), valid=[deep["b.mid"]], test=[deep["a.MIDI"]])
    assert next(data.batches("train", 3)).x.shape == (3, 40, 88)


def test_errors(tmp_path, monkeypatch):
    roll = _random_roll(0)
    with pytest.raises(FileNotFoundError, match="nothing.mid"):
        midi_to_pianoroll(tmp_path / "nothing.mid", step_seconds=0.25)
    bad = tmp_path / "bad.mid"
    bad.write_bytes(b"RIFF not a midi file")
    with pytest.raises(ValueError, match="bad.mid: not a readable MIDI file"):
        midi_to_pianoroll(bad, step_seconds=0.25)
    with pytest.raises(ValueError, match="give exactly one of step_seconds and steps_per_beat"):
        midi_to_pianoroll(bad, step_seconds=0.25, steps_per_beat=2)
    with pytest.raises(ValueError, match="give exactly one of step_seconds and steps_per_beat"):
        midi_to_pianoroll(bad)
    with pytest.raises(ValueError, match="step_seconds: expected a finite number > 0, got -1"):
        pianoroll_to_midi(roll, tmp_path / "x.mid", -1)
    with pytest.raises(ValueError, match=r"roll: expected shape \[T, 88\], got \[40, 87\]"):
        pianoroll_to_midi(roll[:, :87], tmp_path / "x.mid", 0.25)
    with pytest.raises(ValueError, match="roll: expected 0/1 frames"):
        pianoroll_to_midi(roll * 0.5, tmp_path / "x.mid", 0.25)
    with pytest.raises(ValueError, match="shorter than one tick"):
        pianoroll_to_midi(roll, tmp_path / "x.mid", 1e-4, ticks_per_beat=96)
    with pytest.raises(ValueError, match="velocity: expected an int in 1..127, got 0"):
        pianoroll_to_midi(roll, tmp_path / "x.mid", 0.25, velocity=0)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="no MIDI files"):
        load_midi_folder(empty, step_seconds=0.25)
    with pytest.raises(FileNotFoundError, match="no_such_folder"):
        load_midi_folder(tmp_path / "no_such_folder", step_seconds=0.25)


def test_missing_mido_gives_install_hint(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "mido", None)  # makes `import mido` raise ImportError
    with pytest.raises(ImportError, match="pip install mido"):
        pianoroll_to_midi(_random_roll(0), tmp_path / "x.mid", 0.25)
    with pytest.raises(ImportError, match="pip install mido"):
        midi_to_pianoroll(tmp_path / "x.mid", step_seconds=0.25)
