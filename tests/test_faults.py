"""Fault tolerance: kills at random moments, damaged checkpoints and a full disk lose nothing."""

from __future__ import annotations

import csv
import os
import random
import shutil
import subprocess
import time
from pathlib import Path

import jax
import numpy as np
import pytest
import soundfile as sf
from conftest import assert_user_error, jaxvoice_cmd, run_jaxvoice, sawtooth, write_audio

from jaxvoice import checkpoint, codec
from jaxvoice.errors import UserError
from jaxvoice.fitting import describe_error
from jaxvoice.sample_files import SymbolWriter

SMALL = ["--config", "tiny", "--set", "model.rnn_size=32", "--set", "train.batch_size=8",
         "--set", "train.seq_length=16", "--quiet"]  # fmt: skip


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("faults")
    write_audio(root / "saw.wav", sawtooth(11025 / 19, 11025, 5.0, 0.7), 11025)
    run_jaxvoice("prepare", root / "saw.wav", "-o", root / "corpus", "-q", check=True)
    return root / "corpus"


def rows(run: Path, name: str = "train.csv") -> list[tuple[str, str]]:
    """(step, loss) as written: compared as text, so equal means bitwise equal."""
    with open(run / name) as f:
        return [(r["step"], r.get("loss") or r["val_loss"]) for r in csv.DictReader(f)]


def assert_same_params(run_a: Path, run_b: Path) -> None:
    a, b = (
        checkpoint.restore_for_inference(run_a, "latest"),
        checkpoint.restore_for_inference(run_b, "latest"),
    )
    assert a.step == b.step
    for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


# --- damaged checkpoints ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def runs(corpus_dir, tmp_path_factory):
    """A run stopped at step 30 (checkpoints 10, 20, 30) and the same run trained straight to 40."""
    root = tmp_path_factory.mktemp("runs")
    extra = ["--set", "train.checkpoint_every=10", "--set", "train.eval_every=10"]
    run_jaxvoice(
        "train", *SMALL, *extra, "--data", corpus_dir, "--out", root / "at30", "--steps", "30", check=True
    )
    run_jaxvoice(
        "train", *SMALL, *extra, "--data", corpus_dir, "--out", root / "to40", "--steps", "40", check=True
    )
    return root / "at30", root / "to40"


def _largest_file(folder: Path) -> Path:
    return max((p for p in folder.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)


def _truncate(path: Path) -> None:
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size // 2)


def _zero(path: Path) -> None:
    path.write_bytes(bytes(path.stat().st_size))


DAMAGE = {
    "params data truncated": ("params", _truncate),
    "params data zeroed": ("params", _zero),
    "optimizer data zeroed": ("train", _zero),
    "params data deleted": ("params", Path.unlink),
    "meta deleted": ("meta", Path.unlink),
}
# the quick run keeps one kind (the truncated params); the other four run in CI's slow job
SLOW_DAMAGE = set(DAMAGE) - {"params data truncated"}


@pytest.mark.parametrize(
    "kind", [pytest.param(k, marks=pytest.mark.slow) if k in SLOW_DAMAGE else k for k in DAMAGE]
)
def test_a_damaged_checkpoint_is_named_and_the_previous_one_used(runs, tmp_path, kind):
    at30, to40 = runs
    run = tmp_path / "run"
    shutil.copytree(at30, run)
    item, damage = DAMAGE[kind]
    damage(_largest_file(run / "checkpoints" / "30" / item))

    if item != "train":  # sampling and eval read params and meta only: those must be intact to be used
        proc = run_jaxvoice("eval", "--run", run, "--checkpoint", "latest", "--json")
        assert proc.returncode == 0, proc.stderr
        assert "checkpoint step 30 is damaged" in proc.stderr and '"step": 20' in proc.stdout
        assert_user_error(run_jaxvoice("eval", "--run", run, "--checkpoint", "30"), "step 30", "damaged")

    proc = run_jaxvoice("train", "--out", run, "--resume", "--steps", "40")
    assert proc.returncode == 0, proc.stderr
    assert "checkpoint step 30 is damaged" in proc.stderr and "Traceback" not in proc.stderr
    assert rows(run) == rows(to40) and rows(run, "val.csv") == rows(to40, "val.csv")
    assert_same_params(run, to40)


def test_an_unfinished_save_is_ignored(runs, tmp_path):
    at30, to40 = runs
    run = tmp_path / "run"
    shutil.copytree(at30, run)
    unfinished = run / "checkpoints" / "40.orbax-checkpoint-tmp"
    shutil.copytree(run / "checkpoints" / "30", unfinished)
    _truncate(_largest_file(unfinished / "params"))
    proc = run_jaxvoice("train", "--out", run, "--resume", "--steps", "40")
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    assert rows(run) == rows(to40)


# --- a full disk -------------------------------------------------------------------------------------------


FULL_DISK_EXTRA = ["--set", "train.checkpoint_every=20", "--set", "train.eval_every=20"]


@pytest.fixture(scope="module")
def straight_to_80(corpus_dir, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("straight") / "run"
    run_jaxvoice(
        "train", *SMALL, *FULL_DISK_EXTRA, "--data", corpus_dir, "--out", run, "--steps", "80", check=True
    )
    return run


def save_of_40_started(run: Path) -> bool:
    return checkpoint_seen(run, 40, finished=False)


def checkpoint_20_done(run: Path) -> bool:
    return (run / "checkpoints" / "20").is_dir()


# Two moments to fill the disk: between saves (train.csv or the next save's first file meets it), and
# while orbax and tensorstore write the arrays of a checkpoint (their threads meet it).
@pytest.mark.slow
@pytest.mark.parametrize("moment", [checkpoint_20_done, save_of_40_started])
def test_a_full_disk_stops_cleanly_and_the_run_resumes(corpus_dir, small_disk, straight_to_80, moment):
    run = small_disk / "run"
    args = [
        *jaxvoice_cmd(),
        "train",
        *SMALL,
        *FULL_DISK_EXTRA,
        "--data",
        str(corpus_dir),
        "--out",
        str(run),
        "--steps",
        "80",
    ]
    # The filler is opened before the run starts and unbuffered: a buffered file's close flushes what a
    # failed write left behind, which fails again on the full disk (once a CI run failed so).
    filler = small_disk / "filler"
    with open(filler, "wb", buffering=0) as f:
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        while not moment(run):
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.001)
        with pytest.raises(OSError):
            while True:
                f.write(bytes(1 << 16))
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "No space left on device" in lines[0] and "--resume" in lines[0], err
    assert checkpoint.available_steps(run)[0] == 20
    filler.unlink()
    proc = run_jaxvoice("train", "--out", run, "--resume", "--steps", "80")
    assert proc.returncode == 0, proc.stderr
    assert rows(run) == rows(straight_to_80) and rows(run, "val.csv") == rows(straight_to_80, "val.csv")
    assert_same_params(run, straight_to_80)


def test_a_streamed_wav_that_meets_a_full_disk_keeps_the_samples_before(small_disk):
    """`jaxvoice sample` streams its WAV through this writer: when the disk fills, the write is undone, the
    error is one UserError naming what is kept, and closing does not fail again (it did: a buffered file's
    close flushed the refused bytes onto the full disk, and `sample` ended in a traceback)."""
    path, symbols = small_disk / "s.wav", (np.arange(12_000) % 256).astype(np.uint8)
    with (
        open(small_disk / "filler", "wb", buffering=0) as filler,
        pytest.raises(UserError) as refused,
        SymbolWriter(path, "linear", 8000) as writer,
    ):
        writer.write(symbols[:6000])
        with pytest.raises(OSError):
            while True:
                filler.write(bytes(1 << 12))
        writer.write(symbols[6000:])  # past the pages the file has
    assert "No space left on device" in str(refused.value) and "6,000 samples" in str(refused.value)
    written, rate = sf.read(str(path), dtype="float32")
    assert rate == 8000 and sf.info(str(path)).subtype == "PCM_U8" and os.path.getsize(path) == 44 + 6000
    np.testing.assert_array_equal(codec.encode("linear", written), symbols[:6000])


def test_tensorstores_report_of_an_os_error_reads_as_the_systems_words():
    text = "RESOURCE_EXHAUSTED: Error writing local file \"x\": Failed to write 1251 bytes: No space left [os_error_code='28']"
    assert describe_error(ValueError(text)) == os.strerror(28)
    assert describe_error(ValueError("INVALID_ARGUMENT: bad\nmore")) == "ValueError: INVALID_ARGUMENT: bad"


# --- ten kills at random moments ---------------------------------------------------------------------------


def checkpoint_seen(run: Path, step: int, finished: bool) -> bool:
    """Whether a checkpoint of `step` or later exists (with `finished`, only completed ones; else also
    orbax's temporary folders of a save in progress)."""
    try:
        names = os.listdir(run / "checkpoints")
    except FileNotFoundError:
        return False
    head = (n.split(".")[0] for n in names if not finished or n.isdigit())
    return any(h.isdigit() and int(h) >= step for h in head)


@pytest.mark.slow
def test_ten_sigkills_at_random_moments_lose_nothing(corpus_dir, tmp_path):
    """Killed during steps, evaluations and saves, resumed each time: the same CSV rows and params.

    Each kill waits for the run to reach a seeded checkpoint step: half the kills land as that save starts
    (its temporary folder appears), half a seeded few steps after it has finished (steps and evaluations;
    saves take most of this small run's time). Keyed to progress, not to wall-clock time, so a faster
    machine cannot finish the run before the kills."""
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    every = 15
    extra = ["--set", f"train.checkpoint_every={every}", "--set", "train.eval_every=10", "--steps", "300"]
    run_jaxvoice("train", *SMALL, *extra, "--data", corpus_dir, "--out", straight, check=True)
    rng = random.Random(1234)
    targets = sorted(rng.sample(range(every, 300, every), 10))
    kills = 0
    for target in targets:
        args = [*jaxvoice_cmd(), "train", *SMALL, *extra, "--data", str(corpus_dir), "--out", str(killed)]
        if killed.exists():
            args.append("--resume")
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        in_save = rng.random() < 0.5
        while not checkpoint_seen(killed, target, finished=not in_save) and proc.poll() is None:
            time.sleep(0.002)
        if not in_save:
            time.sleep(rng.uniform(0.0, 0.05))
        if proc.poll() is not None:
            assert proc.returncode == 0, proc.stderr.read()
            break  # finished before this kill: nothing left to interrupt
        os.kill(proc.pid, 9)
        proc.wait()
        kills += 1
    run_jaxvoice("train", "--out", killed, "--resume", *extra[-2:], check=True)
    assert kills >= 8, f"only {kills} kills landed before the run finished"
    assert [int(s) for s, _ in rows(killed)] == list(range(1, 301))
    assert rows(killed) == rows(straight) and rows(killed, "val.csv") == rows(straight, "val.csv")
    assert_same_params(killed, straight)
