"""Benchmark `jaxvoice prepare` on a big WAV: wall time, MB/s and the peak RSS of the prepare process.

`python scripts/bench.py prepare [--size-mb 1024] [--repeat 1] [--dir DIR] [--codec linear]`

Writes a 16-bit stereo 44.1 kHz WAV of the given size in blocks (it never sits in RAM here either), runs
`jaxvoice prepare -q` on it in a fresh child process (--repeat times), and reports the child's peak RSS
(getrusage RUSAGE_CHILDREN, taken in a lean intermediate process) next to the input size: streaming means
the RSS must not grow with the file. The files are removed at the end unless --keep.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

RATE_IN = 44100
CHANNELS = 2
BLOCK_FRAMES = 1 << 20

# Runs the command as its child and prints [wall seconds, the child's peak RSS in KiB]. A lean parent (no
# numpy): a child's ru_maxrss starts from its parent's RSS at fork, so measuring straight from this
# process (which holds the generated blocks) would report this process's size, not prepare's.
_MEASURE = """
import json, resource, subprocess, sys, time
t0 = time.perf_counter()
code = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL).returncode
wall = time.perf_counter() - t0
if code:
    sys.exit(code)
print(json.dumps([wall, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss]))
"""


def _blocks(seed: int = 0) -> list[np.ndarray]:
    """A few distinct 16-bit stereo blocks (a gliding sawtooth with noise) to cycle through."""
    rng = np.random.default_rng(seed)
    t = np.arange(BLOCK_FRAMES) / RATE_IN
    blocks = []
    for i in range(4):
        phase = np.cumsum(110 * (1 + 0.2 * np.sin(2 * np.pi * (0.3 + 0.1 * i) * t))) / RATE_IN
        voice = 0.4 * (2 * (phase % 1.0) - 1) + 0.05 * rng.standard_normal(BLOCK_FRAMES)
        stereo = np.stack([voice, 0.8 * voice + 0.02 * rng.standard_normal(BLOCK_FRAMES)], axis=1)
        blocks.append(np.round(stereo * 32767).astype(np.int16))
    return blocks


def write_big_wav(path: Path, size_mb: float) -> int:
    """A WAV of about size_mb MiB, written block by block; returns the frame count."""
    import soundfile as sf

    frames = int(size_mb * 2**20) // (2 * CHANNELS)
    blocks = _blocks()
    with sf.SoundFile(
        path, "w", RATE_IN, CHANNELS, "PCM_16", format="WAV" if frames < 2**29 else "RF64"
    ) as f:
        written = 0
        i = 0
        while written < frames:
            block = blocks[i % len(blocks)][: frames - written]
            f.write(block)
            written += len(block)
            i += 1
    return frames


def main(argv: list[str]) -> dict:
    parser = argparse.ArgumentParser(prog="bench.py prepare")
    parser.add_argument("--size-mb", type=float, default=1024.0, help="input WAV size in MiB (default 1024)")
    parser.add_argument("--repeat", type=int, default=1, help="runs, each in a fresh process (default 1)")
    parser.add_argument("--codec", default="linear", choices=["linear", "mulaw"])
    parser.add_argument("--dir", default=None, help="where to put the files (default: the system temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the WAV and corpus")
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="jaxvoice-bench-prepare-", dir=args.dir))
    try:
        wav = work / "big.wav"
        t0 = time.perf_counter()
        frames = write_big_wav(wav, args.size_mb)
        write_s = time.perf_counter() - t0
        size = wav.stat().st_size
        walls, peaks = [], []
        for run in range(args.repeat):
            out = work / f"corpus{run}"
            cmd = [sys.executable, "-m", "jaxvoice", "prepare", "-q", wav, "-o", out, "--codec", args.codec]
            proc = subprocess.run(
                [sys.executable, "-c", _MEASURE, *map(str, cmd)], capture_output=True, text=True
            )
            if proc.returncode != 0:
                raise SystemExit(f"jaxvoice prepare failed ({proc.returncode}): {proc.stderr.strip()}")
            wall, rss_kib = json.loads(proc.stdout)
            walls.append(wall)
            peaks.append(rss_kib / 1024)
            meta = json.loads((out / "meta.json").read_text())
            expected = frames * 11025 / RATE_IN
            if abs(meta["length"] - expected) > 1 or (out / "data.u8").stat().st_size != meta["length"]:
                raise SystemExit(f"unexpected corpus length {meta['length']} (expected about {expected:.0f})")
            if run + 1 < args.repeat:
                shutil.rmtree(out)
        wall = statistics.median(walls)
        return {
            "bench": "prepare",
            "input": f"{frames / RATE_IN / 3600:.2f} h of 16-bit stereo {RATE_IN} Hz WAV",
            "input_mb": round(size / 2**20, 1),
            "codec": args.codec,
            "output_symbols": meta["length"],
            "write_input_s": round(write_s, 2),
            "wall_s": round(wall, 2),
            "wall_s_runs": [round(w, 2) for w in walls],
            "input_mb_per_s": round(size / 2**20 / wall, 1),
            "audio_x_realtime": round(frames / RATE_IN / wall, 1),
            "peak_rss_mb": round(max(peaks), 1),
            "peak_rss_mb_runs": [round(p, 1) for p in peaks],
            "python": sys.version.split()[0],
        }
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1:]), indent=2))
