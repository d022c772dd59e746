"""What ``bbvae sample`` writes for audio models: WAV files and a picture of a sample and a real utterance."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from bbvae.data.audio import write_wav

__all__ = ["write_audio_samples", "write_one_wav"]

#: Silence between the pieces of ``--out FILE.wav``.
GAP_SECONDS = 0.25


def _pieces(data, prefixes, prefix_lengths, samples):
    """``(b, k, waveform of prefix b + sample k, prefix samples)`` for every group and sample."""
    for b in range(samples.shape[0]):
        prefix = prefixes[b, : int(prefix_lengths[b])]
        for k in range(samples.shape[1]):
            frames = torch.cat([prefix.to(samples.dtype), samples[b, k]])
            yield b, k, data.to_waveform(frames), prefix.numel()


def write_audio_samples(logdir: Path, data, reals, prefixes, prefix_lengths, samples) -> list[Path]:
    """Write ``samples_wav/`` (``real{b}.wav``, ``prefix{b}_sample{k}.wav`` or ``sample{b}_{k}.wav``)
    and ``samples.png`` (the first sample next to the first real utterance; skipped without
    matplotlib). Frames are ``[..., T, frame_size]`` normalised as ``data`` (an AudioData) does.

    Returns:
        The paths written (the folder and the picture).
    """
    folder = logdir / "samples_wav"
    folder.mkdir(exist_ok=True)
    rate = data.sample_rate
    for b, real in enumerate(reals):
        write_wav(folder / f"real{b}.wav", data.to_waveform(real), rate)
    first = None
    for b, k, wave, n_prefix in _pieces(data, prefixes, prefix_lengths, samples):
        name = f"prefix{b}_sample{k}.wav" if n_prefix else f"sample{b}_{k}.wav"
        write_wav(folder / name, wave, rate)
        if first is None:
            first = (wave, n_prefix)
    written = [folder]
    try:
        from bbvae.plots import plot_audio

        wave, n_prefix = first
        label = "model: prefix + continuation" if n_prefix else "model: unconditional sample"
        panels = [(label, wave), ("real utterance", data.to_waveform(reals[0]))]
        title = f"{rate} Hz, {data.frame_size}-sample frames"
        picture = plot_audio(panels, rate, logdir / "samples.png", title, prefix_seconds=n_prefix / rate)
        written.append(picture)
    except ImportError:
        pass
    return written


def write_one_wav(out: Path, data, prefixes, prefix_lengths, samples) -> Path:
    """Every prefix followed by each of its continuations, ``GAP_SECONDS`` of silence apart, in one file."""
    silence = np.zeros(int(GAP_SECONDS * data.sample_rate))
    waves = []
    for _, _, wave, _ in _pieces(data, prefixes, prefix_lengths, samples):
        waves += [wave, silence]
    return write_wav(out, np.concatenate(waves), data.sample_rate)
