"""Shared test helpers: real subprocess runs of the `jaxvoice` command and generated audio files."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest


def jaxvoice_cmd() -> list[str]:
    exe = shutil.which("jaxvoice", path=str(Path(sys.executable).parent)) or shutil.which("jaxvoice")
    return [exe] if exe else [sys.executable, "-m", "jaxvoice"]


def run_jaxvoice(*args, cwd=None, timeout=600, env=None, check=False) -> subprocess.CompletedProcess:
    """Run the installed `jaxvoice` command; returns the CompletedProcess (text stdout/stderr)."""
    full_env = dict(os.environ, **(env or {}))
    proc = subprocess.run(
        [*jaxvoice_cmd(), *map(str, args)],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"jaxvoice {args} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


def assert_user_error(proc: subprocess.CompletedProcess, *words: str) -> None:
    """Exit 2, exactly one line on stderr, no traceback, and the line mentions each of `words`."""
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    assert len(lines) == 1, proc.stderr
    for word in words:
        assert word.lower() in lines[0].lower(), (word, lines[0])


def cpu_flags() -> list[str]:
    """This CPU's feature flags (x86-64 Linux; empty elsewhere): where jaxvoice's kernels must be built."""
    cpuinfo = Path("/proc/cpuinfo")
    if platform.machine() not in ("x86_64", "AMD64") or not cpuinfo.exists():
        return []
    return next((line.split() for line in cpuinfo.read_text().splitlines() if line.startswith("flags")), [])


def sine(freq: float, rate: int, seconds: float, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(int(round(rate * seconds))) / rate
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def sawtooth(freq: float, rate: int, seconds: float, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(int(round(rate * seconds))) / rate
    return (amplitude * (2.0 * ((t * freq) % 1.0) - 1.0)).astype(np.float32)


def write_audio(path, samples: np.ndarray, rate: int, subtype: str = "PCM_16", format: str | None = None):
    import soundfile as sf

    sf.write(str(path), samples, rate, subtype=subtype, format=format)
    return Path(path)


@pytest.fixture
def jv():
    return run_jaxvoice


@pytest.fixture
def run_copy(base_run, tmp_path) -> Path:
    """A copy of the module's `base_run` fixture (a run made once per module) for a test to change."""
    run = tmp_path / "run"
    shutil.copytree(base_run, run)
    return run
