"""Raw audio: WAV reading and writing, framing, training statistics, chunks, layouts, errors."""

from __future__ import annotations

import os
import subprocess
import sys
import wave
from pathlib import Path

import numpy as np
import pytest
import torch

from bbvae.data import (
    AudioData,
    SequenceDataset,
    collate_sequences,
    load_audio,
    read_audio,
    read_wav,
    write_wav,
)

SPEECH = Path(__file__).resolve().parents[3] / "shared" / "data" / "speech"


def _pcm(path: Path, ints: np.ndarray, rate: int = 8000, width: int = 2, channels: int = 1) -> None:
    if width == 3:  # little-endian 3-byte two's complement
        raw = (ints.astype(np.int64) % (1 << 24)).astype("<u4").view(np.uint8).reshape(-1, 4)[:, :3].tobytes()
    else:
        raw = ints.astype({1: "<u1", 2: "<i2", 4: "<i4"}[width]).tobytes()
    with wave.open(str(path), "wb") as f:
        f.setnchannels(channels)
        f.setsampwidth(width)
        f.setframerate(rate)
        f.writeframes(raw)


def _folder(tmp_path: Path, lengths: dict[str, list[int]], rate: int = 8000, seed: int = 0) -> dict:
    """train/valid/test sub-folders of 16-bit WAV files; returns the int samples written."""
    rng = np.random.default_rng(seed)
    written = {}
    for split, ns in lengths.items():
        (tmp_path / split).mkdir()
        written[split] = []
        for i, n in enumerate(ns):
            ints = rng.integers(-3000, 3000, size=n) + 500
            _pcm(tmp_path / split / f"u{i:02d}.wav", ints, rate)
            written[split].append(ints)
    return written


def test_read_wav_widths_and_channels(tmp_path):
    ints = np.array([-32768, -1, 0, 1, 32767])
    _pcm(tmp_path / "a.wav", ints, rate=22050)
    x, rate = read_wav(tmp_path / "a.wav")
    assert rate == 22050
    np.testing.assert_array_equal(x, ints / 32768.0)
    _pcm(tmp_path / "b.wav", np.array([0, 128, 255]), width=1)
    np.testing.assert_array_equal(read_wav(tmp_path / "b.wav")[0], np.array([-128, 0, 127]) / 128.0)
    stereo = np.array([100, 300, -50, 50])  # frames (100, 300), (-50, 50)
    _pcm(tmp_path / "c.wav", stereo, channels=2)
    np.testing.assert_array_equal(read_wav(tmp_path / "c.wav")[0], np.array([200, 0]) / 32768.0)


def test_write_wav_round_trip(tmp_path):
    x = np.array([-1.0, -0.5, 0.0, 0.25, 0.999])
    write_wav(tmp_path / "o.wav", x, 16000)
    y, rate = read_wav(tmp_path / "o.wav")
    assert rate == 16000
    np.testing.assert_allclose(y, x, atol=1 / 32768)
    with pytest.raises(ValueError, match="NaN"):
        write_wav(tmp_path / "n.wav", np.array([0.0, np.nan]))


def test_framing_is_exact_and_uses_training_statistics(tmp_path):
    written = _folder(tmp_path, {"train": [1000, 650], "valid": [420], "test": [399, 200]})
    data = load_audio(tmp_path, frame_size=100)
    assert data.sample_rate == 8000
    # The statistics are those of the framed training samples (the trailing 50 of u01 dropped).
    used = np.concatenate([written["train"][0], written["train"][1][:600]]) / 32768.0
    assert data.mean == pytest.approx(used.mean(), rel=1e-12)
    assert data.std == pytest.approx(used.std(), rel=1e-12)
    assert [u.shape for u in data.split("train")] == [(10, 100), (6, 100)]
    assert [u.shape for u in data.split("test")] == [(3, 100), (2, 100)]
    valid = data.split("valid")[0]
    expected = (written["valid"][0][:400] / 32768.0 - used.mean()) / used.std()
    np.testing.assert_allclose(valid.numpy(), expected.reshape(4, 100), rtol=1e-5, atol=1e-5)
    assert valid.dtype == torch.float32
    # Validation data are not normalised by their own statistics.
    assert abs(float(valid.mean())) > 1e-3 or abs(float(valid.std()) - 1) > 1e-3
    np.testing.assert_allclose(data.to_waveform(valid), written["valid"][0][:400] / 32768.0, atol=1e-6)


def test_chunks_for_training_and_whole_utterances_for_evaluation(tmp_path):
    _folder(tmp_path, {"train": [1000, 650], "valid": [1000], "test": [1000]})
    data = load_audio(tmp_path, frame_size=100, chunk_length=4)
    chunks = data.split("train")
    assert [c.shape[0] for c in chunks] == [4, 4, 4]  # 10 frames -> 4 + 4 (+2 dropped); 6 -> 4 (+2)
    whole = data.utterances("train")
    torch.testing.assert_close(chunks[1], whole[0][4:8])
    torch.testing.assert_close(chunks[2], whole[1][:4])
    assert [u.shape[0] for u in data.split("valid")] == [10]
    assert [c.shape[0] for c in data.split("train", chunk_length=5)] == [5, 5, 5]
    ds = data.dataset("train")
    assert isinstance(ds, SequenceDataset) and ds.lengths == [4, 4, 4]
    batch = collate_sequences([ds[0], ds[1]])
    assert batch.x.shape == (2, 4, 100)
    (b,) = list(data.batches("valid", 8))
    assert b.x.shape == (1, 10, 100) and b.lengths.tolist() == [10]
    with pytest.raises(ValueError, match="chunk_length=20 frames is longer than every training"):
        data.split("train", chunk_length=20)


def test_flat_folder_is_split_by_name(tmp_path):
    rng = np.random.default_rng(1)
    for i in range(10):
        _pcm(tmp_path / f"f{i}.wav", rng.integers(-100, 100, size=300 + i))
    data = load_audio(tmp_path, frame_size=100)
    assert [len(data.split(s)) for s in ("train", "valid", "test")] == [8, 1, 1]


def test_bad_input_messages(tmp_path):
    with pytest.raises(ValueError, match="no such folder"):
        load_audio(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"holds 0 audio file\(s\) \(\.wav\) and no train"):
        load_audio(tmp_path / "empty", backend="wave")
    bad = tmp_path / "bad"
    bad.mkdir()
    for s in ("train", "valid", "test"):
        (bad / s).mkdir()
        _pcm(bad / s / "a.wav", np.zeros(500, dtype=int))
    (bad / "train" / "b.wav").write_bytes(b"RIFF not a wav")
    with pytest.raises(ValueError, match=r"b\.wav.*not a readable PCM WAV.*backend='soundfile'"):
        load_audio(bad, backend="wave")
    if _has_soundfile():
        with pytest.raises(ValueError, match=r"b\.wav.*not a readable audio file \(soundfile: "):
            load_audio(bad, backend="soundfile")
    with pytest.raises(ValueError, match=r"expected backend in \('auto', 'soundfile', 'wave'\), got 'sox'"):
        load_audio(bad, backend="sox")
    os.remove(bad / "train" / "b.wav")
    _pcm(bad / "train" / "b.wav", np.zeros(500, dtype=int), rate=16000)
    with pytest.raises(ValueError, match="sample rate 16000 Hz"):
        load_audio(bad)
    os.remove(bad / "train" / "b.wav")
    _pcm(bad / "train" / "b.wav", np.arange(50))
    with pytest.raises(ValueError, match=r"train b\.wav has 50 samples, fewer than one frame"):
        load_audio(bad, frame_size=100)
    with pytest.raises(ValueError, match="frame_size to be a positive integer, got 0"):
        load_audio(bad, frame_size=0)
    with pytest.raises(ValueError, match="positive std"):
        AudioData({"train": [np.zeros(300)], "valid": [], "test": []}, frame_size=100)
    np.savez(tmp_path / "train.npz", audio=np.zeros(10, np.int16), offsets=np.array([0, 4, 10]))
    np.savez(tmp_path / "valid.npz", audio=np.zeros(10, np.int16), offsets=np.array([0, 10]))
    np.savez(tmp_path / "test.npz", audio=np.zeros(10, np.int16))
    with pytest.raises(ValueError, match=r"test\.npz.*lacks \['offsets'\]"):
        load_audio(tmp_path)
    np.savez(tmp_path / "test.npz", audio=np.zeros(10, np.int16), offsets=np.array([0, 12]))
    with pytest.raises(ValueError, match=r"'offsets' must rise from 0 to len\(audio\)=10, got 0\.\.12"):
        load_audio(tmp_path)


def _has_soundfile() -> bool:
    try:
        import soundfile  # noqa: F401
    except (ImportError, OSError):
        return False
    return True


needs_soundfile = pytest.mark.skipif(not _has_soundfile(), reason="soundfile (extra 'audio') not installed")


@needs_soundfile
@pytest.mark.parametrize("width", [1, 2, 3, 4])
@pytest.mark.parametrize("channels", [1, 2])
def test_backends_give_identical_arrays_on_integer_pcm_wav(tmp_path, width, channels):
    bits = 8 * width
    rng = np.random.default_rng(width * 10 + channels)
    lo, hi = (0, 256) if width == 1 else (-(1 << (bits - 1)), 1 << (bits - 1))
    ints = rng.integers(lo, hi, size=600 * channels)
    ints[:2] = [lo, hi - 1]  # the extremes of the width
    _pcm(tmp_path / "a.wav", ints, rate=11025, width=width, channels=channels)
    x_wave, rate_wave = read_audio(tmp_path / "a.wav", backend="wave")
    x_sf, rate_sf = read_audio(tmp_path / "a.wav", backend="soundfile")
    assert rate_wave == rate_sf == 11025
    assert x_sf.dtype == x_wave.dtype == np.float64 and x_sf.shape == (600,)
    np.testing.assert_array_equal(x_sf, x_wave)  # bit-identical
    signed = ints - 128 if width == 1 else ints
    expected = signed.reshape(-1, channels).mean(axis=1) / 2.0 ** (bits - 1)
    np.testing.assert_array_equal(x_wave, expected)


@needs_soundfile
def test_load_audio_backends_agree_on_a_wav_folder(tmp_path):
    _folder(tmp_path, {"train": [1000, 650], "valid": [420], "test": [399, 200]})
    a = load_audio(tmp_path, frame_size=100, backend="wave")
    b = load_audio(tmp_path, frame_size=100, backend="soundfile")
    c = load_audio(tmp_path, frame_size=100)  # auto: soundfile here
    assert a.mean == b.mean == c.mean and a.std == b.std == c.std
    for split in ("train", "valid", "test"):
        for u, v in zip(a.utterances(split), b.utterances(split), strict=True):
            torch.testing.assert_close(u, v, rtol=0, atol=0)


@needs_soundfile
def test_soundfile_reads_flac_float_and_24_bit_wav(tmp_path):
    import soundfile as sf

    rng = np.random.default_rng(5)
    ints = rng.integers(-32768, 32768, size=900).astype(np.int16)
    sf.write(tmp_path / "a.flac", ints, 16000, subtype="PCM_16")
    x, rate = read_audio(tmp_path / "a.flac")
    assert rate == 16000
    np.testing.assert_array_equal(x, ints / 32768.0)  # lossless, scaled like the WAV readers
    # A float WAV keeps its values (here beyond [-1, 1], which no integer format can hold);
    # the stdlib reader refuses it and names the backend and extra that read it.
    floats = np.array([0.1, -0.7, 1.5, -2.25, 3e-5], dtype=np.float32)
    sf.write(tmp_path / "f.wav", floats, 8000, subtype="FLOAT")
    np.testing.assert_array_equal(read_audio(tmp_path / "f.wav", backend="soundfile")[0], floats)
    with pytest.raises(ValueError, match=r"f\.wav.*not a readable PCM WAV.*bbvae\[audio\]"):
        read_audio(tmp_path / "f.wav", backend="wave")
    int24 = rng.integers(-(1 << 23), 1 << 23, size=300)
    sf.write(tmp_path / "c.wav", int24.astype(np.int32) << 8, 8000, subtype="PCM_24")
    np.testing.assert_array_equal(read_audio(tmp_path / "c.wav", backend="soundfile")[0], int24 / 2.0**23)
    np.testing.assert_array_equal(read_audio(tmp_path / "c.wav", backend="wave")[0], int24 / 2.0**23)
    # A FLAC folder loads like the same samples as 16-bit WAV; the wave backend lists no FLAC file.
    wav, flac = tmp_path / "wav", tmp_path / "flac"
    wav.mkdir()
    written = _folder(wav, {"train": [1000, 650], "valid": [420], "test": [399]})
    for split, arrays in written.items():
        (flac / split).mkdir(parents=True)
        for i, a in enumerate(arrays):
            sf.write(flac / split / f"u{i:02d}.flac", a.astype(np.int16), 8000, subtype="PCM_16")
    a, b = load_audio(wav, frame_size=100), load_audio(flac, frame_size=100)
    assert (a.mean, a.std, a.sample_rate) == (b.mean, b.std, b.sample_rate)
    for u, v in zip(a.utterances("train"), b.utterances("train"), strict=True):
        torch.testing.assert_close(u, v, rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"holds no audio files \(\.wav\)"):
        load_audio(flac, frame_size=100, backend="wave")


def test_missing_soundfile_names_the_extra(tmp_path, monkeypatch):
    code = "import bbvae, bbvae.data, sys; print('soundfile' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"  # imported lazily
    (tmp_path / "wav").mkdir()
    written = _folder(tmp_path / "wav", {"train": [500], "valid": [300], "test": [300]})
    monkeypatch.setitem(sys.modules, "soundfile", None)  # import soundfile now raises ImportError
    wav = tmp_path / "wav" / "train" / "u00.wav"
    with pytest.raises(ImportError, match=r"read_audio: backend='soundfile'.*pip install 'bbvae\[audio\]'"):
        read_audio(wav, backend="soundfile")
    with pytest.raises(ImportError, match=r"load_audio: .*pip install 'bbvae\[audio\]'"):
        load_audio(tmp_path / "wav", frame_size=100, backend="soundfile")
    # auto falls back to wave for WAV files ...
    np.testing.assert_array_equal(read_audio(wav)[0], written["train"][0] / 32768.0)
    assert load_audio(tmp_path / "wav", frame_size=100).utterances("train")[0].shape == (5, 100)
    # ... and refuses, naming the extra, a folder holding files only soundfile reads.
    (tmp_path / "wav" / "valid" / "extra.flac").write_bytes(b"fLaC")
    with pytest.raises(ImportError, match=r"extra\.flac.*needs soundfile.*pip install 'bbvae\[audio\]'"):
        load_audio(tmp_path / "wav", frame_size=100)
    explicit = load_audio(tmp_path / "wav", frame_size=100, backend="wave")  # lists .wav files only
    assert [u.shape for u in explicit.utterances("valid")] == [(3, 100)]


@pytest.fixture(scope="module")
def speech() -> AudioData:
    if not (SPEECH / "train.npz").is_file():
        message = f"shared speech corpus not found under {SPEECH}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return load_audio(SPEECH, chunk_length=40)


def test_shared_speech_corpus(speech):
    counts = [len(speech.utterances(s)) for s in ("train", "valid", "test")]
    assert counts == [352, 48, 48]
    raw = np.load(SPEECH / "test.npz")
    first = raw["audio"][raw["offsets"][0] : raw["offsets"][1]]
    u = speech.utterances("test")[0]
    assert u.shape == (len(first) // 200, 200)
    np.testing.assert_allclose(speech.to_waveform(u), first[: u.numel()] / 32768.0, atol=1e-6)
    frames = torch.cat(speech.utterances("train"))
    assert abs(float(frames.double().mean())) < 1e-4 and abs(float(frames.double().std()) - 1) < 1e-4
    chunks = speech.split("train")
    assert all(c.shape == (40, 200) for c in chunks)
    # 0.9 to 4.5 s utterances: 2.5 s on average, 200 frames of 12.5 ms.
    assert 1000 < len(chunks) < 352 * 8


def test_sequence_model_fits_audio_data(tmp_path):
    from bbvae.sequential import SequenceModel

    _folder(tmp_path, {"train": [2000, 1500], "valid": [1000], "test": [900]})
    data = load_audio(tmp_path, frame_size=50, chunk_length=8)
    est = SequenceModel(
        model="vrnn", bound="fivo", observation="gmm", n_components=2, latent_size=4, max_steps=3,
        batch_size=2, random_state=0,
    )  # fmt: skip
    est.fit(data)
    assert est.obs_shape_ == (50,) and est.mean_length_ == 8  # trained on chunks of 8 frames
    per_sequence = est.score_samples(data, split="test", random_state=0)
    assert per_sequence.shape == (1,) and bool(torch.isfinite(per_sequence).all())
    per_step = est.score(data, split="test", random_state=0)
    assert per_step == pytest.approx(float(per_sequence[0]) / 18)  # 900 samples = 18 frames


@pytest.mark.parametrize("backend", ["wave", "soundfile"])
def test_a_missing_file_is_named_by_both_backends(tmp_path, backend):
    # (soundfile is in the dev extra: installed wherever the tests run)
    with pytest.raises(FileNotFoundError, match="nothere.wav"):
        read_audio(tmp_path / "nothere.wav", backend=backend)
