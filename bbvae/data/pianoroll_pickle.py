"""The Boulanger-Lewandowski piano-roll pickle format: safe loading, notes to rolls and back.

A piano-roll pickle holds a dict with the keys ``'train'``, ``'valid'`` and ``'test'``. Each is a
list of sequences, a sequence is a list of time steps, and a time step is a tuple (or list, or
1-D integer ndarray) of the MIDI note numbers sounding at that step, each in 21..108. Both the
normalised pickles (built-in types only) and the published JSB Chorales pickle (numpy ``int64``
scalars, pickle protocol 2) load. An empty time step is a rest. Unpickling refuses any global but
numpy's scalars and arrays, so loading a file cannot run arbitrary code.

In memory a sequence is a bool array ``[T, 88]``; column ``j`` stands for MIDI note ``21 + j``.
"""

from __future__ import annotations

import errno
import io
import os
import pickle
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

import numpy as np

__all__ = [
    "HIGHEST_NOTE",
    "JSB_CHORALES_SHA256",
    "LOWEST_NOTE",
    "NUM_KEYS",
    "SPLITS",
    "PianoRollFormatError",
    "load_pianoroll",
    "notes_to_roll",
    "pianorolls_from_notes",
    "roll_to_notes",
]


LOWEST_NOTE = 21
"""MIDI number of the lowest piano key (A0), column 0 of a roll."""
HIGHEST_NOTE = 108
"""MIDI number of the highest piano key (C8), column 87 of a roll."""
NUM_KEYS = HIGHEST_NOTE - LOWEST_NOTE + 1
"""Width of a piano roll: 88."""
SPLITS = ("train", "valid", "test")
"""The split keys every piano-roll pickle must hold."""
JSB_CHORALES_SHA256 = "fbba472227deb8eef1bdb3185aba58e44f2581199893f6cfcc87edd774d50431"
"""sha256 of the embedded default data set, ``bbvae/data/jsb_chorales.pkl``."""

_DEFAULT_RESOURCE = "jsb_chorales.pkl"

# Globals a piano-roll pickle may reference: numpy scalars (the published JSB pickle) and
# numpy arrays (time steps stored as ndarrays). Anything else is refused, so loading a file
# cannot run arbitrary code.
_ALLOWED_GLOBALS = frozenset(
    {
        ("numpy", "dtype"),
        ("numpy", "ndarray"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
    }
)


class PianoRollFormatError(ValueError):
    """A piano-roll file or dict does not follow the Boulanger-Lewandowski format."""


class _PianoRollUnpickler(pickle.Unpickler):
    """An unpickler that only builds built-in containers, ints and numpy integers/arrays."""

    def find_class(self, module: str, name: str):
        if (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(
            f"refusing to load the global {module}.{name}; a piano-roll pickle may only hold "
            "dicts, lists, tuples, ints and numpy integers"
        )


def _read_pickle(path: str | os.PathLike | None) -> tuple[object, str]:
    """Unpickle ``path`` (or the embedded default when None); return (object, source name)."""
    if path is None:
        source = f"{__package__}/{_DEFAULT_RESOURCE} (embedded default)"
        raw = resources.files(__package__).joinpath(_DEFAULT_RESOURCE).read_bytes()
    else:
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"path must be a str, a path or None, got {type(path).__name__}")
        file = Path(path)
        source = str(file)
        if not file.exists():
            raise FileNotFoundError(errno.ENOENT, "No such piano-roll file", source)
        if file.is_dir():
            raise IsADirectoryError(
                errno.EISDIR, "Expected a piano-roll pickle file, got a directory", source
            )
        raw = file.read_bytes()
    try:
        # latin1 lets Python 2 pickles (such as the published JSB one) restore numpy scalars.
        obj = _PianoRollUnpickler(io.BytesIO(raw), encoding="latin1").load()
    except Exception as exc:  # any failure here means the file is not a usable pickle
        raise PianoRollFormatError(
            f"{source}: not a readable piano-roll pickle ({type(exc).__name__}: {exc})"
        ) from exc
    return obj, source


def _is_integer_type(cls: type) -> bool:
    return issubclass(cls, (int, np.integer)) and not issubclass(cls, (bool, np.bool_))


def _is_integer(value: object) -> bool:
    return _is_integer_type(type(value))


def _out_of_range(where: str, t: int, note: object) -> PianoRollFormatError:
    return PianoRollFormatError(
        f"{where}, time step {t}: note {int(note)} is outside the piano range "
        f"{LOWEST_NOTE}..{HIGHEST_NOTE} (MIDI note numbers)"
    )


def notes_to_roll(sequence: Sequence, *, where: str = "sequence") -> np.ndarray:
    """Convert one sequence of note tuples to a dense piano roll.

    Args:
        sequence: ``T >= 1`` time steps, each a tuple / list / 1-D integer ndarray of MIDI note
            numbers in 21..108 (empty for a rest; a repeated note counts once).
        where: how error messages name the sequence, e.g. ``"jsb.pkl: split 'train',
            sequence 3"``.

    Returns:
        bool array ``[T, 88]``; entry ``[t, j]`` is True when MIDI note ``21 + j`` sounds at
        step ``t``.

    Raises:
        PianoRollFormatError: the sequence is not a list of time steps, is empty, or holds a
            non-integer note or one outside 21..108 (the message names the time step and note).
    """
    if not isinstance(sequence, (list, tuple)):
        raise PianoRollFormatError(f"{where}: expected a list of time steps, got {type(sequence).__name__}")
    if len(sequence) == 0:
        raise PianoRollFormatError(f"{where}: expected at least one time step, got none")
    rows: list[int] = []
    notes: list = []
    for t, step in enumerate(sequence):
        if isinstance(step, np.ndarray):
            if step.ndim != 1:
                raise PianoRollFormatError(
                    f"{where}, time step {t}: expected a 1-D array of MIDI note numbers, "
                    f"got an array of shape {list(step.shape)}"
                )
        elif not isinstance(step, (tuple, list)):
            raise PianoRollFormatError(
                f"{where}, time step {t}: expected a tuple of MIDI note numbers, "
                f"got {type(step).__name__} {step!r}"
            )
        notes.extend(step)
        rows.extend([t] * len(step))
    roll = np.zeros((len(sequence), NUM_KEYS), dtype=bool)
    if not notes:
        return roll
    values = None
    if all(map(_is_integer_type, set(map(type, notes)))):
        values = np.asarray(notes)  # int64, or object for ints beyond 64 bits
    if values is None or values.dtype.kind not in "iu":
        # Slow path, only reached by malformed data: report the first offending note.
        for t, note in zip(rows, notes, strict=True):
            if not _is_integer(note):
                raise PianoRollFormatError(
                    f"{where}, time step {t}: expected integer MIDI note numbers, "
                    f"got {type(note).__name__} {note!r}"
                )
            if not LOWEST_NOTE <= note <= HIGHEST_NOTE:
                raise _out_of_range(where, t, note)
        values = np.asarray([int(n) for n in notes], dtype=np.int64)
    bad = (values < LOWEST_NOTE) | (values > HIGHEST_NOTE)
    if bad.any():
        k = int(np.argmax(bad))
        raise _out_of_range(where, rows[k], values[k])
    roll[np.asarray(rows), values - LOWEST_NOTE] = True
    return roll


def roll_to_notes(roll: np.ndarray) -> list[tuple[int, ...]]:
    """Inverse of :func:`notes_to_roll`.

    Args:
        roll: ``[T, 88]`` array, nonzero where a note sounds.

    Returns:
        ``T`` tuples of MIDI note numbers in ascending order (empty tuples for rests).
    """
    roll = np.asarray(roll)
    if roll.ndim != 2 or roll.shape[1] != NUM_KEYS:
        raise ValueError(f"roll: expected shape [T, {NUM_KEYS}], got {list(roll.shape)}")
    return [tuple(int(j) + LOWEST_NOTE for j in np.flatnonzero(frame)) for frame in roll]


def pianorolls_from_notes(data: object, *, source: str = "data") -> dict[str, list[np.ndarray]]:
    """Validate an unpickled piano-roll dict and convert every sequence to a dense roll.

    Args:
        data: a dict with the keys ``'train'``, ``'valid'`` and ``'test'`` (other keys, such as
            FIVO's ``'train_mean'``, are ignored), each a non-empty list of sequences in the
            format of :func:`notes_to_roll`.
        source: how error messages name the data (the file name when loading a file).

    Returns:
        ``{'train': [...], 'valid': [...], 'test': [...]}``, each a list of bool ``[T_i, 88]``
        arrays in the original order.

    Raises:
        PianoRollFormatError: ``data`` is not a dict, lacks a split, a split is empty or not a
            list, or a sequence is malformed (see :func:`notes_to_roll`).
    """
    if not isinstance(data, dict):
        raise PianoRollFormatError(
            f"{source}: expected a dict with keys 'train', 'valid', 'test', got {type(data).__name__}"
        )
    missing = [key for key in SPLITS if key not in data]
    if missing:
        raise PianoRollFormatError(
            f"{source}: missing split key(s) {missing}; expected the keys 'train', 'valid', "
            f"'test', got {sorted(map(repr, data))}"
        )
    rolls = {}
    for split in SPLITS:
        sequences = data[split]
        if not isinstance(sequences, (list, tuple)):
            raise PianoRollFormatError(
                f"{source}: split {split!r} must be a list of sequences, got {type(sequences).__name__}"
            )
        if len(sequences) == 0:
            raise PianoRollFormatError(f"{source}: split {split!r} is empty")
        rolls[split] = [
            notes_to_roll(seq, where=f"{source}: split {split!r}, sequence {i}")
            for i, seq in enumerate(sequences)
        ]
    return rolls


def load_pianoroll(path: str | os.PathLike | None = None) -> dict[str, list[np.ndarray]]:
    """Load a piano-roll pickle.

    Args:
        path: the pickle file, or None for the embedded default, JSB Chorales
            (``bbvae/data/jsb_chorales.pkl``, sha256 :data:`JSB_CHORALES_SHA256`).

    Returns:
        ``{'train': [...], 'valid': [...], 'test': [...]}``, each a list of bool ``[T_i, 88]``
        arrays (column ``j`` = MIDI note ``21 + j``) in file order.

    Raises:
        FileNotFoundError: ``path`` does not exist (the error names it).
        PianoRollFormatError: (a ValueError) the file is not a pickle, refers to classes other
            than numpy integers/arrays, or its content is malformed: see
            :func:`pianorolls_from_notes`.
    """
    data, source = _read_pickle(path)
    return pianorolls_from_notes(data, source=source)
