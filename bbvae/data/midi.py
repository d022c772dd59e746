"""MIDI files to piano rolls and back (needs the optional package ``mido``).

Quantisation. A note sounding from time ``on`` to ``off`` covers the steps
``round(on / step) .. max(round(off / step), round(on / step) + 1) - 1``: onsets and offsets
snap to the nearest step boundary and every note lasts at least one step. The step is either
``step_seconds`` (wall-clock seconds, following every tempo change in the file) or
``1 / steps_per_beat`` beats (quarter notes; tempo-independent, the usual choice for scores:
``steps_per_beat=1`` gives the quarter-note frames of the JSB Chorales roll, ``2`` eighth
notes). A roll has ``T = max(last note's end step, round(file length / step))`` steps, so
trailing rests that the file's end-of-track marker records are kept.

Writing (:func:`pianoroll_to_midi`) merges a run of consecutive active frames of one key into
a single held note (a piano roll cannot tell a held note from repeated ones) and places the
end-of-track marker at ``T`` steps, so ``roll -> MIDI -> roll`` gives back the same roll.
"""

from __future__ import annotations

import errno
import math
import os
from pathlib import Path

import numpy as np
import torch

from .pianoroll import HIGHEST_NOTE, LOWEST_NOTE, NUM_KEYS

__all__ = ["load_midi_folder", "midi_to_pianoroll", "pianoroll_to_midi"]

_MIDI_SUFFIXES = (".mid", ".midi")
_DRUM_CHANNEL = 9  # General MIDI percussion: channel 10, numbered 9 from 0


def _require_mido():
    """Import mido, or explain how to install it."""
    try:
        import mido
    except ImportError as exc:
        raise ImportError(
            "bbvae.data.midi needs the optional package 'mido': pip install mido "
            "(or pip install 'bbvae[midi]')"
        ) from exc
    return mido


def _step_in_native_units(step_seconds: float | None, steps_per_beat: float | None) -> str:
    """Check that exactly one step size is given; return 'seconds' or 'beats'."""
    if (step_seconds is None) == (steps_per_beat is None):
        raise ValueError(
            "give exactly one of step_seconds and steps_per_beat, got "
            f"step_seconds={step_seconds!r}, steps_per_beat={steps_per_beat!r}"
        )
    name, value = (
        ("step_seconds", step_seconds) if step_seconds is not None else ("steps_per_beat", steps_per_beat)
    )
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name}: expected a number, got {type(value).__name__}")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name}: expected a finite number > 0, got {value!r}")
    return "seconds" if step_seconds is not None else "beats"


def _round(value: float) -> int:
    """Round half up (Python's round() rounds half to even)."""
    return math.floor(value + 0.5)


def midi_to_pianoroll(
    path: str | os.PathLike,
    *,
    step_seconds: float | None = None,
    steps_per_beat: float | None = None,
    include_drums: bool = False,
    out_of_range: str = "error",
) -> np.ndarray:
    """Read a MIDI file (type 0 or 1) as a binary piano roll.

    All channels and tracks are merged. Velocities are ignored; a ``note_on`` with velocity 0
    ends a note. Give exactly one of ``step_seconds`` and ``steps_per_beat``; see the module
    docstring for the quantisation rule.

    Args:
        path: a ``.mid`` file.
        step_seconds: the length of one step in seconds.
        steps_per_beat: the number of steps per beat (quarter note).
        include_drums: keep notes on the General MIDI percussion channel (channel 10), whose
            numbers name drums, not pitches. Default False: they are skipped.
        out_of_range: ``'error'`` raises on a note outside 21..108; ``'drop'`` skips it.

    Returns:
        bool array ``[T, 88]``; column ``j`` is MIDI note ``21 + j``.

    Raises:
        ImportError: mido is not installed.
        FileNotFoundError: ``path`` does not exist.
        ValueError: unreadable or type-2 file, an out-of-range note (with ``'error'``), or a
            file with no time steps.
    """
    mido = _require_mido()
    unit = _step_in_native_units(step_seconds, steps_per_beat)
    if out_of_range not in ("error", "drop"):
        raise ValueError(f"out_of_range: expected 'error' or 'drop', got {out_of_range!r}")
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(errno.ENOENT, "No such MIDI file", str(file))
    try:
        midi = mido.MidiFile(file)
    except Exception as exc:  # mido raises OSError, EOFError, ValueError, KeyError, ...
        raise ValueError(f"{file}: not a readable MIDI file ({type(exc).__name__}: {exc})") from exc
    if midi.type == 2:
        raise ValueError(f"{file}: MIDI type 2 (independent sequences) is not supported")

    ticks_per_beat = midi.ticks_per_beat
    tempo = 500_000  # microseconds per beat until the first set_tempo (MIDI default, 120 bpm)
    tick, seconds = 0, 0.0
    sounding: dict[tuple[int, int], list[float]] = {}  # (channel, note) -> onset positions
    spans: list[tuple[int, float, float]] = []  # (note, onset, offset) in steps
    position = 0.0
    for msg in mido.merge_tracks(midi.tracks):
        tick += msg.time
        seconds += msg.time * tempo / (ticks_per_beat * 1e6)
        if unit == "seconds":
            position = seconds / step_seconds
        else:
            position = tick * steps_per_beat / ticks_per_beat
        if msg.type == "set_tempo":
            tempo = msg.tempo
        elif msg.type in ("note_on", "note_off"):
            if msg.channel == _DRUM_CHANNEL and not include_drums:
                continue
            key = (msg.channel, msg.note)
            if msg.type == "note_on" and msg.velocity > 0:
                sounding.setdefault(key, []).append(position)
            elif sounding.get(key):  # a note_off without a matching note_on is ignored
                spans.append((msg.note, sounding[key].pop(0), position))
    for (_, note), onsets in sounding.items():  # notes never released end with the file
        spans.extend((note, onset, position) for onset in onsets)

    n_steps = _round(position)
    cells: list[tuple[int, int, int]] = []  # (key column, first step, end step)
    for note, onset, offset in spans:
        if not LOWEST_NOTE <= note <= HIGHEST_NOTE:
            if out_of_range == "drop":
                continue
            raise ValueError(
                f"{file}: note {note} at step {_round(onset)} is outside the piano range "
                f"{LOWEST_NOTE}..{HIGHEST_NOTE}; pass out_of_range='drop' to skip such notes"
            )
        start = _round(onset)
        end = max(_round(offset), start + 1)
        cells.append((note - LOWEST_NOTE, start, end))
        n_steps = max(n_steps, end)
    if n_steps == 0:
        raise ValueError(f"{file}: no time steps (the file is empty at this step size)")
    roll = np.zeros((n_steps, NUM_KEYS), dtype=bool)
    for column, start, end in cells:
        roll[start:end, column] = True
    return roll


def load_midi_folder(
    folder: str | os.PathLike,
    *,
    step_seconds: float | None = None,
    steps_per_beat: float | None = None,
    recursive: bool = False,
    include_drums: bool = False,
    out_of_range: str = "error",
) -> dict[str, np.ndarray]:
    """Read every ``.mid``/``.midi`` file of a folder as a piano roll.

    Args:
        folder: the folder to read.
        step_seconds, steps_per_beat, include_drums, out_of_range: see
            :func:`midi_to_pianoroll`.
        recursive: also read sub-folders.

    Returns:
        ``{relative path (POSIX form): bool [T, 88] roll}`` sorted by path. For batching,
        ``list(rolls.values())`` (or build a :class:`~bbvae.data.PianoRollData`).

    Raises:
        FileNotFoundError / NotADirectoryError: ``folder`` is missing or not a folder.
        ValueError: no MIDI file in ``folder``, or a file fails (the message names it).
    """
    _require_mido()
    _step_in_native_units(step_seconds, steps_per_beat)
    root = Path(folder)
    if not root.exists():
        raise FileNotFoundError(errno.ENOENT, "No such MIDI folder", str(root))
    if not root.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, "Expected a folder of MIDI files", str(root))
    candidates = root.rglob("*") if recursive else root.iterdir()
    files = sorted(p for p in candidates if p.is_file() and p.suffix.lower() in _MIDI_SUFFIXES)
    if not files:
        raise ValueError(
            f"{root}: no MIDI files ({', '.join(_MIDI_SUFFIXES)})"
            + ("" if recursive else "; pass recursive=True to search sub-folders")
        )
    return {
        p.relative_to(root).as_posix(): midi_to_pianoroll(
            p,
            step_seconds=step_seconds,
            steps_per_beat=steps_per_beat,
            include_drums=include_drums,
            out_of_range=out_of_range,
        )
        for p in files
    }


def pianoroll_to_midi(
    roll: np.ndarray | torch.Tensor,
    path: str | os.PathLike,
    step_seconds: float,
    *,
    bpm: float = 120.0,
    velocity: int = 80,
    program: int = 0,
    ticks_per_beat: int = 480,
) -> Path:
    """Write a binary piano roll (e.g. a model sample) as a type-0 MIDI file.

    Each run of consecutive active frames of a key becomes one note. Step ``t`` starts at
    ``t * step_seconds`` seconds (rounded to the nearest tick); the file ends at
    ``T * step_seconds``. Everything is on channel 1 with one instrument.

    Args:
        roll: ``[T, 88]`` 0/1 frames (bool, int or float ndarray or tensor); column ``j`` is
            MIDI note ``21 + j``.
        path: the file to write (its folder must exist).
        step_seconds: the length of one step in seconds.
        bpm: the tempo written to the file (beats per minute). With ``bpm`` and
            ``step_seconds``, reading back with ``steps_per_beat = 60 / (bpm * step_seconds)``
            also gives the same roll.
        velocity: note-on velocity, 1..127.
        program: General MIDI program (instrument) number, 0..127 (0: acoustic grand piano).
        ticks_per_beat: time resolution of the file.

    Returns:
        the path written.
    """
    mido = _require_mido()
    _step_in_native_units(step_seconds, None)
    if isinstance(roll, torch.Tensor):
        roll = roll.detach().cpu().numpy()  # file output needs host memory
    roll = np.asarray(roll)
    if roll.ndim != 2 or roll.shape[1] != NUM_KEYS:
        raise ValueError(f"roll: expected shape [T, {NUM_KEYS}], got {list(roll.shape)}")
    if roll.dtype != np.bool_ and not np.isin(roll, (0, 1)).all():
        raise ValueError("roll: expected 0/1 frames, got other values")
    for name, value, low, high in (
        ("velocity", velocity, 1, 127),
        ("program", program, 0, 127),
        ("ticks_per_beat", ticks_per_beat, 1, 32767),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ValueError(f"{name}: expected an int in {low}..{high}, got {value!r}")
    if isinstance(bpm, bool) or not isinstance(bpm, (int, float)) or not (math.isfinite(bpm) and bpm > 0):
        raise ValueError(f"bpm: expected a finite number > 0, got {bpm!r}")
    tempo = mido.bpm2tempo(bpm)  # microseconds per beat, an int in the file
    ticks_per_step = step_seconds * 1e6 / tempo * ticks_per_beat
    if ticks_per_step < 1:
        raise ValueError(
            f"step_seconds: {step_seconds} is shorter than one tick at ticks_per_beat="
            f"{ticks_per_beat} and bpm={bpm}; raise ticks_per_beat"
        )

    def tick_of(step: int) -> int:
        return _round(step * ticks_per_step)

    active = roll.astype(bool)
    T = active.shape[0]
    edges = np.diff(active.astype(np.int8), axis=0, prepend=0, append=0)  # [T + 1, 88]
    events = []  # (tick, 0 = off / 1 = on, note)
    for step, column in zip(*np.nonzero(edges == 1), strict=True):
        events.append((tick_of(int(step)), 1, int(column) + LOWEST_NOTE))
    for step, column in zip(*np.nonzero(edges == -1), strict=True):
        events.append((tick_of(int(step)), 0, int(column) + LOWEST_NOTE))
    events.sort()  # by tick, note-offs before note-ons at the same tick

    track = mido.MidiTrack()
    track.append(mido.MetaMessage("set_tempo", tempo=tempo, time=0))
    track.append(mido.Message("program_change", program=program, channel=0, time=0))
    now = 0
    for tick, is_on, note in events:
        kind = "note_on" if is_on else "note_off"
        track.append(
            mido.Message(kind, note=note, velocity=velocity if is_on else 0, channel=0, time=tick - now)
        )
        now = tick
    track.append(mido.MetaMessage("end_of_track", time=tick_of(T) - now))
    midi = mido.MidiFile(type=0, ticks_per_beat=ticks_per_beat)
    midi.tracks.append(track)
    out = Path(path)
    midi.save(out)
    return out
