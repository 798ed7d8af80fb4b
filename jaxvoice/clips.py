"""Pictures of audio clips: a waveform over a spectrogram, the same analysis everywhere (report, video).

Every spectrogram uses the same analysis (a Hann window of ~46 ms, 75% overlap), the same level reference
(0 dBFS = a full-scale sine) and the same colour range DB_RANGE, and every waveform the same [-1, 1]
axis, so the images compare directly. matplotlib draws them (Agg, no display); nothing here imports JAX.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from jaxvoice import audio, codec, paths, plot

DB_RANGE = (-90.0, 0.0)  # dBFS, the colour scale of every spectrogram
IMAGE_SIZE = (1000, 330)  # pixels


def order0_bits(symbols) -> float:
    """Entropy in bits/sample of the symbols' own histogram: the best any model without context can do."""
    counts = np.bincount(np.asarray(symbols, np.uint8).ravel(), minlength=codec.NUM_SYMBOLS)
    if counts.sum() == 0:
        return float("nan")
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log2(p)).sum())


def read_head(path: Path, seconds: float) -> tuple[np.ndarray, int, float]:
    """The first `seconds` of an audio file as float32 mono, its rate and its full length in seconds."""
    info = audio.probe(path)
    blocks, have = [], 0
    want = int(seconds * info.rate)
    for block in audio.stream_mono(path, info.rate):
        blocks.append(block)
        have += len(block)
        if have >= want:
            break
    return np.concatenate(blocks)[:want], info.rate, info.seconds


def spectrogram_db(x: np.ndarray, rate: int) -> tuple[np.ndarray, int, int]:
    """|STFT| in dBFS (a full-scale sine peaks at 0 dB), frequency x frame; returns (db_FxT, n_fft, hop)."""
    n_fft = 1 << max(6, round(math.log2(0.046 * rate)))  # ~46 ms: 512 at 11025 Hz
    hop = n_fft // 4
    x = np.asarray(x, np.float64)
    if len(x) < n_fft:
        x = np.pad(x, (0, n_fft - len(x)))
    window = np.hanning(n_fft)
    frames_TxN = np.lib.stride_tricks.sliding_window_view(x, n_fft)[::hop] * window
    magnitude = np.abs(np.fft.rfft(frames_TxN, axis=-1)) / (window.sum() / 2)
    return 20.0 * np.log10(np.maximum(magnitude, 1e-10)).T, n_fft, hop


def min_max_columns(x: np.ndarray, columns: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per pixel column, the min and max of the samples in it (a waveform's outline at any length)."""
    columns = max(1, min(columns, len(x)))
    starts = np.linspace(0, len(x), columns, endpoint=False).astype(np.int64)
    return starts, np.minimum.reduceat(x, starts), np.maximum.reduceat(x, starts)


def clip_figure(x: np.ndarray, rate: int, title: str):
    """A matplotlib Figure (Agg) of the waveform over the spectrogram of mono audio `x` at `rate`."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    width, height = IMAGE_SIZE
    dpi = 100
    fig = Figure(figsize=(width / dpi, height / dpi), dpi=dpi, facecolor="white")
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(2, 2, height_ratios=(1, 3), width_ratios=(60, 1), left=0.065, right=0.93,
                            top=0.9, bottom=0.13, hspace=0.08, wspace=0.02)  # fmt: skip
    wave, spec, bar = fig.add_subplot(grid[0, 0]), fig.add_subplot(grid[1, 0]), fig.add_subplot(grid[1, 1])
    seconds = max(len(x), 1) / rate
    starts, lo, hi = min_max_columns(np.asarray(x, np.float32), 2 * width)
    wave.fill_between(starts / rate, lo, hi, color="#1f77b4", lw=0.6, step="post")
    wave.set(xlim=(0, seconds), ylim=(-1, 1), yticks=[-1, 0, 1])
    wave.tick_params(labelbottom=False, labelsize=8)
    wave.set_title(title, fontsize=10, loc="left")
    db_FxT, n_fft, hop = spectrogram_db(x, rate)
    image = spec.imshow(
        db_FxT, origin="lower", aspect="auto", cmap="magma", vmin=DB_RANGE[0], vmax=DB_RANGE[1],
        extent=(0, ((db_FxT.shape[1] - 1) * hop + n_fft) / rate, 0, rate / 2000), interpolation="nearest",
    )  # fmt: skip
    spec.set_xlim(0, seconds)
    spec.set_xlabel("seconds", fontsize=9)
    spec.set_ylabel("kHz", fontsize=9)
    spec.tick_params(labelsize=8)
    colorbar = fig.colorbar(image, cax=bar)
    colorbar.set_label("dBFS", fontsize=8)
    colorbar.ax.tick_params(labelsize=7)
    return fig


def draw_clip(x: np.ndarray, rate: int, out: Path, title: str) -> Path:
    """clip_figure into the PNG `out`, written atomically."""
    return plot.save_png(clip_figure(x, rate, paths.shown(title)), out)
