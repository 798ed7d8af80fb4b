"""`python scripts/bench.py video [--rows N] [--checkpoints C] [--sample-seconds S] [--width W] [--height H]
[--fps F] [--repeats R]`

A synthetic run, made without training (config.toml of the tiny preset, a corpus.json, a train.csv of N
rows and a val.csv written with numpy, C checkpoints' samples as S-second WAVs of a changing voice-like
tone and noise), rendered by `jaxvoice.video.render` in fresh child processes. Reports the wall time of
the whole render, its parts (pictures drawn once and audio read = prepare; frame composition; colour
conversion + encoding + writing), and the child's peak RSS. Target: the video of 20 x 3 s samples (and its
3 s card) at 1280 x 720, 30 fps in under 30 s, 2x real time, with a peak RSS under 1 GB.
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

CHILD = """
import json, sys, time
t0 = time.perf_counter()
from jaxvoice import video
r = video.render([sys.argv[1]], sys.argv[2], width=int(sys.argv[3]), height=int(sys.argv[4]),
                 fps=float(sys.argv[5]), force=True)
print(json.dumps({"wall_s": time.perf_counter() - t0, "frames": r.frames, "seconds": r.seconds,
                  "prepare_s": r.prepare_s, "compose_s": r.compose_s, "encode_s": r.encode_s}))
"""


def make_run(root: Path, rows: int, checkpoints: int, sample_seconds: float, rate: int = 11025) -> Path:
    """A run folder as `jaxvoice train` + `jaxvoice sample --checkpoint all` leave it, minus the checkpoints."""
    import numpy as np
    import soundfile

    from jaxvoice import config

    run = root / "run"
    (run / "samples").mkdir(parents=True)
    (run / "config.toml").write_text(config.dumps(config.load("tiny")))
    corpus = {
        "format_version": 1, "codec": "linear", "rate": rate, "num_symbols": 256, "length": 180 * rate,
        "seconds": 180.0, "splits": {"train": [0, 144 * rate], "val": [144 * rate, 162 * rate],
        "test": [162 * rate, 180 * rate]}, "sources": [{"path": "voice.wav"}], "sha256": "0" * 64,
        "path": str(root / "corpus"),
    }  # fmt: skip
    (run / "corpus.json").write_text(json.dumps(corpus, indent=2))
    rng = np.random.default_rng(0)
    step = np.arange(1, rows + 1)
    loss = (1.8 + 3.7 * np.exp(-step / (rows / 8))) * (1 + 0.1 * rng.standard_normal(rows))
    columns = [step, step / 2000, loss, loss / math.log(2), np.full(rows, 2e-3), np.abs(rng.normal(1, 0.3, rows)),
               np.full(rows, 50_000.0), step * 0.02]  # fmt: skip
    np.savetxt(run / "train.csv", np.column_stack(columns), delimiter=",", comments="",
               header="step,epoch,loss,bits,lr,grad_norm,tokens_per_s,wall_s", fmt="%.9g")  # fmt: skip
    every = rows // checkpoints
    val_step = np.arange(1, checkpoints + 1) * every
    val_loss = 1.9 + 3.7 * np.exp(-val_step / (rows / 8))
    np.savetxt(run / "val.csv", np.column_stack([val_step, val_step / 2000, val_loss, val_loss / math.log(2)]),
               delimiter=",", comments="", header="step,epoch,val_loss,val_bits", fmt="%.9g")  # fmt: skip
    t = np.arange(round(sample_seconds * rate)) / rate
    for i, s in enumerate(val_step):
        pitch = 110 * 2 ** (i / 12)
        voice = 0.4 * np.sign(np.sin(2 * np.pi * pitch * t)) * (i / checkpoints)
        x = voice + 0.3 * (1 - i / checkpoints) * rng.standard_normal(len(t))
        soundfile.write(run / "samples" / f"step_{s}.wav", np.clip(x, -1, 1), rate, subtype="PCM_U8")
    return run


def run_child(args: list[str]) -> tuple[dict, float]:
    """The child's JSON and its peak RSS (MB)."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen([sys.executable, "-c", CHILD, *args], stdout=out, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        if os.waitstatus_to_exitcode(status) != 0:
            err.seek(0)
            raise SystemExit(f"render failed: {err.read().decode(errors='replace')}")
        out.seek(0)
        return json.loads(out.read()), usage.ru_maxrss / 1024


def main(argv: list[str]) -> dict:
    parser = argparse.ArgumentParser(prog="bench.py video")
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--checkpoints", type=int, default=20)
    parser.add_argument("--sample-seconds", type=float, default=3.0)
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=720)
    parser.add_argument("--fps", type=float, default=30.0)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="bench_video_") as tmp:
        t0 = time.perf_counter()
        run = make_run(Path(tmp), args.rows, args.checkpoints, args.sample_seconds)
        made_s = time.perf_counter() - t0
        out = Path(tmp) / "video.mp4"
        child_args = [str(run), str(out), str(args.width), str(args.height), str(args.fps)]
        runs = [run_child(child_args) for _ in range(args.repeats)]
        size_mb = out.stat().st_size / 1e6
    results = [r for r, _ in runs]
    median = lambda key: round(statistics.median(r[key] for r in results), 3)  # noqa: E731
    first = results[0]
    result = {
        "video": f"{args.width}x{args.height} at {args.fps:g} fps, {first['seconds']:.2f} s, {first['frames']} frames",
        "run": f"{args.rows:,} train.csv rows, {args.checkpoints} samples of {args.sample_seconds:g} s",
        "synthesize_run_s": round(made_s, 2),
        "wall_s_median": median("wall_s"),
        "wall_s_runs": [round(r["wall_s"], 2) for r in results],
        "prepare_s_median": median("prepare_s"),
        "compose_s_median": median("compose_s"),
        "encode_s_median": median("encode_s"),
        "x_real_time": round(first["seconds"] / statistics.median(r["wall_s"] for r in results), 2),
        "peak_rss_mb": round(max(rss for _, rss in runs), 1),
        "mp4_mb": round(size_mb, 2),
        "load_avg_1min": round(os.getloadavg()[0], 2),
        "cpus": os.cpu_count(),
        "target": "wall < 30 s and >= 2x real time, peak RSS < 1024 MB",
    }
    result["meets_target"] = (
        result["wall_s_median"] < 30 and result["x_real_time"] >= 2 and result["peak_rss_mb"] < 1024
    )
    return result
