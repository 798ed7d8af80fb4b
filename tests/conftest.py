"""Shared test helpers: real subprocess runs of the `jaxvoice` command and generated audio files."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest


def pytest_configure(config):
    """One persistent XLA compilation cache for the whole session, its workers and every `jaxvoice` they run.

    Most of a small test's time is compiling (a tiny 4-step `jaxvoice train` is ~15 s cold and ~6 s with its
    programs cached), and many tests compile the same tiny programs in fresh processes. Set in the controller
    before xdist starts its workers, who inherit the environment (and read it when they import JAX); removed at
    the end. (An entry read while another process still writes it is JAX's warning and a compile of its own,
    not an error; JAX's file lock against that, on with a size limit, rescans the folder at every write: 15%
    slower at a few hundred entries.) A cache the caller set up is left as it is."""
    if hasattr(config, "workerinput") or "JAX_COMPILATION_CACHE_DIR" in os.environ:
        return
    config._jaxvoice_xla_cache = tempfile.mkdtemp(prefix="jaxvoice-tests-xla-")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = config._jaxvoice_xla_cache
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"  # (default 1 s) the tiny programs add up


def pytest_unconfigure(config):
    cache = getattr(config, "_jaxvoice_xla_cache", None)
    if cache:
        os.environ.pop("JAX_COMPILATION_CACHE_DIR", None)
        os.environ.pop("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", None)
        shutil.rmtree(cache, ignore_errors=True)


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


@pytest.fixture
def small_disk(tmp_path):
    """A real 4 MiB filesystem (tmpfs; CI runs as root). Filled up by the test at the moment it chooses."""
    mount = tmp_path / "disk"
    mount.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], capture_output=True)
    assert proc.returncode == 0, f"cannot mount a tmpfs for the full-disk test: {proc.stderr.decode()}"
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)
