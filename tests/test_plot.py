"""plot.py + csvlog.py + `jaxvoice plot`: aggregation against brute force, exact pixels, bad inputs."""

from __future__ import annotations

import math
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from conftest import assert_user_error, run_jaxvoice
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from jaxvoice import csvlog, files, plot
from jaxvoice.errors import UserError

TRAIN_HEADER = "step,epoch,loss,bits,lr,grad_norm,tokens_per_s,wall_s"


def png_pixels(path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def write_train_csv(path, n: int, seed: int = 0, tail: str = "") -> np.ndarray:
    """A train.csv as the training code writes it (floats with repr); returns the loss column."""
    rng = np.random.default_rng(seed)
    loss = (5.5 * np.exp(-np.arange(n) / (n / 4)) + 1.0 + 0.2 * rng.random(n)).tolist()
    rows = [
        f"{i},{i // 1000},{v!r},{v / math.log(2)!r},0.002,{1 + v / 10!r},5000.5,{i * 0.1!r}"
        for i, v in enumerate(loss)
    ]
    path.write_text(TRAIN_HEADER + "\n" + "\n".join(rows) + "\n" + tail)
    return np.array(loss)


# ---------------------------------------------------------------- aggregation


def brute_force_buckets(t, y, lo, hi, n):
    """Per bucket, by a loop over buckets: the rows whose floor((t - lo) * n / (hi - lo)) (clipped) is b."""
    index = [min(n - 1, max(0, math.floor((ti - lo) * n / (hi - lo)))) for ti in t]
    out = []
    for b in range(n):
        ys = [yi for yi, bi in zip(y, index, strict=True) if bi == b]
        if ys:
            out.append((b, min(ys), max(ys), sum(ys) / len(ys), len(ys)))
    return [np.array(col) for col in zip(*out, strict=True)]


@pytest.mark.parametrize(
    "n_rows, n_buckets, ordered",
    [(1, 7, True), (5, 40, True), (37, 40, True), (1000, 7, True), (1000, 333, False), (999, 1000, False),
     (4096, 97, True), (3000, 128, False)],
)  # fmt: skip
def test_bucket_stats_equals_brute_force(n_rows, n_buckets, ordered):
    rng = np.random.default_rng(n_rows * 7919 + n_buckets)
    t = np.sort(rng.uniform(0, 1000, n_rows)) if ordered else rng.uniform(0, 1000, n_rows)
    t[rng.random(n_rows) < 0.1] = 250.0  # repeated x values (a resumed run re-logs steps)
    y = rng.normal(size=n_rows) * 10
    lo, hi = float(t.min()) - 3.0, float(t.max())  # t == hi must land in the last bucket
    got = plot.bucket_stats(t, y, lo, hi, n_buckets)
    want = brute_force_buckets(t, y, lo, hi, n_buckets)
    np.testing.assert_array_equal(got.column, want[0])
    np.testing.assert_array_equal(got.ymin, want[1])
    np.testing.assert_array_equal(got.ymax, want[2])
    np.testing.assert_allclose(got.ymean, want[3], rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(got.count, want[4])
    assert got.count.sum() == n_rows


def test_bucket_stats_integer_steps_uneven_buckets():
    t = np.arange(10.0)  # 10 rows into 4 buckets of width 2.5: 3, 2, 3, 2 rows (9 is hi -> last bucket)
    got = plot.bucket_stats(t, t * 10, 0.0, 10.0, 4)
    np.testing.assert_array_equal(got.count, [3, 2, 3, 2])
    np.testing.assert_array_equal(got.ymin, [0, 30, 50, 80])
    np.testing.assert_array_equal(got.ymax, [20, 40, 70, 90])
    np.testing.assert_array_equal(got.ymean, [10, 35, 60, 85])


@pytest.mark.parametrize(
    "n_rows, window",
    [(1, 5), (10, 1), (10, 3), (10, 4), (10, 19), (10, 20), (10, 21), (10, 10**20), (50, 50), (50, 200), (997, 64)],
)  # fmt: skip
def test_moving_average_equals_brute_force(n_rows, window):
    y = np.random.default_rng(n_rows).normal(size=n_rows)
    got = plot.moving_average(y, window)
    want = []
    for i in range(n_rows):
        lo = max(0, i - (window - 1) // 2)
        hi = min(n_rows, i - (window - 1) // 2 + window)
        want.append(sum(y[lo:hi]) / (hi - lo))
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)


# ---------------------------------------------------------------- csvlog


@pytest.mark.parametrize("block_bytes", [csvlog.BLOCK_BYTES, 5, 64])
def test_read_columns_is_exact_and_skips_only_bad_rows(tmp_path, monkeypatch, block_bytes):
    monkeypatch.setattr(csvlog, "BLOCK_BYTES", block_bytes)
    path = tmp_path / "train.csv"
    loss = write_train_csv(path, 300, tail="300,0,2.5,3.6")  # a last line still being written
    data, skipped = csvlog.read_columns(path, ["step", "loss"])
    assert skipped == 0
    np.testing.assert_array_equal(data["step"], np.arange(300))
    np.testing.assert_array_equal(data["loss"], loss)  # repr -> float is bit exact
    assert data["loss"].dtype == np.float64


@pytest.mark.parametrize("chunk_lines, block_bytes", [(csvlog.CHUNK_LINES, csvlog.BLOCK_BYTES), (3, 7)])
def test_read_columns_bad_rows(tmp_path, monkeypatch, chunk_lines, block_bytes):
    # small: bad rows in several slow-path chunks, lines spanning the structure scan's blocks
    monkeypatch.setattr(csvlog, "CHUNK_LINES", chunk_lines)
    monkeypatch.setattr(csvlog, "BLOCK_BYTES", block_bytes)
    lines = ["step, loss ,other"]  # spaces around names are fine
    want = []
    for i in range(40):
        lines.append(f"{i},{i / 4!r},{i}")
        want.append((i, i / 4))
    bad = [
        "x,1,2", "3,nan,4", "4,inf,4", "5,-inf,5", "6,1.5", "7,1.5,2,9",  # text, NaN/inf, wrong widths
        "8,1.5,2" + "9,0.5,1", "1_0,2,3", "11,0x10,3", "#12,1,2", "13,,3",  # torn row, odd numbers
    ]  # fmt: skip
    for k, line in enumerate(bad):
        lines.insert(3 + 4 * k, line)
    lines.insert(7, "")  # blank lines are not rows and not counted
    text = "\r\n".join(lines) + "\r\n" + "99,9"  # CRLF, and a partial last line
    (tmp_path / "a.csv").write_text(text)
    data, skipped = csvlog.read_columns(tmp_path / "a.csv", ["step", "loss"])
    assert skipped == len(bad)
    np.testing.assert_array_equal(data["step"], [w[0] for w in want])
    np.testing.assert_array_equal(data["loss"], [w[1] for w in want])
    _, skipped_keep_nan = csvlog.read_columns(tmp_path / "a.csv", ["step", "loss"], drop_nonfinite=False)
    assert skipped_keep_nan == len(bad) - 3


BAD_LINES = ["x,1.5", "3,nan", "4,-inf", "5", "6,1,2", "7,", ",7", "8,1.5e", "9,1_0", "", "\r"]


@settings(max_examples=60, deadline=None)
@given(
    rows=st.lists(
        st.tuples(st.integers(-(10**9), 10**9), st.floats(allow_nan=False, allow_infinity=False)),
        max_size=60,
    ),
    bad=st.lists(st.tuples(st.integers(0, 60), st.sampled_from(BAD_LINES)), max_size=8),
    chunk_lines=st.integers(1, 9),
    block_bytes=st.integers(1, 50),
    partial=st.sampled_from(["", "1", "12,3.5", "12,3.5\r"]),
)
def test_read_columns_keeps_exactly_the_good_rows(rows, bad, chunk_lines, block_bytes, partial):
    lines = [f"{s},{v!r}" for s, v in rows]
    good = [True] * len(lines)
    for at, line in sorted(bad, reverse=True):
        at = min(at, len(lines))
        lines.insert(at, line)
        good.insert(at, None if line.strip() == "" else False)  # None: blank, neither row nor skipped
    if not any(good):
        return
    with tempfile.TemporaryDirectory() as tmp, pytest.MonkeyPatch.context() as mp:
        mp.setattr(csvlog, "CHUNK_LINES", chunk_lines)
        mp.setattr(csvlog, "BLOCK_BYTES", block_bytes)
        path = Path(tmp) / "log.csv"
        path.write_text("step,value\n" + "".join(f"{line}\n" for line in lines) + partial)
        data, skipped = csvlog.read_columns(path, ["step", "value"])
    assert skipped == good.count(False)
    np.testing.assert_array_equal(data["step"], [s for s, _ in rows])
    np.testing.assert_array_equal(data["value"], [v for _, v in rows])


def test_read_columns_errors(tmp_path):
    (tmp_path / "empty.csv").write_text("")
    (tmp_path / "header.csv").write_text("step,loss\n")
    (tmp_path / "partial.csv").write_text("step,loss\n0,1.5")
    (tmp_path / "ok.csv").write_text("step,loss\n0,1.5\n")
    (tmp_path / "allbad.csv").write_text("step,loss\nnan,1\n2,x\n")
    with pytest.raises(UserError, match="empty"):
        csvlog.read_columns(tmp_path / "empty.csv", ["step"])
    for name in ("header.csv", "partial.csv", "allbad.csv"):
        with pytest.raises(csvlog.NoRowsError):
            csvlog.read_columns(tmp_path / name, ["step", "loss"])
    with pytest.raises(UserError, match=r"no column 'bits'.*step, loss"):
        csvlog.read_columns(tmp_path / "ok.csv", ["step", "bits"])
    with pytest.raises(UserError, match="no such file"):
        csvlog.read_columns(tmp_path / "nope.csv", ["step"])
    with pytest.raises(UserError, match="directory"):
        csvlog.read_columns(tmp_path, ["step"])


# ---------------------------------------------------------------- pixels


@pytest.mark.parametrize("width, height", [(100, 100), (113, 201), (2000, 1000), (16383, 100), (101, 16383)])
def test_png_has_exactly_the_requested_size(tmp_path, width, height):
    x = np.arange(5000.0)
    fig = plot.make_figure([plot.Series("loss", x, np.sin(x / 300))], width=width, height=height, title="t")
    out = plot.save_png(fig, tmp_path / "p.png")
    with Image.open(out) as im:
        assert im.size == (width, height)


def red_columns(pixels: np.ndarray, row: int) -> np.ndarray:
    """Columns where rows row-1..row+1 hold the opaque red line (not the pale translucent band)."""
    band = pixels[max(row - 1, 0) : row + 2].astype(int)
    red = (band[..., 0] > 200) & (band[..., 1] < 90) & (band[..., 2] < 90)
    return np.flatnonzero(red.any(axis=0))


@pytest.mark.parametrize("logx", [False, True])
def test_step_function_lands_on_the_right_pixel_column(tmp_path, logx):
    # y jumps from 0 to 1 at x = 5000 (linear) / step + 1 = 1000 (log x): many rows per pixel column.
    x = np.arange(100_000.0)
    edge = 999.0 if logx else 5000.0
    y = (x >= edge).astype(float)
    fig = plot.make_figure([plot.Series("s", x, y)], width=1200, height=600, logx=logx, colors=["#ff0000"])
    out = plot.save_png(fig, tmp_path / "step.png")
    pixels = png_pixels(out)
    height = pixels.shape[0]
    ax = fig.axes[0]
    plotted_edge = edge + 1 if logx else edge
    (x_edge, y0), (_, y1) = ax.transData.transform([(plotted_edge, 0.0), (plotted_edge, 1.0)])
    legend_left = ax.get_legend().get_window_extent(fig.canvas.get_renderer()).x0
    row0, row1 = int(height - y0), int(height - y1)  # PNG rows count from the top
    at_1 = red_columns(pixels, row1)
    at_1 = at_1[at_1 < legend_left - 2]  # the legend's own red sample is not the data
    at_0 = red_columns(pixels, row0)
    assert abs(at_1.min() - x_edge) <= 2, (at_1.min(), x_edge)
    assert abs(at_0.max() - x_edge) <= 2, (at_0.max(), x_edge)
    left = ax.transData.transform((ax.get_xlim()[0], 0))[0]
    assert at_0.min() <= left + 2  # the line starts at the left edge of the axes


def test_band_spans_min_to_max_and_mean_line_is_in_the_middle(tmp_path):
    x = np.arange(200_000.0)
    y = (x % 2).astype(float)  # every pixel column: min 0, max 1, mean 0.5
    fig = plot.make_figure([plot.Series("s", x, y)], width=800, height=400, colors=["#ff0000"])
    pixels = png_pixels(plot.save_png(fig, tmp_path / "band.png")).astype(int)
    ax = fig.axes[0]
    col = int(ax.transData.transform((37_000, 0))[0])  # between grid lines
    rows = {v: int(pixels.shape[0] - ax.transData.transform((0, v))[1]) for v in (0.1, 0.3, 0.5, 0.7, 0.9)}
    for v in (0.1, 0.3, 0.7, 0.9):  # pale red: the translucent band
        r, g, b = pixels[rows[v], col]
        assert r > 240 and 140 < g < 230 and 140 < b < 230, (v, pixels[rows[v], col])
    assert col in red_columns(pixels.astype(np.uint8), rows[0.5])  # the mean line
    above = int(pixels.shape[0] - ax.transData.transform((0, 1.02))[1])
    assert (pixels[above, col] > 240).all()  # white above the band's max


def test_log_x_places_decades_evenly_and_shows_step_zero():
    x = np.arange(0.0, 100_000.0)
    fig = plot.make_figure([plot.Series("loss", x, 1 / (x + 1))], width=1500, height=500, logx=True)
    ax = fig.axes[0]
    px = ax.transData.transform([(v, 1.0) for v in (1, 10, 100, 1000, 10_000)])[:, 0]
    gaps = np.diff(px)
    assert gaps.max() - gaps.min() <= 1.0, gaps
    assert ax.get_xlim() == pytest.approx((1.0, 100_000.0))  # step 0 is drawn at step + 1 = 1
    assert "step + 1" in ax.get_xlabel() and "log" in ax.get_xlabel()


def test_few_rows_drawn_as_markers_many_as_band():
    x = np.arange(20.0)
    fig = plot.make_figure(
        [plot.Series("val", x * 100, x), plot.Series("train", np.arange(50_000.0), x.repeat(2500))]
    )
    ax = fig.axes[0]
    val, train = [line for line in ax.get_lines() if line.get_label() in ("val", "train")]
    assert val.get_marker() == "o" and len(val.get_xdata()) == 20
    assert train.get_marker() in ("None", None, "") and len(train.get_xdata()) <= ax.bbox.width + 1
    assert len(ax.collections) == 1  # one band, for the bucketed series


def test_one_series_per_file_and_column_named_in_the_legend(tmp_path, monkeypatch):
    for run in ("a", "b"):
        (tmp_path / run).mkdir()
        write_train_csv(tmp_path / run / "train.csv", 500)
    figs = []
    monkeypatch.setattr(plot, "save_png", lambda fig, path: figs.append(fig) or Path(path))
    paths = [tmp_path / "a" / "train.csv", tmp_path / "b" / "train.csv"]
    colors = ["black", "#ff0000", "#00ff00"]
    result = plot.plot_csvs(
        paths, tmp_path / "o.png", y=["loss", "bits"], colors=colors, width=600, height=300
    )
    assert result.rows == 1000 and result.skipped == {str(p): 0 for p in paths}
    legend = figs[0].axes[0].get_legend()
    labels = [t.get_text() for t in legend.get_texts()]
    assert labels == ["a/train.csv: loss", "a/train.csv: bits", "b/train.csv: loss", "b/train.csv: bits"]
    lines = [line for line in figs[0].axes[0].get_lines() if line.get_label() in labels]
    assert [line.get_color() for line in lines] == [*colors, colors[0]]  # the colours cycle


def test_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path, monkeypatch):
    out = tmp_path / "loss.png"
    out.write_bytes(b"old")
    fig = plot.make_figure([plot.Series("loss", np.arange(10.0), np.arange(10.0))], width=300, height=200)

    def fail(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(files.os, "replace", fail)
    with pytest.raises(UserError, match="No space left"):
        plot.save_png(fig, out)
    assert out.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["loss.png"]


# ---------------------------------------------------------------- the command


def test_cli_plots_several_files_and_columns(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    write_train_csv(tmp_path / "a" / "train.csv", 3000)
    write_train_csv(tmp_path / "b" / "train.csv", 5000, seed=1)
    out = tmp_path / "out.png"
    out.write_bytes(b"an old plot")  # -o overwrites
    proc = run_jaxvoice(
        "plot", tmp_path / "a" / "train.csv", tmp_path / "b" / "train.csv", "-o", out, "--y", "loss,bits",
        "--logy", "--width", 900, "--height", 500, "--smooth", 5, "--colors", "black,red,#00aa00,blue",
        "--background", "#fafafa", "--title", "two runs", check=True,
    )  # fmt: skip
    assert proc.stdout.strip() == str(out) and proc.stderr == ""
    with Image.open(out) as im:
        assert im.size == (900, 500)


def test_cli_run_dir_writes_both_plots(tmp_path):
    run = tmp_path / "runs" / "voice"
    run.mkdir(parents=True)
    write_train_csv(run / "train.csv", 4000)
    val_rows = [f"{s},0,{3 - s / 2000},{(3 - s / 2000) / math.log(2)}\n" for s in range(0, 4000, 500)]
    (run / "val.csv").write_text("step,epoch,val_loss,val_bits\n" + "".join(val_rows))
    proc = run_jaxvoice("plot", "--run", run, "--width", 800, "--height", 400, check=True)
    paths = [run / "plots" / "loss.png", run / "plots" / "loss_logx.png"]
    assert proc.stdout.split() == [str(p) for p in paths]
    for p in paths:
        with Image.open(p) as im:
            assert im.size == (800, 400)
    # a run whose val.csv has no rows yet still plots its training loss; one with only bad rows warns
    (run / "val.csv").write_text("step,epoch,val_loss,val_bits\n")
    proc = run_jaxvoice("plot", "-q", "--run", run, check=True)
    assert proc.stdout == proc.stderr == ""
    (run / "val.csv").write_text("step,epoch,val_loss,val_bits\n0,0,nan,nan\n")
    proc = run_jaxvoice("plot", "-q", "--run", run, check=True)
    assert "skipped 1 row in" in proc.stderr and "val.csv" in proc.stderr


def test_cli_skips_bad_rows_with_one_warning_line(tmp_path):
    csv = tmp_path / "train.csv"
    csv.write_text("step,loss\n0,3\n1,nan\n2,oops\n3,2\n4,inf\n5,1\n6,0.5")  # last line: being written
    proc = run_jaxvoice("plot", csv, "-o", tmp_path / "o.png")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "warning" in lines[0] and "skipped 3 rows" in lines[0], proc.stderr
    assert (tmp_path / "o.png").exists()


@pytest.mark.parametrize(
    "content, args, words",
    [
        ("step,loss\n0,1\n", ["--y", "bits"], ["no column 'bits'", "step, loss"]),
        ("step,loss\n0,1\n", ["--x", "epoch"], ["no column 'epoch'"]),
        ("", [], ["empty"]),
        ("step,loss\n", [], ["no complete data rows"]),
        ("step,loss\n0,1", [], ["no complete data rows"]),
        ("step,loss\nx,y\n", [], ["none of its 1 rows"]),
        ("step,loss\n0,1\n", ["--width", "99"], ["--width", "100..16383"]),
        ("step,loss\n0,1\n", ["--height", "20000"], ["--height"]),
        ("step,loss\n0,1\n", ["--colors", "red,notacolour"], ["notacolour"]),
        ("step,loss\n0,1\n", ["--smooth", "0"], ["--smooth"]),
        ("step,loss\n0,-1\n1,0\n", ["--logy"], ["y <= 0", "drop --logy"]),
    ],
)
def test_cli_bad_inputs_are_one_line_errors(tmp_path, content, args, words):
    csv = tmp_path / "log.csv"
    csv.write_text(content)
    assert_user_error(run_jaxvoice("plot", csv, "-o", tmp_path / "o.png", *args), *words)
    assert not (tmp_path / "o.png").exists()


def test_cli_bad_paths_are_one_line_errors(tmp_path):
    csv = tmp_path / "log.csv"
    csv.write_text("step,loss\n0,1\n")
    assert_user_error(
        run_jaxvoice("plot", tmp_path / "missing.csv", "-o", tmp_path / "o.png"), "no such file"
    )
    made = run_jaxvoice("plot", csv, "-o", tmp_path / "no" / "o.png")  # missing folders are made
    assert made.returncode == 0 and (tmp_path / "no" / "o.png").is_file(), made.stderr
    assert_user_error(run_jaxvoice("plot", csv, "-o", csv / "o.png"), "not a folder")
    assert_user_error(run_jaxvoice("plot", csv, "-o", tmp_path / "o.jpg"), ".png")
    assert_user_error(run_jaxvoice("plot", csv), "-o")
    assert_user_error(run_jaxvoice("plot", "--run", tmp_path), "no train.csv")
    assert_user_error(run_jaxvoice("plot", "--run", tmp_path / "nope"), "not a directory")
    assert_user_error(run_jaxvoice("plot", "--run", tmp_path, "-o", tmp_path / "o.png"), "--run")


def test_plot_command_does_not_import_jax(tmp_path):
    csv = tmp_path / "train.csv"
    write_train_csv(csv, 100)
    script = (
        "import sys; from jaxvoice.cli import main; "
        f"rc = main(['plot', '-q', {str(csv)!r}, '-o', {str(tmp_path / 'o.png')!r}]); "
        "jax = sorted(m for m in sys.modules if m.split('.')[0] in ('jax', 'jaxlib', 'flax', 'optax')); "
        "print(rc, jax)"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "0 []", proc.stdout
    assert (tmp_path / "o.png").exists()
