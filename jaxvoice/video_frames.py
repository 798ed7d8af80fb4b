"""The pictures of `jaxvoice video`, each drawn once, and every frame composed from them with numpy.

Drawn once per run, with matplotlib: its opening card, a background (titles and tick labels) and each loss
graph as a strip as wide as the run deserves (the linear-step one up to ZOOM frame widths, so it scrolls;
the log-step one one graph wide), twice: with its curves and empty. Once per checkpoint: the header caption
(matplotlib), the waveform in played and unplayed colours and the colour-mapped spectrogram (numpy). A frame
is then array copies: the strips' windows up to the cursor step, the waveform up to the playhead, and the
spectrogram columns of the last second heard (`Frame`); nothing is drawn per frame.

The graphs are `jaxvoice plot`'s: a min..max band and a mean line per pixel column (`plot.bucket_stats`)
where there are more rows than columns, else the plain line, and the val rows as points. The spectrograms
are the report's (`clips.spectrogram_db`, colours over `clips.DB_RANGE`).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from jaxvoice import clips, paths, plot
from jaxvoice.video_runs import Logs

DPI = plot.DPI
CURVE = "#1f77b4"  # the train loss (tests find it by colour)
VAL = "#ff7f0e"
PLAYHEAD_RGB = (214, 39, 40)  # the waveform's "now" (tests find it by colour)
CURSOR_RGB = (90, 90, 90)  # the graphs' "now"
PLAYED_RGB, UNPLAYED_RGB = (31, 119, 180), (190, 208, 228)
TEXT = "0.1"
ZOOM = 4  # the linear-step strip is at most this many graph widths (a step per column at most)
FOLLOW = 0.8  # once the linear strip scrolls, the cursor stays this far across the graph
MAX_STRIP = 16384  # pixels: matplotlib's Agg draws up to 2^16, and wider shows nothing more in a frame


class Box(NamedTuple):
    x: int
    y: int
    w: int
    h: int

    def of(self, frame_HxWx3: np.ndarray) -> np.ndarray:
        return frame_HxWx3[self.y : self.y + self.h, self.x : self.x + self.w]


class Layout(NamedTuple):
    """Where everything goes in a width x height frame; `font` is the text size in pixels."""

    width: int
    height: int
    font: float
    header: Box
    linear: Box  # the linear-step graph: plot_h rows of plot, then its x tick labels
    log: Box
    plot_h: int
    wave: Box
    spec: Box


def layout(width: int, height: int) -> Layout:
    font = max(7.0, height / 40)
    margin = round(max(4.0, 0.015 * width))
    head, title, ylab, xlab = (round(k * font) for k in (2.4, 1.6, 3.4, 1.8))
    half = width // 2

    def pair(top: int, h: int) -> tuple[Box, Box]:
        left = margin + ylab
        right = half + margin // 2 + ylab
        return Box(left, top, half - margin // 2 - left, h), Box(right, top, width - margin - right, h)

    graph_h = round(0.47 * height) - title
    linear, log = pair(head + title, graph_h)
    bottom = head + title + graph_h + title
    wave, spec = pair(bottom, height - margin - bottom)
    return Layout(width, height, font, Box(0, 0, width, head), linear, log, graph_h - xlab, wave, spec)


def _figure(width: int, height: int):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width / DPI, height / DPI), dpi=DPI, facecolor="white")
    FigureCanvasAgg(fig)
    return fig


def _pixels(fig) -> np.ndarray:
    fig.canvas.draw()
    return np.array(np.asarray(fig.canvas.buffer_rgba())[..., :3])


def _pt(pixels: float) -> float:
    return pixels * 72 / DPI


def _text(fig, x: float, y: float, text: str, size: float, **kw) -> None:
    """Text at pixel (x, y) from the top left, `size` in pixels."""
    W, H = fig.bbox.width, fig.bbox.height
    fig.text(x / W, 1 - y / H, paths.shown(text), fontsize=_pt(size), color=kw.pop("color", TEXT), **kw)


# ---- the loss graphs -----------------------------------------------------------------------------------


class YAxis(NamedTuple):
    lo: float
    hi: float
    ticks: list[float]


def y_axis(logs: Logs, plot_h: int, font: float) -> YAxis:
    """The loss range of the whole run (train and val), 4% beyond each end, and its ticks."""
    from matplotlib.ticker import MaxNLocator

    values = np.concatenate([logs.loss, logs.val_loss])
    lo, hi = float(values.min()), float(values.max())
    span = hi - lo if hi > lo else 1.0
    lo, hi = lo - 0.04 * span, hi + 0.04 * span
    ticks = MaxNLocator(nbins=max(2, round(plot_h / (3 * font)))).tick_values(lo, hi)
    return YAxis(lo, hi, [float(t) for t in ticks if lo <= t <= hi])


class Strip(NamedTuple):
    """A loss graph drawn once over the run's whole step range: `data` with the curves, `empty` without."""

    data: np.ndarray  # HxSx3
    empty: np.ndarray
    logx: bool
    lo: float  # x of column 0's left edge (log10 of the step for logx)
    hi: float
    shift: float  # added to steps before the log (steps from 0)

    def column(self, step: float) -> float:
        """The (fractional) column of `step`."""
        x = step + self.shift
        t = math.log10(x) if self.logx else x
        return (t - self.lo) / (self.hi - self.lo) * self.data.shape[1]


def draw_strip(logs: Logs, y: YAxis, columns: int, box_h: int, plot_h: int, font: float, logx: bool) -> Strip:
    """The loss graph `columns` pixels wide: plot area above, x tick labels below."""
    from matplotlib.ticker import EngFormatter, MaxNLocator

    first = min(float(logs.step.min()), float(logs.val_step.min()) if len(logs.val_step) else math.inf)
    last = max(float(logs.step.max()), float(logs.val_step.max()) if len(logs.val_step) else -math.inf)
    shift = 1.0 - first if logx and first <= 0 else 0.0
    to_t, from_t = (np.log10, lambda t: 10.0**t) if logx else (np.asarray, np.asarray)
    lo, hi = float(to_t(first + shift)), float(to_t(last + shift))
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    fig = _figure(columns, box_h)
    ax = fig.add_axes((0, 1 - plot_h / box_h, 1, plot_h / box_h))
    ax.set_xscale("log" if logx else "linear")
    ax.set_xlim(float(from_t(lo)), float(from_t(hi)))
    ax.set_ylim(y.lo, y.hi)
    ax.set_autoscale_on(False)
    ax.set_yticks(y.ticks)
    ax.tick_params(labelleft=False, left=False, labelsize=_pt(0.8 * font), colors=TEXT)
    if not logx:
        ax.xaxis.set_major_locator(
            MaxNLocator(nbins=max(2, round(columns / (7 * font))), steps=[1, 2, 2.5, 5, 10])
        )
        if last >= 1e4:
            ax.xaxis.set_major_formatter(EngFormatter(sep=""))
    ax.grid(True, color="0.88", lw=1)
    for side in ("left", "right", "top"):
        ax.spines[side].set_visible(False)
    ax.spines["bottom"].set_color("0.6")
    empty = _pixels(fig)
    lw = _pt(max(1.5, font / 9))
    x = logs.step + shift
    if len(x) > columns:
        t = to_t(x)
        band = plot.bucket_stats(t, logs.loss, lo, hi, columns)
        xc = from_t(lo + (band.column + 0.5) * (hi - lo) / columns)
        ax.fill_between(xc, band.ymin, band.ymax, color=CURVE, alpha=0.25, lw=0)
        ax.plot(xc, band.ymean, color=CURVE, lw=lw)
    else:
        ax.plot(x, logs.loss, color=CURVE, lw=lw)
    if len(logs.val_step):
        order = np.argsort(logs.val_step, kind="stable")
        ax.plot(logs.val_step[order] + shift, logs.val_loss[order], color=VAL, lw=lw, marker="o",
                markersize=_pt(max(4.0, 0.45 * font)))  # fmt: skip
    return Strip(_pixels(fig), empty, logx, lo, hi, shift)


def linear_columns(logs: Logs, graph_w: int) -> int:
    """The linear strip's width: one graph while the run has fewer rows than that, up to ZOOM graphs."""
    return int(min(MAX_STRIP, max(graph_w, min(ZOOM * graph_w, len(logs.step)))))


# ---- the static pictures ---------------------------------------------------------------------------------


def background(lay: Layout, y: YAxis, rate: int) -> np.ndarray:
    """A run's frame without what moves: the titles of the four panels and their y tick labels."""
    fig = _figure(lay.width, lay.height)
    f = lay.font
    for box, title in ((lay.linear, "loss (nats) by step"), (lay.log, "loss (nats) by step, log scale")):
        top = box.y - 0.8 * f
        _text(fig, box.x, top, title, f, va="center")
        _text(fig, box.x + box.w, top, "val ●", 0.9 * f, va="center", ha="right", color=VAL)
        _text(fig, box.x + box.w - 4 * f, top, "train", 0.9 * f, va="center", ha="right", color=CURVE)
        for v in y.ticks:
            row = box.y + (y.hi - v) / (y.hi - y.lo) * lay.plot_h
            _text(fig, box.x - 0.3 * f, row, f"{v:g}", 0.8 * f, va="center", ha="right")
    wave, spec = lay.wave, lay.spec
    _text(fig, wave.x, wave.y - 0.8 * f, "the sample: waveform, red line = now", f, va="center")
    for v in (1, 0, -1):
        _text(fig, wave.x - 0.3 * f, wave.y + (1 - v) / 2 * (wave.h - 1), f"{v:g}", 0.8 * f, va="center",
              ha="right")  # fmt: skip
    lo, hi = clips.DB_RANGE
    _text(fig, spec.x, spec.y - 0.8 * f, f"the last second heard ({lo:g}..{hi:g} dBFS)", f, va="center")
    for k in (0, rate / 4000, rate / 2000):
        row = spec.y + (1 - k / (rate / 2000)) * (spec.h - 1)
        _text(fig, spec.x - 0.3 * f, row, f"{k:.3g} kHz", 0.8 * f, va="center", ha="right")
    return _pixels(fig)


def caption(lay: Layout, name: str, text: str) -> np.ndarray:
    """The header row: the run's name (or the title) on the left, `text` (step, epoch, val) on the right."""
    fig = _figure(lay.width, lay.header.h)
    f, mid = lay.font, lay.header.h / 2
    _text(fig, 0.6 * f, mid, name, 1.05 * f, va="center", color="0.35")
    _text(fig, lay.width - 0.6 * f, mid, text, 1.2 * f, va="center", ha="right", weight="bold")
    return _pixels(fig)


def card(lay: Layout, name: str, rows: list[tuple[str, str]], title: str | None) -> np.ndarray:
    """A run's opening card: the title (if any), the run's name, and its facts in two columns."""
    fig = _figure(lay.width, lay.height)
    f = lay.font
    size = min(1.15 * f, lay.height / (2.2 * len(rows) + 8))
    top = 0.16 * lay.height
    if title:
        _text(fig, lay.width / 2, top - 2.2 * size, title, 1.3 * size, ha="center", va="center", color="0.4")
    _text(fig, lay.width / 2, top, name, 2 * size, ha="center", va="center", weight="bold")
    for i, (label, value) in enumerate(rows):
        row = top + 2.4 * size + i * 1.75 * size
        _text(fig, 0.36 * lay.width, row, label, size, ha="right", va="center", color="0.4")
        _text(fig, 0.38 * lay.width, row, value, size, ha="left", va="center")
    return _pixels(fig)


# ---- a checkpoint's sample -------------------------------------------------------------------------------


def waveform(x: np.ndarray, box: Box) -> tuple[np.ndarray, np.ndarray]:
    """The sample's outline (min..max per column over [-1, 1]) in the played and the unplayed colours."""
    n = max(len(x), 1)
    if len(x) >= box.w:
        _, lo, hi = clips.min_max_columns(np.asarray(x, np.float32), box.w)
    else:  # fewer samples than columns: each column shows the sample under it
        lo = hi = np.asarray(x, np.float32)[np.arange(box.w) * n // box.w] if len(x) else np.zeros(box.w)
    to_row = lambda v: np.round((1 - np.clip(v, -1, 1)) / 2 * (box.h - 1)).astype(np.int64)
    rows_Hx1 = np.arange(box.h)[:, None]
    inside_HxW = (rows_Hx1 >= to_row(hi)[None, :]) & (rows_Hx1 <= to_row(lo)[None, :])
    inside_HxW[box.h // 2] = True  # the zero line, also where the sample is silent
    pictures = []
    for colour in (PLAYED_RGB, UNPLAYED_RGB):
        picture = np.full((box.h, box.w, 3), 255, np.uint8)
        picture[inside_HxW] = colour
        pictures.append(picture)
    return pictures[0], pictures[1]


def _magma() -> np.ndarray:
    from matplotlib import colormaps

    return np.round(colormaps["magma"](np.linspace(0, 1, 256))[:, :3] * 255).astype(np.uint8)


class Spectrogram(NamedTuple):
    """A sample's spectrogram coloured once at the box's height: column j is STFT frame j; the last column
    is the colour of silence, shown where no sound has been heard yet."""

    image_HxTx3: np.ndarray
    rate: int
    n_fft: int
    hop: int


def spectrogram(x: np.ndarray, rate: int, box: Box) -> Spectrogram:
    db_FxT, n_fft, hop = clips.spectrogram_db(x, rate)
    lo, hi = clips.DB_RANGE
    level_FxT = np.clip(np.round((db_FxT - lo) / (hi - lo) * 255), 0, 255).astype(np.uint8)
    level_FxT = np.concatenate([level_FxT, np.zeros((len(level_FxT), 1), np.uint8)], axis=1)
    bins_H = ((box.h - 1 - np.arange(box.h) + 0.5) / box.h * len(db_FxT)).astype(np.int64)  # top: highest
    return Spectrogram(_magma()[level_FxT[bins_H]], rate, n_fft, hop)


# ---- a frame -------------------------------------------------------------------------------------------------


class Frame:
    """The frame being composed, in place: `start` pastes a picture that stays (a card, or a background with
    its caption), `draw` the moving parts at a moment of a checkpoint's sample."""

    def __init__(self, lay: Layout, rgb_HxWx3: np.ndarray | None = None):
        """`rgb_HxWx3`: where to compose (e.g. the encoder's own frame, so nothing is copied), else new."""
        self.lay = lay
        self.rgb_HxWx3 = np.empty((lay.height, lay.width, 3), np.uint8) if rgb_HxWx3 is None else rgb_HxWx3
        self.rgb_HxWx3[:] = 255
        self._x_W = (np.arange(lay.spec.w) + 0.5) / lay.spec.w - 1.0  # seconds before now, per column

    def start(self, picture: np.ndarray, header: np.ndarray | None = None) -> None:
        np.copyto(self.rgb_HxWx3, picture)
        if header is not None:
            self.lay.header.of(self.rgb_HxWx3)[:] = header

    def draw(self, cursor_step: float, strips: tuple[Strip, Strip], wave: tuple, spec: Spectrogram,
             t: float, seconds: float) -> None:  # fmt: skip
        """The graphs up to `cursor_step`, the playhead at `t` of the sample's `seconds`, the last second."""
        for strip, box in zip(strips, (self.lay.linear, self.lay.log), strict=True):
            self._graph(strip, box, strip.column(cursor_step))
        view = self.lay.wave.of(self.rgb_HxWx3)
        played, unplayed = wave
        w = view.shape[1]
        head = min(w - 1, int(t / seconds * w)) if seconds > 0 else 0
        view[:] = unplayed
        view[:, :head] = played[:, :head]
        view[:, max(0, head - 1) : head + 1] = PLAYHEAD_RGB
        frames = spec.image_HxTx3.shape[1] - 1
        tau = t + self._x_W
        j = np.round((tau * spec.rate - spec.n_fft / 2) / spec.hop).astype(np.int64)
        j[(tau < 0) | (j < 0) | (j >= frames)] = frames
        self.lay.spec.of(self.rgb_HxWx3)[:] = spec.image_HxTx3[:, j]

    def _graph(self, strip: Strip, box: Box, column: float) -> None:
        view = box.of(self.rgb_HxWx3)
        S = strip.data.shape[1]
        x0 = 0 if box.w >= S else int(np.clip(round(column - FOLLOW * box.w), 0, S - box.w))
        w = min(box.w, S)
        view[:, :w] = strip.empty[:, x0 : x0 + w]
        shown = int(np.clip(math.floor(column) + 1 - x0, 0, w))
        view[:, :shown] = strip.data[:, x0 : x0 + shown]
        if shown:
            view[: self.lay.plot_h, shown - 1] = CURSOR_RGB
