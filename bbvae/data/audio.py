"""Raw audio as sequences of frames: the VRNN paper's speech setting (TIMIT, Blizzard).

A waveform of ``n`` samples becomes ``T = n // frame_size`` frames of ``frame_size`` consecutive
samples (200 by default, the VRNN paper's setting; a trailing partial frame is dropped), i.e. a
float sequence ``[T, frame_size]``. Every sample is normalised by the **training** split's mean and
standard deviation (one scalar each, over all training samples, as the VRNN and FIVO code do);
valid and test use the training statistics. ``AudioData.split("train")`` gives fixed-length
chunks of ``chunk_length`` frames when ``chunk_length`` is set (for training), the valid and test
splits always give whole utterances (for evaluation).

Sources (:func:`load_audio`):

* a folder holding ``train.npz``, ``valid.npz``, ``test.npz``, each with ``audio`` (int16, the
  split's utterances concatenated) and ``offsets`` (int64, ``n + 1`` boundaries), the layout of the
  shared synthetic speech corpus;
* a folder with ``train/``, ``valid/``, ``test/`` sub-folders of audio files (``.wav``; with the
  soundfile backend also ``.flac``, ``.ogg``, ``.aiff``);
* a flat folder of such files, split 80/10/10 in file-name order.

Audio files are read by one of two backends (``backend=`` of :func:`load_audio` and
:func:`read_audio`):

* ``"wave"``: the standard library's :mod:`wave`, ``.wav`` files of integer PCM (8, 16, 24 or 32
  bits) only;
* ``"soundfile"``: `soundfile <https://python-soundfile.readthedocs.io>`_ (libsndfile), an optional
  extra (``pip install 'bbvae[audio]'``), which also reads FLAC, OGG/Vorbis, AIFF and float or
  other non-16-bit WAV files (the suffixes of :data:`SOUNDFILE_SUFFIXES`);
* ``"auto"`` (the default): ``"soundfile"`` when it is installed, else ``"wave"``.

Several channels are averaged to one. Integer samples are scaled to ``[-1, 1)`` whatever their width
(``v / 2^(bits - 1)``; both backends give bit-identical arrays on integer PCM WAV files), float files
keep their values.
"""

from __future__ import annotations

import os
import wave
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from .batching import SequenceBatch, batch_indices, pad_sequences
from .datasets import SequenceDataset

__all__ = [
    "AUDIO_BACKENDS",
    "FRAME_SIZE",
    "SOUNDFILE_SUFFIXES",
    "AudioData",
    "import_soundfile",
    "load_audio",
    "read_audio",
    "read_wav",
    "write_wav",
]

#: Samples per frame (the VRNN paper's raw-audio setting).
FRAME_SIZE = 200
#: Sample rate of the shared corpus's ``.npz`` files (they store none).
NPZ_SAMPLE_RATE = 16000
_SPLITS = ("train", "valid", "test")
#: Values of ``backend`` (:func:`read_audio`, :func:`load_audio`).
AUDIO_BACKENDS = ("auto", "soundfile", "wave")
#: File suffixes that :func:`load_audio` lists with the ``"soundfile"`` backend (``"wave"``: ``.wav``).
SOUNDFILE_SUFFIXES = (".wav", ".flac", ".ogg", ".aiff", ".aif")
_EXTRA_HINT = "pip install 'bbvae[audio]'"


def import_soundfile(where: str = "bbvae.data.audio"):
    """The ``soundfile`` module, or an ImportError naming the extra to install.

    libsndfile missing under an installed ``soundfile`` (an OSError on import) counts as missing.
    """
    try:
        import soundfile
    except (ImportError, OSError) as exc:
        raise ImportError(
            f"{where}: backend='soundfile' (FLAC, OGG, float or 24-bit WAV files) needs soundfile, "
            f"an optional dependency: {_EXTRA_HINT}"
        ) from exc
    return soundfile


def _resolve_backend(backend: str, where: str) -> str:
    """``"soundfile"`` or ``"wave"``: ``"auto"`` picks soundfile when it imports."""
    if backend not in AUDIO_BACKENDS:
        raise ValueError(f"{where}: expected backend in {AUDIO_BACKENDS}, got {backend!r}")
    if backend == "soundfile":
        import_soundfile(where)
        return backend
    if backend == "auto":
        try:
            import_soundfile(where)
        except ImportError:
            return "wave"
        return "soundfile"
    return backend


def read_wav(path: str | os.PathLike) -> tuple[np.ndarray, int]:
    """Read a PCM WAV file with the stdlib :mod:`wave`: ``(samples [n] float64 in [-1, 1), sample_rate)``.

    Channels are averaged. ``read_audio(path, backend="wave")`` is the same reader.
    """
    path = Path(path)
    try:
        with wave.open(str(path), "rb") as f:
            width, channels, rate, n = f.getsampwidth(), f.getnchannels(), f.getframerate(), f.getnframes()
            raw = f.readframes(n)
    except (wave.Error, EOFError) as exc:
        raise ValueError(
            f"read_wav: {str(path)!r} is not a readable PCM WAV file ({exc}); float, compressed and "
            f"other non-PCM files need backend='soundfile' ({_EXTRA_HINT})"
        ) from None
    if width == 1:  # 8-bit WAV is unsigned
        data = np.frombuffer(raw, dtype=np.uint8).astype(np.float64) - 128.0
    elif width in (2, 4):
        data = np.frombuffer(raw, dtype=np.dtype(f"<i{width}")).astype(np.float64)
    elif width == 3:
        b = np.frombuffer(raw, dtype=np.uint8).reshape(-1, 3).astype(np.int32)
        value = b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)
        data = np.where(value >= 1 << 23, value - (1 << 24), value).astype(np.float64)
    else:
        raise ValueError(f"read_wav: {str(path)!r} has {8 * width}-bit samples; expected 8, 16, 24 or 32")
    data = data.reshape(-1, channels).mean(axis=1) / float(1 << (8 * width - 1))
    return data, rate


def _read_soundfile(path: Path) -> tuple[np.ndarray, int]:
    sf = import_soundfile("read_audio")
    try:
        data, rate = sf.read(str(path), dtype="float64", always_2d=True)  # [n, channels], scaled
    except (RuntimeError, TypeError) as exc:  # sf.LibsndfileError is a RuntimeError
        raise ValueError(
            f"read_audio: {str(path)!r} is not a readable audio file (soundfile: {exc})"
        ) from None
    return data.mean(axis=1), int(rate)


def read_audio(path: str | os.PathLike, backend: str = "auto") -> tuple[np.ndarray, int]:
    """Read one audio file: ``(samples [n] float64, sample_rate)``, channels averaged.

    Args:
        path: the file (``.wav``; with soundfile also ``.flac``, ``.ogg``, ``.aiff``, ...).
        backend: ``"wave"`` (stdlib, integer PCM WAV), ``"soundfile"`` (optional extra
            ``bbvae[audio]``; an ImportError naming it when missing) or ``"auto"`` (soundfile if
            installed, else wave).

    Integer samples are scaled to ``[-1, 1)`` (both backends bit-identical), float samples kept.
    """
    if _resolve_backend(backend, "read_audio") == "wave":
        return read_wav(path)
    if not Path(path).is_file():  # (as the wave backend says it, not soundfile's "System error")
        raise FileNotFoundError(f"read_audio: no audio file {str(path)!r}")
    return _read_soundfile(Path(path))


def write_wav(path: str | os.PathLike, samples, sample_rate: int = NPZ_SAMPLE_RATE) -> Path:
    """Write ``samples`` ``[n]`` (floats in ``[-1, 1]``, clipped) as a 16-bit mono PCM WAV file."""
    x = np.asarray(torch.as_tensor(samples).detach().cpu().double().reshape(-1).numpy())
    if not np.isfinite(x).all():
        raise ValueError(f"write_wav: samples for {str(path)!r} hold NaN or infinite values")
    pcm = np.round(np.clip(x, -1.0, 1.0 - 1.0 / 32768) * 32768).astype("<i2")
    path = Path(path)
    with wave.open(str(path), "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(int(sample_rate))
        f.writeframes(pcm.tobytes())
    return path


def _check_size(name: str, value, optional: bool = False) -> None:
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"AudioData: expected {name} to be a positive integer, got {value!r}")


class AudioData:
    """Splits of raw waveforms, framed and normalised by the training statistics.

    Args:
        waveforms: ``{"train": [...], "valid": [...], "test": [...]}``, lists of 1-D float arrays
            (samples in ``[-1, 1)``); every utterance needs at least ``frame_size`` samples.
        sample_rate: samples per second (kept for writing WAV files).
        frame_size: samples per frame, the size of one step ``x_t``.
        chunk_length: if set, ``split("train")`` (and :meth:`dataset` of the train split) cuts every
            training utterance into consecutive chunks of exactly this many frames (the remainder
            of each utterance is dropped); valid and test stay whole.
        names: optional per-split lists naming the utterances (file names), for error messages.
        mean, std: normalisation statistics (default: the training split's).

    Attributes:
        mean, std (float): the statistics every split is normalised with.
    """

    def __init__(
        self,
        waveforms: dict[str, Sequence],
        sample_rate: int = NPZ_SAMPLE_RATE,
        frame_size: int = FRAME_SIZE,
        chunk_length: int | None = None,
        names: dict[str, Sequence[str]] | None = None,
        mean: float | None = None,
        std: float | None = None,
    ) -> None:
        _check_size("frame_size", frame_size)
        _check_size("chunk_length", chunk_length, optional=True)
        _check_size("sample_rate", sample_rate)
        if not isinstance(waveforms, dict) or set(waveforms) != set(_SPLITS):
            got = sorted(waveforms) if isinstance(waveforms, dict) else type(waveforms).__name__
            raise ValueError(f"AudioData: expected waveforms with the keys {_SPLITS}, got {got}")
        self.sample_rate = int(sample_rate)
        self.frame_size = int(frame_size)
        self.chunk_length = None if chunk_length is None else int(chunk_length)
        raw: dict[str, list[np.ndarray]] = {}
        for split in _SPLITS:
            labels = (names or {}).get(split) or [f"utterance {i}" for i in range(len(waveforms[split]))]
            raw[split] = [self._check_wave(w, split, label) for w, label in zip(waveforms[split], labels)]
        if not raw["train"]:
            raise ValueError("AudioData: expected at least one training utterance, got none")
        used = np.concatenate([w[: len(w) // self.frame_size * self.frame_size] for w in raw["train"]])
        self.mean = float(used.mean()) if mean is None else float(mean)
        self.std = float(used.std()) if std is None else float(std)
        if not np.isfinite(self.std) or self.std <= 0:
            raise ValueError(f"AudioData: expected a positive std of the training samples, got {self.std}")
        self._frames = {split: self._frame(raw[split]) for split in _SPLITS}

    def _check_wave(self, w, split: str, label: str) -> np.ndarray:
        arr = np.asarray(w, dtype=np.float64)
        if arr.ndim != 1:
            raise ValueError(f"AudioData: {split} {label}: expected a 1-D waveform, got shape {arr.shape}")
        if arr.shape[0] < self.frame_size:
            raise ValueError(
                f"AudioData: {split} {label} has {arr.shape[0]} samples, fewer than one frame "
                f"(frame_size={self.frame_size})"
            )
        if not np.isfinite(arr).all():
            raise ValueError(f"AudioData: {split} {label} holds NaN or infinite samples")
        return arr

    def _frame(self, waves: list[np.ndarray]) -> list[torch.Tensor]:
        """Whole utterances as normalised float32 frames ``[T_i, frame_size]`` (one vectorised pass)."""
        if not waves:
            return []
        counts = [len(w) // self.frame_size for w in waves]
        flat = np.concatenate([w[: c * self.frame_size] for w, c in zip(waves, counts)])
        frames = torch.from_numpy((flat - self.mean) / self.std).float().reshape(-1, self.frame_size)
        return list(frames.split(counts))

    def __repr__(self) -> str:
        sizes = ", ".join(f"{s}={len(self._frames[s])}" for s in _SPLITS)
        return (
            f"AudioData({sizes} utterances, frame_size={self.frame_size}, sample_rate={self.sample_rate}, "
            f"chunk_length={self.chunk_length})"
        )

    def utterances(self, name: str) -> list[torch.Tensor]:
        """Whole utterances of split ``name``: normalised frames ``[T_i, frame_size]`` (float32)."""
        if name not in _SPLITS:
            raise ValueError(f"AudioData: expected split in {_SPLITS}, got {name!r}")
        return self._frames[name]

    def split(self, name: str, chunk_length: int | None = None) -> list[torch.Tensor]:
        """Split ``name`` as frame sequences: training chunks (see ``chunk_length``) or utterances.

        ``chunk_length`` overrides the data set's for the train split; valid and test are never cut.
        """
        utterances = self.utterances(name)
        _check_size("chunk_length", chunk_length, optional=True)
        length = (chunk_length or self.chunk_length) if name == "train" else None
        if length is None:
            return utterances
        chunks = [c for u in utterances for c in u.split(length) if c.shape[0] == length]
        if not chunks:
            longest = max(u.shape[0] for u in utterances)
            raise ValueError(
                f"AudioData: chunk_length={length} frames is longer than every training utterance "
                f"(the longest has {longest} frames)"
            )
        return chunks

    def num_steps(self, name: str) -> int:
        return sum(s.shape[0] for s in self.split(name))

    def dataset(self, name: str, chunk_length: int | None = None) -> SequenceDataset:
        """Split ``name`` as a :class:`~bbvae.data.SequenceDataset` of ``[T_i, frame_size]`` frames."""
        return SequenceDataset(self.split(name, chunk_length))

    def batches(
        self,
        name: str,
        batch_size: int,
        *,
        shuffle: bool = False,
        generator: torch.Generator | None = None,
        drop_last: bool = False,
        sort_by_length: bool = False,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> Iterator[SequenceBatch]:
        """Padded batches ``SequenceBatch(x [B, T, frame_size], lengths [B], inputs=None)``."""
        seqs = self.split(name)
        order = batch_indices(
            [s.shape[0] for s in seqs],
            batch_size,
            shuffle=shuffle,
            generator=generator,
            drop_last=drop_last,
            sort_by_length=sort_by_length,
        )
        for idx in order:
            yield pad_sequences([seqs[i] for i in idx], dtype=dtype, device=device)

    def to_waveform(self, frames) -> np.ndarray:
        """Normalised frames ``[..., T, frame_size]`` back to samples ``[..., T * frame_size]`` (float64)."""
        x = torch.as_tensor(frames).detach().cpu().double()
        if x.dim() < 2 or x.shape[-1] != self.frame_size:
            raise ValueError(
                f"AudioData.to_waveform: expected frames of shape [..., T, {self.frame_size}], "
                f"got {list(x.shape)}"
            )
        return (x.flatten(start_dim=-2) * self.std + self.mean).numpy()


def _suffixes(backend: str) -> tuple[str, ...]:
    return SOUNDFILE_SUFFIXES if backend == "soundfile" else (".wav",)


def _audio_files(folder: Path, backend: str) -> list[Path]:
    """The folder's audio files that ``backend`` reads, in name order."""
    suffixes = _suffixes(backend)
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in suffixes)


def _check_unread(folders: list[Path], asked: str) -> None:
    """With ``backend="auto"`` and no soundfile, refuse folders holding files only soundfile reads."""
    if asked != "auto":
        return
    others = [
        p for f in folders for p in f.iterdir() if p.is_file() and p.suffix.lower() in SOUNDFILE_SUFFIXES[1:]
    ]
    if others:
        raise ImportError(
            f"load_audio: {str(others[0])!r}"
            + (f" (and {len(others) - 1} more non-WAV file(s))" if len(others) > 1 else "")
            + f" needs soundfile, which is not installed; {_EXTRA_HINT}, or convert to 16-bit WAV"
        )


def _read_folder(files: list[Path], backend: str) -> tuple[list[np.ndarray], list[str], int | None]:
    waves, names, rate = [], [], None
    for f in files:
        w, r = read_audio(f, backend)
        if rate is not None and r != rate:
            raise ValueError(
                f"load_audio: {str(f)!r} has sample rate {r} Hz, but {names[0]!r} has {rate} Hz; "
                "resample the files to one rate first"
            )
        rate = r
        waves.append(w)
        names.append(f.name)
    return waves, names, rate


def _read_npz(path: Path) -> list[np.ndarray]:
    with np.load(path) as d:
        missing = [k for k in ("audio", "offsets") if k not in d.files]
        if missing:
            raise ValueError(f"load_audio: {str(path)!r} lacks {missing}; expected 'audio' and 'offsets'")
        audio, offsets = d["audio"], d["offsets"].astype(np.int64)
    if audio.ndim != 1 or offsets.ndim != 1 or offsets.shape[0] < 1:
        raise ValueError(
            f"load_audio: {str(path)!r}: expected 1-D 'audio' and 'offsets', got shapes "
            f"{audio.shape} and {offsets.shape}"
        )
    if offsets[0] != 0 or offsets[-1] != audio.shape[0] or (np.diff(offsets) < 0).any():
        raise ValueError(
            f"load_audio: {str(path)!r}: 'offsets' must rise from 0 to len(audio)={audio.shape[0]}, got "
            f"{offsets[0]}..{offsets[-1]}"
        )
    scale = float(np.iinfo(audio.dtype).max + 1) if np.issubdtype(audio.dtype, np.integer) else 1.0
    return np.split(audio.astype(np.float64) / scale, offsets[1:-1])


def load_audio(
    path: str | os.PathLike,
    frame_size: int = FRAME_SIZE,
    chunk_length: int | None = None,
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
    backend: str = "auto",
) -> AudioData:
    """Read a folder of audio (see the module docstring for the three layouts) as :class:`AudioData`.

    Args:
        path: the folder.
        frame_size: samples per frame.
        chunk_length: training chunk length in frames (None: whole utterances).
        fractions: train / valid / test shares of a flat folder of audio files (file-name order).
        backend: how audio files are read (:func:`read_audio`): ``"wave"`` lists and reads ``.wav``
            files only; ``"soundfile"`` (extra ``bbvae[audio]``) every suffix of
            :data:`SOUNDFILE_SUFFIXES`; ``"auto"`` soundfile when installed, else wave (then a
            folder holding FLAC/OGG/AIFF files raises an ImportError naming the extra). The
            ``.npz`` layout needs neither.
    """
    if backend not in AUDIO_BACKENDS:
        raise ValueError(f"load_audio: expected backend in {AUDIO_BACKENDS}, got {backend!r}")
    folder = Path(path)
    if not folder.is_dir():
        raise ValueError(f"load_audio: expected a folder of audio, got {str(path)!r} (no such folder)")
    npz = [folder / f"{s}.npz" for s in _SPLITS]
    if all(p.is_file() for p in npz):
        waves = {s: _read_npz(p) for s, p in zip(_SPLITS, npz)}
        return AudioData(waves, NPZ_SAMPLE_RATE, frame_size, chunk_length)
    used = _resolve_backend(backend, "load_audio")
    kinds = "/".join(_suffixes(used))
    if all((folder / s).is_dir() for s in _SPLITS):
        if used == "wave":
            _check_unread([folder / s for s in _SPLITS], backend)
        files = {s: _audio_files(folder / s, used) for s in _SPLITS}
    else:
        if used == "wave":
            _check_unread([folder], backend)
        flat = _audio_files(folder, used)
        if len(flat) < 3:
            raise ValueError(
                f"load_audio: {str(path)!r} holds {len(flat)} audio file(s) ({kinds}) and no "
                "train/valid/test sub-folders or .npz files; expected at least 3 audio files (split by "
                "fractions)"
            )
        if len(fractions) != 3 or min(fractions) < 0 or abs(sum(fractions) - 1) > 1e-6:
            raise ValueError(f"load_audio: expected 3 fractions summing to 1, got {fractions!r}")
        n_train = max(1, int(round(len(flat) * fractions[0])))
        n_valid = int(round(len(flat) * fractions[1]))
        parts = (flat[:n_train], flat[n_train : n_train + n_valid], flat[n_train + n_valid :])
        files = dict(zip(_SPLITS, parts))
    if not files["train"]:
        raise ValueError(f"load_audio: {str(folder / 'train')!r} holds no audio files ({kinds})")
    waves, names, rate = {}, {}, None
    for s in _SPLITS:
        waves[s], names[s], r = _read_folder(files[s], used)
        if rate is not None and r is not None and r != rate:
            raise ValueError(f"load_audio: the {s} files have sample rate {r} Hz, the train files {rate} Hz")
        rate = rate or r
    return AudioData(waves, rate, frame_size, chunk_length, names)
