"""Pictures of a run (matplotlib, an optional dependency: ``pip install 'bbvae[plots]'``).

Each function draws one figure with matplotlib's object-oriented API on an Agg canvas (headless,
whatever backend the user's pyplot has) and writes it as a PNG of a fixed size in pixels
(``SIZES[name]`` inches at ``DPI``), so that pictures of different runs line up.

* :func:`plot_bounds`: the training and validation bounds of ``log.jsonl`` / ``log.csv`` rows,
  against optimizer steps and against wall-clock time.
* :func:`plot_ess`: the effective sample size of a particle filter at every time step, mean and
  10-90% band over the sequences still running at that step.
* :func:`plot_pianorolls`: piano rolls (time across, 88 keys up), one panel each, with the end of
  a conditioning prefix marked: samples and continuations next to the truth.
* :func:`plot_audio`: waveforms (above) and their spectrograms (below), side by side: a model's
  audio sample next to a real utterance.

``bbvae plot LOGDIR`` (:mod:`bbvae.cli.plot`) draws all of them for a trained run.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["DPI", "SIZES", "plot_audio", "plot_bounds", "plot_ess", "plot_pianorolls", "read_log"]

DPI = 100
#: Figure sizes in inches (width, height); a PNG is ``DPI`` times as many pixels.
SIZES = {"bounds": (11.0, 4.0), "ess": (8.0, 4.5), "pianorolls": (10.0, 8.0), "audio": (11.0, 6.0)}


def _figure(name: str):
    """A matplotlib Figure on an Agg canvas, or an ImportError naming the extra to install."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise ImportError(
            "bbvae's plots need matplotlib, an optional dependency: pip install 'bbvae[plots]'"
        ) from exc
    figure = Figure(figsize=SIZES[name], dpi=DPI)
    FigureCanvasAgg(figure)
    return figure


def _save(figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=DPI, format="png")
    return path


def read_log(path: str | Path) -> list[dict[str, Any]]:
    """The rows of a trainer's ``log.jsonl`` or ``log.csv`` (numbers as floats, empty as None)."""
    import csv
    import json

    path = Path(path)
    with open(path, encoding="utf-8", newline="") as f:
        if path.suffix == ".csv":
            rows = [{k: (None if v == "" else float(v)) for k, v in row.items()} for row in csv.DictReader(f)]
        else:
            rows = [json.loads(line) for line in f if line.strip()]
    return rows


def plot_bounds(rows: Sequence[dict[str, Any]], path: str | Path, title: str = "") -> Path:
    """The training bound (``-loss``, mean since the previous row) and the validation bound.

    Args:
        rows: log rows with ``step``, ``time`` (seconds), ``loss`` and ``valid_bound`` (None where
            absent), as :func:`read_log` returns them.
        path: the PNG to write.
        title: the figure's title.

    Returns:
        ``path``.
    """
    figure = _figure("bounds")
    by_step, by_time = figure.subplots(1, 2, sharey=True)
    train = [(r["step"], r["time"], -r["loss"]) for r in rows if r.get("loss") is not None]
    valid = [(r["step"], r["time"], r["valid_bound"]) for r in rows if r.get("valid_bound") is not None]
    minutes = max((r["time"] for r in rows), default=0.0) > 300
    scale, unit = (60.0, "min") if minutes else (1.0, "s")
    for axes, column, label in ((by_step, 0, "optimizer step"), (by_time, 1, f"wall-clock time ({unit})")):
        div = scale if column == 1 else 1.0
        if train:
            axes.plot([t[column] / div for t in train], [t[2] for t in train], color="C0", label="training")
        if valid:
            axes.plot(
                [v[column] / div for v in valid], [v[2] for v in valid], "o-", color="C1", label="validation"
            )
        axes.set_xlabel(label)
        axes.grid(alpha=0.3)
    by_step.set_ylabel("bound (higher is better)")
    by_step.legend(loc="lower right")
    figure.suptitle(title or "training and validation bounds")
    figure.tight_layout()
    return _save(figure, path)


def plot_ess(
    ess: np.ndarray, lengths: np.ndarray, n_particles: int, path: str | Path, title: str = ""
) -> Path:
    """The effective sample size at every time step: mean and 10-90% band over the sequences.

    Args:
        ess: ``[N, T]`` ESS before resampling at each step (as ``smc(...).ess``).
        lengths: ``[N]`` each sequence's length; steps past it are left out.
        n_particles: K, the largest possible ESS (drawn as a line).
        path: the PNG to write.
        title: the figure's title.

    Returns:
        ``path``.
    """
    ess = np.asarray(ess, dtype=np.float64)
    lengths = np.asarray(lengths)
    n_steps = ess.shape[1]
    valid = np.arange(n_steps)[None, :] < lengths[:, None]  # [N, T]
    steps = np.arange(n_steps)[valid.any(axis=0)]
    mean = np.array([ess[valid[:, t], t].mean() for t in steps])
    low = np.array([np.quantile(ess[valid[:, t], t], 0.1) for t in steps])
    high = np.array([np.quantile(ess[valid[:, t], t], 0.9) for t in steps])
    figure = _figure("ess")
    axes = figure.subplots()
    axes.fill_between(steps + 1, low, high, color="C0", alpha=0.25, label="10-90% of sequences")
    axes.plot(steps + 1, mean, color="C0", label="mean over sequences")
    axes.axhline(n_particles, color="0.4", linestyle="--", linewidth=1, label=f"K = {n_particles}")
    axes.set_xlabel("time step")
    axes.set_ylabel("effective sample size")
    axes.set_ylim(0, n_particles * 1.05)
    axes.set_xlim(1, max(2, int(steps.max()) + 1) if steps.size else 2)
    axes.grid(alpha=0.3)
    axes.legend(loc="lower left")
    axes.set_title(title or f"ESS per time step ({ess.shape[0]} sequences)")
    running = axes.twinx()  # few sequences run to the end: the band there rests on few values
    running.plot(steps + 1, valid[:, steps].sum(axis=0), color="0.6", linewidth=0.8)
    running.set_ylabel("sequences still running", color="0.45")
    running.set_ylim(0, ess.shape[0] * 1.05)
    running.tick_params(axis="y", colors="0.45")
    figure.tight_layout()
    return _save(figure, path)


def plot_pianorolls(
    panels: Sequence[tuple[str, np.ndarray, int]], path: str | Path, title: str = "", lowest_note: int = 21
) -> Path:
    """Piano rolls one above the other, time across and keys up, a prefix's end marked.

    Args:
        panels: ``(label, roll [T, D], prefix_length)`` each; ``roll`` holds 0/1 (or
            probabilities); a dashed line follows step ``prefix_length`` when it is > 0.
        path: the PNG to write.
        title: the figure's title.
        lowest_note: the MIDI note of column 0 (21, A0, for 88-key rolls).

    Returns:
        ``path``.
    """
    if not panels:
        raise ValueError("plot_pianorolls: expected at least one panel, got none")
    figure = _figure("pianorolls")
    axes = figure.subplots(len(panels), 1, squeeze=False)[:, 0]
    width = max(np.asarray(roll).shape[0] for _, roll, _ in panels)
    played = np.flatnonzero(np.any([np.asarray(roll).max(axis=0) > 0 for _, roll, _ in panels], axis=0))
    low, high = (int(played.min()) - 2, int(played.max()) + 2) if played.size else (0, 87)
    for ax, (label, roll, prefix) in zip(axes, panels):
        roll = np.asarray(roll, dtype=np.float64)
        keys = roll.shape[1]
        ax.imshow(
            roll.T,
            origin="lower",
            aspect="auto",
            cmap="Greys",
            vmin=0.0,
            vmax=1.0,
            interpolation="nearest",
            extent=(0, roll.shape[0], lowest_note - 0.5, lowest_note + keys - 0.5),
        )
        if prefix > 0:
            ax.axvline(prefix, color="C3", linestyle="--", linewidth=1)
        ax.set_xlim(0, width)
        ax.set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8)
        bottom, top = lowest_note + max(low, 0), lowest_note + min(high, keys - 1)  # the keys played
        c_notes = [n for n in range(bottom, top + 1) if n % 12 == 0]  # MIDI 60 = C4
        ax.set_yticks(c_notes)
        ax.set_yticklabels([f"C{n // 12 - 1}" for n in c_notes])
        ax.set_ylim(bottom - 0.5, top + 0.5)  # after the ticks, which would widen it
        ax.tick_params(labelsize=6)
    axes[-1].set_xlabel("time step")
    figure.suptitle(title or "piano rolls")
    figure.subplots_adjust(left=0.2, right=0.98, top=0.93, bottom=0.07, hspace=0.35)
    return _save(figure, path)


def plot_audio(
    panels: Sequence[tuple[str, np.ndarray]],
    sample_rate: int,
    path: str | Path,
    title: str = "",
    prefix_seconds: float = 0.0,
) -> Path:
    """Waveforms (top row) and spectrograms (bottom row), one column per panel.

    Args:
        panels: ``(label, samples [n])`` each, samples in ``[-1, 1]`` (e.g. a model's sample and a
            real utterance).
        sample_rate: samples per second (the time axes are in seconds).
        path: the PNG to write.
        title: the figure's title.
        prefix_seconds: a dashed line in the first panel marks the end of its conditioning prefix
            (0: none).

    Returns:
        ``path``.
    """
    if not panels:
        raise ValueError("plot_audio: expected at least one panel, got none")
    figure = _figure("audio")
    axes = figure.subplots(2, len(panels), squeeze=False)
    images, peak = [], -np.inf
    for col, (label, wave) in enumerate(panels):
        wave = np.asarray(wave, dtype=np.float64).reshape(-1)
        top, bottom = axes[0, col], axes[1, col]
        top.plot(np.arange(wave.shape[0]) / sample_rate, wave, linewidth=0.4, color="C0")
        top.set_xlim(0, max(wave.shape[0], 1) / sample_rate)
        top.set_ylim(-1.0, 1.0)
        top.set_title(label, fontsize=9)
        nfft = int(min(512, max(16, 2 ** int(np.log2(max(wave.shape[0] // 4, 16))))))
        power, _, _, image = bottom.specgram(
            wave, NFFT=nfft, Fs=sample_rate, noverlap=nfft * 3 // 4, cmap="magma"
        )
        images.append(image)
        peak = max(peak, 10 * np.log10(max(float(power.max()), 1e-20)))
        bottom.set_xlabel("time (s)")
        for ax in (top, bottom):
            if prefix_seconds > 0 and col == 0:
                ax.axvline(prefix_seconds, color="C3", linestyle="--", linewidth=1)
            ax.tick_params(labelsize=6)
        if col == 0:
            top.set_ylabel("amplitude")
            bottom.set_ylabel("frequency (Hz)")
    for image in images:  # one colour scale (the loudest 80 dB) for every spectrogram
        image.set_clim(peak - 80.0, peak)
    figure.suptitle(title or "audio")
    figure.tight_layout()
    return _save(figure, path)
