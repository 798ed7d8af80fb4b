"""Fast line graphs of big CSV logs: one bucket per pixel column, drawn as a min..max band and a mean line.

A million-row loss log drawn as a raw line is a solid smear. Here the rows are first grouped by the pixel
column their x falls in (vectorised: `np.minimum.reduceat` and friends on sorted bucket indices), and each
series is drawn as a translucent band from the bucket's minimum to its maximum plus a line through the
bucket means, so both the noise and the trend stay visible. A series with no more rows than the axes has
pixel columns is drawn as its plain line; few rows (validation) get a marker per row.

- `--smooth N` is a centred moving average over N rows, applied to the rows *before* bucketing; the band
  still shows the raw rows' min..max, the line the bucket means of the smoothed values.
- Log x plots `x + shift` with shift = 1 - min(x) when some x <= 0 (step 0 -> 1), else shift 0; the axis
  label then says e.g. "step + 1 (log scale)".
- The figure is matplotlib (Agg, no pyplot) at DPI = 128, a power of two, so width/DPI * DPI is exact and
  the PNG has exactly the requested pixels; the axes are placed with fixed pixel margins, so bucket b is
  pixel column b of the axes. PNGs are written atomically (files.replacing: temp file + rename).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from jaxvoice import csvlog, files, paths
from jaxvoice.errors import UserError

if TYPE_CHECKING:
    from matplotlib.figure import Figure

# matplotlib is imported where it is used (~0.4 s): a bad path or an empty CSV is reported before that.

DPI = 128
SIZE_RANGE = (100, 16383)  # pixels, for width and height
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf")


class Series(NamedTuple):
    """One line of the plot. points: a marker per row (True), never (False), or when rows are few (None)."""

    label: str
    x: np.ndarray
    y: np.ndarray
    points: bool | None = None


class Buckets(NamedTuple):
    """Per non-empty pixel column: its index, and the min, max, mean and count of the y values in it."""

    column: np.ndarray
    ymin: np.ndarray
    ymax: np.ndarray
    ymean: np.ndarray
    count: np.ndarray


class Plotted(NamedTuple):
    """What plot_csvs / plot_run wrote, and what they left out (for the command's warning)."""

    paths: list[Path]
    rows: int  # data rows drawn, over all files
    skipped: dict[str, int]  # file -> bad rows skipped (non-numeric, wrong field count, NaN/inf)
    nonpositive: int  # rows left out of a log y axis because y <= 0


def bucket_stats(t: np.ndarray, y: np.ndarray, lo: float, hi: float, n: int) -> Buckets:
    """Group rows into n equal buckets of [lo, hi] by t (row i goes to floor((t_i - lo) * n / (hi - lo)),
    clipped to 0..n-1, so t == hi lands in the last bucket) and reduce y per bucket; empty buckets are
    left out. Vectorised: one stable argsort if t is not already in order, then reduceat."""
    b = ((np.asarray(t, np.float64) - lo) * n / (hi - lo)).astype(np.int64)
    np.clip(b, 0, n - 1, out=b)
    y = np.asarray(y, np.float64)
    if len(b) > 1 and np.any(b[1:] < b[:-1]):
        order = np.argsort(b, kind="stable")
        b, y = b[order], y[order]
    starts = np.flatnonzero(np.concatenate(([True], b[1:] != b[:-1])))
    count = np.diff(np.append(starts, len(b)))
    return Buckets(
        b[starts], np.minimum.reduceat(y, starts), np.maximum.reduceat(y, starts),
        np.add.reduceat(y, starts) / count, count,
    )  # fmt: skip


def moving_average(y: np.ndarray, n: int) -> np.ndarray:
    """Centred moving average over n rows (window i - (n-1)//2 .. i + n//2); shorter windows at the ends."""
    y = np.asarray(y, np.float64)
    if n <= 1 or len(y) < 2:
        return y.copy()
    n = min(n, 2 * len(y) + 1)  # any longer window covers every row at every i (and would overflow int64)
    c = np.concatenate(([0.0], np.cumsum(y)))
    first = np.arange(len(y)) - (n - 1) // 2
    lo, hi = np.clip(first, 0, len(y)), np.clip(first + n, 0, len(y))
    return (c[hi] - c[lo]) / (hi - lo)


def check_options(width: int, height: int, colors: Sequence[str] | None, background: str, smooth: int):
    """UserError for an impossible size, an unknown colour or a bad smoothing window."""
    lo, hi = SIZE_RANGE
    for name, v in (("width", width), ("height", height)):
        if not lo <= v <= hi:
            raise UserError(f"--{name} {v} is out of range; give {lo}..{hi} pixels")
    given = [*(colors or []), *([background] if background != "white" else [])]
    if given:  # (matplotlib.colors takes ~0.1 s to import: not for the defaults)
        from matplotlib.colors import is_color_like

        for c in given:
            if not is_color_like(c):
                raise UserError(
                    f"{c!r} is not a colour; use a name (red), hex (#1f77b4) or grey level ('0.8')"
                )
    if smooth < 1:
        raise UserError(f"--smooth {smooth} must be a window of at least 1 row (1 = no smoothing)")


def make_figure(
    series: Sequence[Series], *, width: int = 2000, height: int = 1000, logx: bool = False,
    logy: bool = False, colors: Sequence[str] | None = None, background: str = "white",
    title: str | None = None, xlabel: str = "step", ylabel: str = "loss", smooth: int = 1,
) -> Figure:  # fmt: skip
    """Draw `series` into a new Agg figure of exactly width x height pixels (nothing is written).

    With logy, rows with y <= 0 must already be gone (plot_csvs drops and counts them).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    check_options(width, height, colors, background, smooth)
    series = [s._replace(label=paths.shown(s.label)) for s in series if len(s.x)]
    title, xlabel, ylabel = (None if t is None else paths.shown(t) for t in (title, xlabel, ylabel))
    if not series:
        raise UserError("nothing to plot: no rows left in any series")
    fig = Figure(figsize=(width / DPI, height / DPI), dpi=DPI, facecolor=background)
    FigureCanvasAgg(fig)
    fs = float(np.clip(min(width, height) / 50, 9, 28))  # font size in pixels
    pt = 72 / DPI  # points per pixel
    has_title = bool(title)
    left, right = min(7.0 * fs, 0.3 * width), min(2.2 * fs, 0.1 * width)
    bottom, top = min(4.3 * fs, 0.3 * height), min((2.6 if has_title else 1.2) * fs, 0.2 * height)
    left, right, bottom, top = (round(v) for v in (left, right, bottom, top))
    ax = fig.add_axes(
        (left / width, bottom / height, 1 - (left + right) / width, 1 - (bottom + top) / height)
    )
    n_px = max(1, round(ax.bbox.width))

    xmin = min(float(s.x.min()) for s in series)
    xmax = max(float(s.x.max()) for s in series)
    shift = 1.0 - xmin if logx and xmin <= 0 else 0.0  # plotted x = x + shift
    to_t, from_t = (np.log10, lambda t: 10.0**t) if logx else (np.asarray, np.asarray)
    lo, hi = float(to_t(xmin + shift)), float(to_t(xmax + shift))
    if hi <= lo:  # one x value: give it some room
        lo, hi = lo - 0.5, hi + 0.5
    ax.set_xscale("log" if logx else "linear")
    ax.set_yscale("log" if logy else "linear")

    palette = list(colors) if colors else list(PALETTE)
    lw = max(1.5, fs / 9) * pt  # ~2 px at 18 px text
    for i, s in enumerate(series):
        color = palette[i % len(palette)]
        x, y = np.asarray(s.x, np.float64) + shift, np.asarray(s.y, np.float64)
        ys = moving_average(y, smooth) if smooth > 1 else y
        if len(x) > n_px:
            t = to_t(x)
            band = bucket_stats(t, y, lo, hi, n_px)
            mean = bucket_stats(t, ys, lo, hi, n_px).ymean if smooth > 1 else band.ymean
            xc = from_t(lo + (band.column + 0.5) * (hi - lo) / n_px)
            ax.fill_between(xc, band.ymin, band.ymax, color=color, alpha=0.25, lw=0, zorder=1)
            ax.plot(xc, mean, color=color, lw=lw, label=s.label, zorder=2)
            continue
        order = np.argsort(x, kind="stable")
        x, y, ys = x[order], y[order], ys[order]
        points = s.points if s.points is not None else len(x) <= n_px // 8
        if smooth > 1:
            ax.plot(x, y, color=color, lw=lw * 0.6, alpha=0.35, zorder=1)
        ax.plot(
            x, ys, color=color, lw=lw, label=s.label, zorder=3 if points else 2,
            marker="o" if points else None, markersize=max(4.0, 0.45 * fs) * pt,
        )  # fmt: skip

    ax.set_xlim(float(from_t(lo)), float(from_t(hi)))
    ax.margins(y=0.04)
    fg = _style(ax, fs * pt, background, logx, logy, xmax + shift, x_ticks=max(3, round(n_px / (10 * fs))))
    xtext = f"{xlabel} + {shift:g}" if shift else xlabel
    ax.set_xlabel(f"{xtext} (log scale)" if logx else xtext, fontsize=fs * pt, color=fg)
    ax.set_ylabel(f"{ylabel} (log scale)" if logy else ylabel, fontsize=fs * pt, color=fg)
    if has_title:
        ax.set_title(title, fontsize=1.2 * fs * pt, pad=0.5 * fs * pt, color=fg)
    ax.legend(loc="upper right", fontsize=fs * pt, framealpha=0.85, facecolor=background, labelcolor=fg)
    return fig


def _style(ax, size: float, background: str, logx: bool, logy: bool, xmax: float, x_ticks: int) -> str:
    """Readable ticks (on a linear x axis about one per 10 characters, so a wide image still has them
    close enough to read values off) and a faint grid; returns the text colour (light on dark)."""
    from matplotlib.colors import to_rgb
    from matplotlib.ticker import EngFormatter, MaxNLocator

    r, g, b = to_rgb(background)
    fg = "0.9" if 0.2126 * r + 0.7152 * g + 0.0722 * b < 0.5 else "0.1"
    ax.set_facecolor(background)
    ax.tick_params(which="both", labelsize=size, colors=fg)
    ax.tick_params(which="major", length=size / 2, width=max(1.0, size / 14))
    for spine in ax.spines.values():
        spine.set_color(fg)
    ax.grid(True, which="major", color=fg, alpha=0.15, lw=max(0.5, size / 20))
    if not logx:
        ax.xaxis.set_major_locator(MaxNLocator(nbins=x_ticks, steps=[1, 2, 2.5, 5, 10]))
        if abs(xmax) >= 1e4:
            ax.xaxis.set_major_formatter(EngFormatter(sep=""))  # 250k, 1M instead of 1e6 offsets
    if logy:  # 0.3, 2, 4 rather than 3 x 10^-1 ...: loss axes span few decades
        ax.yaxis.set_major_formatter(_plain_log_formatter())
        ax.yaxis.set_minor_formatter(_plain_log_formatter(labelOnlyBase=False, minor_thresholds=(2, 0.5)))
    else:
        ax.ticklabel_format(axis="y", useOffset=False)
    return fg


def _plain_log_formatter(**kwargs):
    """matplotlib's choice of which log ticks to label, written as plain numbers (0.3, 2, 1e+05)."""
    from matplotlib.ticker import LogFormatter

    class PlainLogFormatter(LogFormatter):
        def __call__(self, x, pos=None):
            return f"{x:.3g}" if super().__call__(x, pos) else ""

    return PlainLogFormatter(**kwargs)


def check_output(path: str | Path) -> Path:
    """UserError unless `path` can be a PNG we write: a .png name that is not a folder, device or FIFO, and
    not below a file (missing folders above it are made when it is written)."""
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise UserError(f"{path}: the output must be a .png file; name it e.g. {path.with_suffix('.png')}")
    if path.is_dir():
        raise UserError(f"{path} is a directory; give a file name such as {path / 'loss.png'}")
    return paths.check_output_file(path, force=True)


def save_png(fig: Figure, path: str | Path) -> Path:
    """Draw `fig` and write it as a PNG at `path` atomically: a failed write never leaves a broken PNG, and
    folders made for it are removed again."""
    path = check_output(path)
    from matplotlib import image

    fig.canvas.draw()
    made = files.missing_parents(path)
    try:
        files.make_parents(path)
        with files.replacing(path) as tmp, open(tmp, "xb") as f:
            # The drawn buffer, encoded by matplotlib (Pillow) at zlib level 1: no second draw, and the
            # default level 6 took seconds on a 16383-pixel-wide plot for a file only slightly smaller.
            image.imsave(
                f, np.asarray(fig.canvas.buffer_rgba()), format="png", pil_kwargs={"compress_level": 1}
            )
    except OSError as e:
        files.remove_made(made)
        raise UserError(
            f"cannot write {path}: {e.strerror or e}; check the directory's permissions and free space"
        ) from None
    return path


def _check_style(style: dict) -> None:
    """check_options on plot_csvs/plot_run keywords, before any file is read."""
    keys = ("width", "height", "colors", "background", "smooth")
    defaults = dict(width=2000, height=1000, colors=None, background="white", smooth=1)
    check_options(*(style.get(k, defaults[k]) for k in keys))


def _names(paths: Sequence[Path]) -> list[str]:
    """The shortest trailing parts of the paths that tell them apart (runs/a/train.csv -> a/train.csv)."""
    parts = [p.parts for p in paths]
    for k in range(1, max(len(p) for p in parts) + 1):
        names = ["/".join(p[-k:]) for p in parts]
        if len(set(names)) == len(names):
            return names
    return [str(p) for p in paths]


def _for_logy(series: list[Series]) -> tuple[list[Series], int]:
    """Drop the rows with y <= 0 (no place on a log axis); returns the series and how many rows went."""
    kept, dropped = [], 0
    for s in series:
        keep = s.y > 0
        dropped += int(len(keep) - np.count_nonzero(keep))
        kept.append(s._replace(x=s.x[keep], y=s.y[keep]))
    if not any(len(s.x) for s in kept):
        raise UserError(f"all {dropped:,} rows have y <= 0, which a log y axis cannot show; drop --logy")
    return kept, dropped


def plot_csvs(
    paths: Sequence[str | Path], out: str | Path, *, x: str = "step", y: Sequence[str] = ("loss",),
    title: str | None = None, **style,
) -> Plotted:  # fmt: skip
    """Plot columns `y` against `x` of each CSV (one series per file and column) into the PNG `out`."""
    paths = [Path(p) for p in paths]
    if not paths:
        raise UserError("no CSV given; name one or more CSV logs, or use --run RUN_DIR")
    _check_style(style)
    check_output(out)  # before reading what may be a big file
    names = _names(paths)
    series, skipped, rows, nonpos = [], {}, 0, 0
    for path, name in zip(paths, names, strict=True):
        data, n_skipped = csvlog.read_columns(path, [x, *y])
        skipped[str(path)] = n_skipped
        rows += len(data[x])
        for col in y:
            label = col if len(paths) == 1 else name if len(y) == 1 else f"{name}: {col}"
            series.append(Series(label, data[x], data[col]))
    if style.get("logy"):
        series, nonpos = _for_logy(series)
    if title is None and len(paths) == 1:
        title = str(paths[0])
    ylabel = y[0] if len(y) == 1 else "value"
    fig = make_figure(series, xlabel=x, ylabel=ylabel, title=title, **style)
    return Plotted([save_png(fig, out)], rows, skipped, nonpos)


def plot_run(run_dir: str | Path, *, title: str | None = None, **style) -> Plotted:
    """Draw a run's train and val loss against step, linear and log step axis, into RUN/plots/."""
    run = Path(run_dir)
    if not run.is_dir():
        raise UserError(f"{run} is not a directory; give a run directory such as runs/NAME")
    train_csv, val_csv = run / "train.csv", run / "val.csv"
    if not train_csv.is_file():
        raise UserError(f"{run} has no train.csv; is it a run directory (runs/NAME) with a started run?")
    _check_style(style)
    train, n_skipped = csvlog.read_columns(train_csv, ["step", "loss"])
    series = [Series("train loss", train["step"], train["loss"])]
    skipped, rows = {str(train_csv): n_skipped}, len(train["step"])
    if val_csv.is_file():
        try:
            val, n_val_skipped = csvlog.read_columns(val_csv, ["step", "val_loss"])
        except csvlog.NoRowsError as e:  # no evaluation yet, or only bad rows: the train plot still helps
            skipped[str(val_csv)] = e.n_skipped
        else:
            series.append(Series("val loss", val["step"], val["val_loss"], points=True))
            skipped[str(val_csv)], rows = n_val_skipped, rows + len(val["step"])
    nonpos = 0
    if style.get("logy"):
        series, nonpos = _for_logy(series)
    plots = run / "plots"  # made by save_png (and removed again if nothing could be written)
    title = title if title is not None else f"{run.resolve().name}: loss"
    written = []
    for logx, name in ((False, "loss.png"), (True, "loss_logx.png")):
        fig = make_figure(series, logx=logx, xlabel="step", ylabel="loss (nats)", title=title, **style)
        written.append(save_png(fig, plots / name))
    return Plotted(written, rows, skipped, nonpos)
