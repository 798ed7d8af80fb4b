"""Held-out quality in a CPU budget: `python scripts/bench.py quality [--minutes 20] [--presets voice_cpu,voice_cpu_tiered]`.

The corpora are made here, from recipes (nothing is downloaded), into --out (kept, so runs can be listened to):
- voice: a low-pitched male speaking voice, espeak-ng (`-v en-us+m3 -p 12 -s 150`, 22050 Hz) reading the
  GNU GPL v3 as Debian ships it (/usr/share/common-licenses/GPL-3), cut to --seconds; prepared at 11025 Hz,
  8-bit linear, 80/10/10. Needs `apt-get install espeak-ng`.
- music: --seconds of synthesised multi-voice music at 11025 Hz (`music()` below: a band-limited bass, a
  chord pad and a vibrato melody over I-V-vi-IV-like progressions in random keys and tempi, with a kick and
  a hi-hat), seeded, so the same corpus every time.
Each preset trains on each corpus for --minutes of wall time (`jaxvoice train --minutes`, as a user would, one
run at a time: the machine's two cores are the budget), then `jaxvoice eval --split test` gives held-out
bits/sample. Reported per corpus and preset, with the steps made, the best checkpoint's step and the run's
median tokens/s. With --rounds N each corpus's presets train N times, taking turns (round r starts at preset
r), and `summary` gives each preset's median and, where both are run, the flat preset's lead over the tiered
one's (medians, and round by round): on these VMs a process's speed moves by up to 1.6x from one run to the
next, and with it the steps a budget buys. Then, with --sample-processes N (default 4; 0: none), the trained runs'
one-stream sampling speed, each run's last checkpoint in N fresh processes taking turns, and each frame-level
run's ratio to the flat run of its round (`bench_sample.bench_presets`): a trained model can sample at another
speed than the random init `bench.py sample` times by default.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from bench_sample import FAMILY_PAIRS, bench_presets

from jaxvoice import csvlog

RATE = 11025
GPL = Path("/usr/share/common-licenses/GPL-3")


def _jaxvoice(*args, timeout=None) -> subprocess.CompletedProcess:
    exe = shutil.which("jaxvoice", path=str(Path(sys.executable).parent)) or "jaxvoice"
    return subprocess.run([exe, *map(str, args)], capture_output=True, text=True, timeout=timeout, check=True)


def voice(out: Path, seconds: float) -> Path:
    """espeak-ng's low male voice reading the GPL: a WAV of at least `seconds` (cut by prepare's caller)."""
    if shutil.which("espeak-ng") is None:
        raise SystemExit("the voice corpus needs espeak-ng: apt-get install espeak-ng")
    words = GPL.read_text().split()
    text = " ".join(words[: int(seconds * 2.9)])  # ~150 words a minute, with room
    wav = out / "voice_espeak.wav"
    subprocess.run(["espeak-ng", "-v", "en-us+m3", "-p", "12", "-s", "150", "-w", str(wav), text], check=True)
    return _cut(wav, out / "voice.wav", seconds)


def _cut(source: Path, target: Path, seconds: float) -> Path:
    import soundfile as sf

    audio, rate = sf.read(str(source), dtype="float32")
    sf.write(str(target), audio[: int(seconds * rate)], rate, subtype="PCM_16")
    return target


def _tone(freq_N: np.ndarray, amps: list[float], rate: int) -> np.ndarray:
    """A band-limited sum of harmonics k (amplitude amps[k-1]) of a time-varying frequency."""
    phase_N = 2 * np.pi * np.cumsum(freq_N) / rate
    out = np.zeros_like(phase_N)
    for k, a in enumerate(amps, start=1):
        alive = (k * freq_N < 0.45 * rate).astype(np.float64)
        out += a * alive * np.sin(k * phase_N)
    return out


def _envelope(n: int, attack: float, release: float, rate: int) -> np.ndarray:
    t = np.arange(n) / rate
    return np.minimum(1.0, t / attack) * np.clip((t[-1] - t) / release, 0.0, 1.0) if n else np.zeros(0)


def music(out: Path, seconds: float, seed: int = 7, rate: int = RATE) -> Path:
    """Multi-voice music (see the module docstring), float32 at `rate`, as a WAV."""
    import soundfile as sf

    rng = np.random.default_rng(seed)
    total = int(seconds * rate)
    mix = np.zeros(total + rate * 4)
    pos = 0
    progressions = [[0, 7, 9, 5], [0, 5, 7, 0], [9, 5, 0, 7], [0, 9, 5, 7]]
    while pos < total:
        key = 45 + int(rng.integers(0, 12))  # MIDI A2..G#3
        bpm = rng.uniform(84, 132)
        beat = int(rate * 60 / bpm)
        minor = rng.random() < 0.4
        scale = [0, 2, 3, 5, 7, 8, 10] if minor else [0, 2, 4, 5, 7, 9, 11]
        for _ in range(int(rng.integers(2, 5))):  # repeats of a progression
            for root in progressions[int(rng.integers(0, len(progressions)))]:
                bar = 4 * beat
                if pos + bar > len(mix):
                    break
                hz = lambda midi: 440.0 * 2 ** ((midi - 69) / 12)
                # bass: the root on each beat, a sawtooth-like spectrum
                for b in range(4):
                    n = int(beat * 0.9)
                    f = np.full(n, hz(key + root - 12))
                    mix[pos + b * beat : pos + b * beat + n] += (
                        0.22
                        * _tone(f, [1 / k**1.5 for k in range(1, 12)], rate)
                        * _envelope(n, 0.005, 0.05, rate)
                    )
                # pad: the triad, soft attack
                third = 3 if (minor and root in (0, 5, 7)) or (not minor and root == 9) else 4
                for interval in (0, third, 7):
                    f = np.full(bar, hz(key + 12 + root + interval))
                    mix[pos : pos + bar] += (
                        0.07 * _tone(f, [1, 0.5, 0.25, 0.12], rate) * _envelope(bar, 0.15, 0.2, rate)
                    )
                # melody: eighth notes from the scale, vibrato, odd harmonics
                t0 = pos
                for _ in range(8):
                    n = beat // 2
                    if rng.random() < 0.2:
                        t0 += n
                        continue
                    degree = int(rng.integers(0, 7))
                    octave = 24 + 12 * int(rng.integers(0, 2))
                    vib = 1 + 0.006 * np.sin(2 * np.pi * 5.5 * np.arange(n) / rate)
                    f = hz(key + octave + scale[degree]) * vib
                    mix[t0 : t0 + n] += (
                        0.16 * _tone(f, [1, 0, 0.33, 0, 0.2, 0, 0.14], rate) * _envelope(n, 0.01, 0.06, rate)
                    )
                    t0 += n
                # drums: kick on 1 and 3, hi-hat on eighths
                for b in (0, 2):
                    n = int(0.15 * rate)
                    k = np.arange(n) / rate
                    mix[pos + b * beat : pos + b * beat + n] += (
                        0.35 * np.sin(2 * np.pi * (50 + 80 * np.exp(-k * 40)) * k) * np.exp(-k * 18)
                    )
                for e in range(8):
                    n = int(0.03 * rate)
                    at = pos + e * beat // 2
                    mix[at : at + n] += 0.05 * rng.standard_normal(n) * np.exp(-np.arange(n) / (0.006 * rate))
                pos += bar
    audio = mix[:total]
    audio *= 0.9 / (np.max(np.abs(audio)) + 1e-9)
    path = out / "music.wav"
    sf.write(str(path), audio.astype(np.float32), rate, subtype="PCM_16")
    return path


def _train_and_test(args, corpus: Path, run: Path, preset: str) -> dict:
    shutil.rmtree(run, ignore_errors=True)
    overrides = [a for kv in args.set for a in ("--set", kv)]
    t0 = time.monotonic()
    _jaxvoice("train", "--config", preset, "--data", corpus, "--out", run, "--minutes", args.minutes, "-q",
              *overrides)  # fmt: skip
    wall = time.monotonic() - t0
    test = json.loads(_jaxvoice("eval", "--run", run, "--split", "test", "--json").stdout)
    tokens_per_s = csvlog.read_columns(run / "train.csv", ["tokens_per_s"]).data["tokens_per_s"]
    return {
        "test_bits": round(test["bits"], 4), "best_step": test["step"], "steps": len(tokens_per_s),
        "tokens_per_s": round(float(np.median(tokens_per_s))), "train_wall_s": round(wall, 1),
    }  # fmt: skip


def _summary(bits: dict[str, list[float]]) -> dict:
    """Each preset's median test bits over its rounds, and each frame-level preset's lead over the flat one its
    targets name (`bench_sample.FAMILY_PAIRS`; flat bits - tiered bits) where both ran."""
    summary = {p: {"median_test_bits": round(statistics.median(b), 4)} for p, b in bits.items()}
    for tiered, (flat, _) in FAMILY_PAIRS.items():
        if tiered in bits and flat in bits:
            summary[f"{flat}-{tiered}"] = {
                "lead": round(summary[flat]["median_test_bits"] - summary[tiered]["median_test_bits"], 4),
                "rounds": [round(f - t, 4) for f, t in zip(bits[flat], bits[tiered], strict=True)],
            }
    return summary


def main(argv: list[str]) -> dict:
    parser = argparse.ArgumentParser(prog="bench.py quality", description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=20.0)
    parser.add_argument("--presets", default="voice_cpu,voice_cpu_tiered")
    parser.add_argument("--corpora", default="voice,music")
    parser.add_argument("--seconds", type=float, default=600.0, help="length of each corpus")
    parser.add_argument("--out", type=Path, default=Path("runs/bench_quality"))
    parser.add_argument("--set", action="append", default=[], help="an override for every run")
    parser.add_argument("--rounds", type=int, default=1, help="runs per corpus and preset, taking turns")
    parser.add_argument(
        "--sample-processes", type=int, default=4, help="fresh processes per trained run timing its sampling"
    )
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    report: dict = {"minutes": args.minutes, "seconds": args.seconds, "cpu_count": os.cpu_count(), "runs": {}}
    makers = {"voice": voice, "music": music}
    for name in args.corpora.split(","):
        corpus = args.out / f"corpus_{name}"
        if not (corpus / "meta.json").is_file():
            wav = makers[name](args.out, args.seconds)
            _jaxvoice("prepare", wav, "-o", corpus, "--rate", RATE, "-q")
        presets = args.presets.split(",")
        bits: dict[str, list[float]] = {p: [] for p in presets}  # each preset's test bits, round by round
        trained = []  # PRESET=RUN of each run, round by round (bench_sample pairs the i-th of a preset's)
        for r in range(args.rounds):
            for preset in presets[r % len(presets) :] + presets[: r % len(presets)]:
                key = f"{name}/{preset}" + (f"/{r}" if args.rounds > 1 else "")
                run = args.out / key.replace("/", "_")
                report["runs"][key] = _train_and_test(args, corpus, run, preset)
                bits[preset].append(report["runs"][key]["test_bits"])
                trained.append(f"{preset}={run}")
                print(json.dumps({key: report["runs"][key]}), file=sys.stderr)
        report.setdefault("summary", {})[name] = _summary(bits)
        if args.sample_processes > 0:
            from jaxvoice import sample

            report.setdefault("sampling", {})[name] = bench_presets(
                trained, 65536, 3, sample.DEFAULT_CHUNK, args.sample_processes
            )
    return report
