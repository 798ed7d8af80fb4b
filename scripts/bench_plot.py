"""`python scripts/bench.py plot [--rows N] [--width W] [--height H] [--repeats R] [--csv PATH]`

End to end: `jaxvoice plot train.csv -o out.png --width W --height H` in fresh subprocesses (Python start-up
included) on a realistic train.csv (a decaying, noisy loss over N steps, floats written with repr as the
training code writes them). Reports the median and range of the wall times, the child's peak RSS, and one
in-process breakdown by phase (import, read, figure, draw + encode + write). Target: 1e6 rows to a
16383 x 2000 PNG in < 5 s with < 1 GB.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HEADER = "step,epoch,loss,bits,lr,grad_norm,tokens_per_s,wall_s\n"

PHASES = """
import json, sys, time
t0 = time.perf_counter()
from jaxvoice import csvlog, plot
t1 = time.perf_counter()
data, _ = csvlog.read_columns(sys.argv[1], ["step", "loss"])
t2 = time.perf_counter()
fig = plot.make_figure([plot.Series("loss", data["step"], data["loss"])], width=int(sys.argv[3]),
                       height=int(sys.argv[4]), title="bench")
t3 = time.perf_counter()
plot.save_png(fig, sys.argv[2])
t4 = time.perf_counter()
print(json.dumps({"import": t1 - t0, "read_csv": t2 - t1, "figure_and_buckets": t3 - t2,
                  "draw_encode_write": t4 - t3}))
"""


def write_train_csv(path: Path, rows: int, seed: int = 0) -> None:
    """Like a real run: loss decays from ln 256 with noise, float32 values logged as Python floats."""
    import numpy as np

    rng = np.random.default_rng(seed)
    with open(path, "w") as f:
        f.write(HEADER)
        for start in range(0, rows, 100_000):
            step = np.arange(start, min(start + 100_000, rows))
            trend = 1.6 + (math.log(256) - 1.6) * np.exp(-step / 40_000.0)
            loss = (trend * (1 + 0.12 * rng.standard_normal(len(step)))).astype(np.float32).tolist()
            grad = np.abs(1 + 0.5 * rng.standard_normal(len(step))).astype(np.float32).tolist()
            tps = (50_000 + 2_000 * rng.standard_normal(len(step))).tolist()
            lr = (2e-3 * 0.5 ** (step // 200_000)).tolist()
            lines = [
                f"{s},{s // 50_000},{v!r},{v / math.log(2)!r},{r!r},{g!r},{t!r},{s * 0.0517!r}\n"
                for s, v, g, t, r in zip(step.tolist(), loss, grad, tps, lr, strict=True)
            ]
            f.write("".join(lines))


def run_once(cmd: list[str]) -> tuple[float, float, int, str, float]:
    """Wall seconds, peak RSS (MB), exit code and stderr of one fresh child process, and its CPU seconds
    (user + system: less sensitive than wall time to other work on a shared machine)."""
    with tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        err.seek(0)
        stderr = err.read().decode(errors="replace")
        return wall, usage.ru_maxrss / 1024, proc.returncode, stderr, usage.ru_utime + usage.ru_stime


def main(argv: list[str]) -> dict:
    parser = argparse.ArgumentParser(prog="bench.py plot")
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--width", type=int, default=16383)
    parser.add_argument("--height", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--csv", type=Path, help="reuse this CSV instead of generating one")
    args = parser.parse_args(argv)

    exe = Path(sys.executable).parent / "jaxvoice"
    jaxvoice = [str(exe)] if exe.exists() else [sys.executable, "-m", "jaxvoice"]
    with tempfile.TemporaryDirectory(prefix="bench_plot_") as tmp:
        csv = args.csv or Path(tmp) / "train.csv"
        if args.csv is None:
            write_train_csv(csv, args.rows)
        out = Path(tmp) / "out.png"
        cmd = [*jaxvoice, "plot", "-q", str(csv), "-o", str(out), "--width", str(args.width)]
        cmd += ["--height", str(args.height)]
        runs = [run_once(cmd) for _ in range(args.repeats)]
        failed = [r for r in runs if r[2] != 0]
        if failed:
            raise SystemExit(f"jaxvoice plot failed ({failed[0][2]}): {failed[0][3]}")
        from PIL import Image

        with Image.open(out) as im:
            size = im.size
        phases = subprocess.run(
            [sys.executable, "-c", PHASES, str(csv), str(out), str(args.width), str(args.height)],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        walls = [r[0] for r in runs]
        result = {
            "rows": args.rows if args.csv is None else None,
            "csv_mb": round(csv.stat().st_size / 1e6, 1),
            "png": f"{size[0]}x{size[1]}",
            "png_size_ok": size == (args.width, args.height),
            "png_mb": round(out.stat().st_size / 1e6, 2),
            "wall_s_median": round(statistics.median(walls), 3),
            "wall_s_runs": [round(w, 3) for w in walls],
            "cpu_s_median": round(statistics.median(r[4] for r in runs), 3),
            "peak_rss_mb": round(max(r[1] for r in runs), 1),
            "phases_s": {k: round(v, 3) for k, v in json.loads(phases.stdout).items()},
            "load_avg_1min": round(os.getloadavg()[0], 2),
            "cpus": os.cpu_count(),
            "target": "wall < 5 s, peak RSS < 1024 MB",
        }
    result["meets_target"] = result["wall_s_median"] < 5 and result["peak_rss_mb"] < 1024
    return result
