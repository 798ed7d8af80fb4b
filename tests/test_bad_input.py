"""Bad input, one table row per case: what a hostile new user types, and what jaxvoice must do about it.

Each `Case` runs the real `jaxvoice` command in a subprocess after its `setup` made the files it needs. A
row expecting exit code 2 must end with exactly one line on stderr (`jaxvoice CMD: error: ...`) holding each
of its `phrases` and none of its `unsaid` ones, no traceback, and no file changed, added or lost anywhere
under the test's folder or in the shared corpus and run (sha256 of every file before and after). A row
expecting exit code 0 must leave every file it found unchanged except those it names in `replaced`, and its
phrases must be on stderr (warnings) or stdout (notes). `keep` names the user's files a row is about
(checked by sha256 on top), `absent` the paths that must not exist afterwards.

To add a row: append a `Case` to CASES. Arguments and paths may use {tmp} (the test's own folder), {corpus}
and {run} (a small corpus and a tiny trained run shared by the module: read them, never change them; copy
them with `copy_corpus` / `copy_run` first). `read_only` folders are mounted read-only for the command (as
root, in a private mount namespace; otherwise by chmod). `limits` run it under resource limits (MEMORY_CAP:
RLIMIT_DATA, which JAX starts under and memory.host_available sees), so a check that fails cannot take the
machine down.
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest
from conftest import jaxvoice_cmd, run_jaxvoice, sawtooth, write_audio

RATE = 8000


class Env(NamedTuple):
    """Where a case runs: its own folder, and the module's shared corpus and run (never changed)."""

    tmp: Path
    corpus: Path
    run: Path

    def path(self, template: str) -> Path:
        return Path(template.format(tmp=self.tmp, corpus=self.corpus, run=self.run))


class Case(NamedTuple):
    id: str
    args: tuple[str, ...]  # after `jaxvoice`, with {tmp}, {corpus}, {run}
    phrases: tuple[str, ...]  # words the error line (or, for exit 0, stderr + stdout) must hold
    setup: Callable[[Env], object] | None = None
    code: int = 2
    unsaid: tuple[str, ...] = ()  # words it must not hold (advice that does not apply to the command)
    keep: tuple[str, ...] = ()  # files the row protects: present before, the same bytes after
    absent: tuple[str, ...] = ()  # paths that must not exist afterwards (outputs, folders it would make)
    replaced: tuple[str, ...] = ()  # exit 0 only: files the command may rewrite
    read_only: tuple[str, ...] = ()  # folders mounted read-only while the command runs
    limits: tuple[tuple[int, int], ...] = ()  # (resource.RLIMIT_..., value) for the command
    environ: tuple[tuple[str, str], ...] = ()  # extra environment variables
    check: Callable[[Env, subprocess.CompletedProcess], None] | None = None  # more, for exit-0 rows
    slow: bool = False


GiB = 1 << 30
MEMORY_CAP = ((resource.RLIMIT_DATA, 2 * GiB),)


# ---- setup helpers (reusable: each takes the Env and makes files under env.tmp) ------------------------------


def wav(name: str, seconds: float = 1.0, subtype: str = "PCM_16", samples=None) -> Callable[[Env], Path]:
    """A setup that writes a WAV (a sawtooth, or `samples`) at {tmp}/name; any name, even one not UTF-8."""

    def make(env: Env) -> Path:
        import soundfile as sf

        path = env.tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        data = sawtooth(220.0, RATE, seconds) if samples is None else samples
        with open(path, "wb") as f:  # a file object: soundfile cannot take every name that Python can
            sf.write(f, data, RATE, subtype=subtype, format="WAV")
        return path

    return make


def text(name: str, content: str | bytes) -> Callable[[Env], Path]:
    def make(env: Env) -> Path:
        path = env.tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content.encode() if isinstance(content, str) else content)
        return path

    return make


def copy_corpus(env: Env, name: str = "corpus") -> Path:
    return shutil.copytree(env.corpus, env.tmp / name)


def copy_run(env: Env, name: str = "run") -> Path:
    return shutil.copytree(env.run, env.tmp / name, symlinks=True)


def steps(*makers: Callable[[Env], object]) -> Callable[[Env], None]:
    """One setup made of several."""

    def make(env: Env) -> None:
        for maker in makers:
            maker(env)

    return make


def nested_json(depth: int = 1500) -> str:
    """Nested objects, 5 bytes a level: 1500 levels is a 7.5 KB file that json's parser cannot descend."""
    return '{"a":' * depth + "1" + "}" * depth


def deep_meta(env: Env) -> None:
    (copy_corpus(env) / "meta.json").write_text(nested_json())


def edit_meta(**changes) -> Callable[[Env], None]:
    def make(env: Env) -> None:
        meta_path = copy_corpus(env) / "meta.json"
        meta_path.write_text(json.dumps({**json.loads(meta_path.read_text()), **changes}))

    return make


def fifo(name: str) -> Callable[[Env], Path]:
    def make(env: Env) -> Path:
        path = env.tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        os.mkfifo(path)
        return path

    return make


def link(name: str, target: str) -> Callable[[Env], Path]:
    def make(env: Env) -> Path:
        (env.tmp / name).symlink_to(env.path(target))
        return env.tmp / name

    return make


def folder(name: str) -> Callable[[Env], Path]:
    def make(env: Env) -> Path:
        (env.tmp / name).mkdir(parents=True, exist_ok=True)
        return env.tmp / name

    return make


def damage(step: int) -> Callable[[Env], None]:
    """A setup that copies the run to {tmp}/run (once) and truncates the biggest params file of a checkpoint."""

    def make(env: Env) -> None:
        run = env.tmp / "run" if (env.tmp / "run").exists() else copy_run(env)
        params = run / "checkpoints" / str(step) / "params"  # what sampling reads (and checks)
        biggest = max((p for p in params.rglob("*") if p.is_file()), key=os.path.getsize)
        biggest.write_bytes(biggest.read_bytes()[:10])

    return make


def audio_file(name: str, fmt: str, frames: int) -> Callable[[Env, subprocess.CompletedProcess], None]:
    """A check: {tmp}/name is a `fmt` file of `frames` frames that soundfile reads (no temporary files left)."""

    def check(env: Env, proc: subprocess.CompletedProcess) -> None:
        import soundfile as sf

        info = sf.info(os.fsencode(env.tmp / name))  # bytes: soundfile cannot encode every name
        assert (info.format, info.frames) == (fmt, frames), info
        assert not [p for p in os.listdir(env.tmp) if p.endswith(".tmp")]

    return check


def exists(*names: str) -> Callable[[Env, subprocess.CompletedProcess], None]:
    def check(env: Env, proc: subprocess.CompletedProcess) -> None:
        for name in names:
            assert env.path(name).is_file(), name

    return check


NOT_UTF8 = os.fsdecode(b"voice\xff.wav")  # a name the file system holds but UTF-8 cannot spell
NAN_WAV = wav("nan.wav", subtype="FLOAT", samples=np.full(RATE, np.nan, np.float32))
SOME_INF = wav(
    "inf.wav", subtype="FLOAT", samples=np.where(np.arange(RATE) % 100 == 0, np.inf, 0.25).astype(np.float32)
)
TRAIN_TINY = ("--config", "tiny", "--set", "model.rnn_size=32", "--set", "train.batch_size=8")
SAMPLE = ("sample", "--run", "{run}", "--length", "100")
HUGE = "10000000000000"  # 10^13 samples: 9.1 TiB

CASES = [
    # -- 1. a corpus given as something else, and JSON or TOML that no parser survives
    Case("info-of-a-wav", ("info", "{tmp}/a.wav"), ("a.wav is a file, not a corpus folder", "prepare"),
         setup=wav("a.wav"), keep=("{tmp}/a.wav",)),
    Case("info-of-data-u8", ("info", "{corpus}/data.u8"), ("is a file of the corpus", "folder itself")),
    Case("info-of-a-broken-link", ("info", "{tmp}/link"), ("broken symbolic link",), setup=link("link", "{tmp}/gone")),
    Case("info-empty-argument", ("info", ""), ("empty path",)),
    Case("train-data-is-a-wav", ("train", *TRAIN_TINY, "--data", "{tmp}/a.wav", "--out", "{tmp}/r"),
         ("a.wav is a file, not a corpus folder",), setup=wav("a.wav"), absent=("{tmp}/r",)),
    Case("info-deep-meta", ("info", "{tmp}/corpus"), ("meta.json is not valid JSON", "nested too deeply"),
         setup=deep_meta, keep=("{tmp}/corpus/meta.json",)),
    Case("train-deep-meta", ("train", *TRAIN_TINY, "--data", "{tmp}/corpus", "--out", "{tmp}/r"),
         ("nested too deeply",), setup=deep_meta, absent=("{tmp}/r",)),
    Case("eval-deep-meta", ("eval", "--run", "{run}", "--data", "{tmp}/corpus"), ("nested too deeply",),
         setup=deep_meta),
    Case("info-meta-not-utf8", ("info", "{tmp}/corpus"), ("not UTF-8",),
         setup=lambda env: (copy_corpus(env) / "meta.json").write_bytes(b'{"codec": "\xff"}')),
    Case("info-meta-bad-source", ("info", "{tmp}/corpus"), ("source 0 is not an object",), setup=edit_meta(sources=[17])),
    Case("report-deep-config", ("report", "--run", "{tmp}/run"), ("config.toml", "nested too deeply"),
         setup=lambda env: (copy_run(env) / "config.toml").write_text("a = " + "[" * 3000 + "]" * 3000),
         absent=("{tmp}/run/report.html", "{tmp}/run/report_files")),
    Case("report-deep-corpus-json", ("report", "--run", "{tmp}/run"), ("corpus.json", "nested too deeply"),
         setup=lambda env: (copy_run(env) / "corpus.json").write_text(nested_json()), code=0),
    Case("report-odd-corpus-json", ("report", "--run", "{tmp}/run"), ("the corpus",), code=0,
         setup=lambda env: (copy_run(env) / "corpus.json").write_text(
             '{"splits": {"train": 5, "val": [1]}, "sources": [3, {"path": 4}], "length": 9, "rate": "x"}')),

    # -- 2. advice that is right, and that applies to the command it comes from
    Case("prepare-bytes-empty-folder", ("prepare", "{tmp}/in", "-o", "{tmp}/c", "--codec", "bytes"),
         ("holds no files",), unsaid=("--codec bytes",), setup=folder("in"), absent=("{tmp}/c",)),
    Case("prepare-folder-of-text", ("prepare", "{tmp}/in", "-o", "{tmp}/c"),
         ("holds no audio files", "notes.txt", "--codec bytes"), setup=text("in/notes.txt", "mine"), absent=("{tmp}/c",)),
    Case("prepare-text-file", ("prepare", "{tmp}/notes.txt", "-o", "{tmp}/c"), ("not audio", "--codec bytes"),
         setup=text("notes.txt", "hello\n" * 100), absent=("{tmp}/c",)),
    Case("sample-prime-text", (*SAMPLE, "--prime", "{tmp}/notes.txt", "-o", "{tmp}/o.wav"),
         ("notes.txt is not audio", "linear corpus"), unsaid=("--codec",), setup=text("notes.txt", "hello\n" * 100)),
    Case("prepare-not-utf8-name", ("prepare", "{tmp}/" + NOT_UTF8, "-o", "{tmp}/c", "--rate", "8000"), ("8,000 symbols",),
         code=0, setup=wav(NOT_UTF8), check=exists("{tmp}/c/data.u8")),
    Case("info-not-utf8-source", ("info", "{tmp}/c"), ("voice",), code=0, environ=(("PYTHONIOENCODING", "utf-8"),),
         setup=lambda env: (wav(NOT_UTF8)(env), run_jaxvoice("prepare", env.tmp / NOT_UTF8, "-o", env.tmp / "c", check=True))),
    Case("sample-prime-not-utf8-name", (*SAMPLE, "--prime", "{tmp}/" + NOT_UTF8, "-o", "{tmp}/o.wav"), (), code=0,
         setup=wav(NOT_UTF8, seconds=0.1), check=audio_file("o.wav", "WAV", 100)),
    Case("sample-output-not-utf8-name", (*SAMPLE, "-o", "{tmp}/" + NOT_UTF8.replace(".wav", ".flac")), (), code=0,
         check=audio_file(NOT_UTF8.replace(".wav", ".flac"), "FLAC", 100)),
    Case("report-not-utf8-sample", ("report", "--run", "{tmp}/run"), (), code=0,
         setup=lambda env: (copy_run(env), wav("run/samples/step_4" + NOT_UTF8)(env)),
         check=lambda env, proc: "step_4voice%FF.wav" in (env.tmp / "run" / "report.html").read_text()),
    Case("plot-not-utf8-csv", ("plot", "{tmp}/" + NOT_UTF8 + ".csv", "-o", "{tmp}/p.png"), (), code=0,
         environ=(("PYTHONIOENCODING", "utf-8"),), check=exists("{tmp}/p.png"),
         setup=lambda env: shutil.copy(env.run / "train.csv", env.tmp / (NOT_UTF8 + ".csv"))),

    # -- 3. sample writes the format its output's extension names, or refuses it
    Case("sample-flac", (*SAMPLE, "-o", "{tmp}/o.flac"), (), code=0, check=audio_file("o.flac", "FLAC", 100)),
    Case("sample-ogg", (*SAMPLE, "-o", "{tmp}/o.ogg"), (), code=0, check=audio_file("o.ogg", "OGG", 100)),
    Case("sample-aiff-two-streams", (*SAMPLE, "--num", "2", "-o", "{tmp}/o.aiff"), (), code=0,
         check=lambda env, proc: [audio_file(f"o_{i}.aiff", "AIFF", 100)(env, proc) for i in range(2)]),
    Case("sample-w64", (*SAMPLE, "-o", "{tmp}/o.w64"), (), code=0, check=audio_file("o.w64", "W64", 100)),
    Case("sample-unknown-extension", (*SAMPLE, "-o", "{tmp}/o.xyz"), ("'.xyz'", ".wav", ".flac"), absent=("{tmp}/o.xyz",)),
    Case("sample-txt-extension", (*SAMPLE, "--num", "2", "-o", "{tmp}/new/o.txt"), ("'.txt'",), absent=("{tmp}/new",)),

    # -- 4. lengths, streams and seeds that cannot work, refused before anything is sampled
    Case("sample-longer-than-a-wav", (*SAMPLE[:3], "--length", HUGE, "-o", "{tmp}/o.wav"),
         ("4 GiB", "WAV", ".w64"), absent=("{tmp}/o.wav",)),
    Case("sample-longer-than-the-disk", (*SAMPLE[:3], "--length", HUGE, "-o", "{tmp}/o.w64"),
         ("need about 9.1 TiB", "free"), absent=("{tmp}/o.w64",)),
    Case("sample-seconds-beyond-a-wav", (*SAMPLE[:3], "--seconds", "1e300", "-o", "{tmp}/o.wav"), ("4 GiB",)),
    Case("sample-every-checkpoint-too-long", ("sample", "--run", "{tmp}/run", "--checkpoint", "all", "--length", HUGE),
         ("4 GiB", "--checkpoint STEP -o NAME.w64"), setup=copy_run, absent=("{tmp}/run/samples",)),
    Case("sample-seconds-inf", (*SAMPLE[:3], "--seconds", "inf", "-o", "{tmp}/o.wav"), ("--seconds", "inf")),
    Case("sample-seconds-nan", (*SAMPLE[:3], "--seconds", "nan", "-o", "{tmp}/o.wav"), ("--seconds", "nan")),
    Case("sample-seed-too-big", (*SAMPLE, "--seed", "99999999999999999999999", "-o", "{tmp}/o.wav"),
         ("--seed", "4294967295")),
    Case("sample-seed-negative", (*SAMPLE, "--seed", "-1", "-o", "{tmp}/o.wav"), ("--seed", "0 to")),
    Case("sample-streams-beyond-memory", (*SAMPLE[:3], "--length", "2048", "--num", "100000", "-o", "{tmp}/o.wav"),
         ("memory", "--num"), limits=MEMORY_CAP, absent=("{tmp}/o_0.wav",)),
    Case("sample-chunk-beyond-memory", (*SAMPLE[:3], "--length", "1000000000", "--chunk", "1000000000", "-o",
         "{tmp}/o.w64"), ("memory", "--chunk"), limits=MEMORY_CAP),
    Case("sample-chunk-longer-than-the-sample", (*SAMPLE, "--chunk", "1000000000000", "-o", "{tmp}/o.wav"), (),
         code=0, limits=MEMORY_CAP, check=audio_file("o.wav", "WAV", 100)),
    Case("sample-streams-beyond-open-files", (*SAMPLE, "--num", "1000", "-o", "{tmp}/o.wav"), ("--num", "ulimit -n"),
         limits=((resource.RLIMIT_NOFILE, 256),)),

    # -- 5. sample --checkpoint all goes past a damaged checkpoint
    Case("sample-all-skips-a-damaged-one", ("sample", "--run", "{tmp}/run", "--checkpoint", "all", "--length", "100"),
         ("checkpoint step 2", "damaged", "skipped 1 damaged checkpoint"), code=0, setup=damage(2),
         absent=("{tmp}/run/samples/step_2.wav",), check=audio_file("run/samples/step_4.wav", "WAV", 100)),
    Case("sample-all-damaged", ("sample", "--run", "{tmp}/run", "--checkpoint", "all", "--length", "100"),
         ("every checkpoint is damaged", "step 2", "step 4"), setup=steps(damage(2), damage(4)),
         absent=("{tmp}/run/samples",)),

    # -- 6. prepare: audio that is not numbers, and a corpus folder that holds the user's files
    Case("prepare-all-nan", ("prepare", "{tmp}/nan.wav", "-o", "{tmp}/c", "--rate", "8000"),
         ("8,000 of 8,000 samples are NaN or infinite", "silence"), code=0, setup=NAN_WAV, check=exists("{tmp}/c/meta.json")),
    Case("prepare-some-inf", ("prepare", "{tmp}/inf.wav", "-o", "{tmp}/c", "--rate", "8000"),
         ("80 of 8,000 samples", "full scale"), code=0, setup=SOME_INF, check=exists("{tmp}/c/meta.json")),
    Case("prepare-force-over-the-users-files", ("prepare", "{tmp}/a.wav", "-o", "{tmp}/corpus", "--force"),
         ("notes.txt", "prepare did not write"), setup=steps(wav("a.wav"), copy_corpus, text("corpus/notes.txt", "mine")),
         keep=("{tmp}/corpus/notes.txt", "{tmp}/corpus/data.u8", "{tmp}/corpus/meta.json")),
    Case("prepare-force-over-a-corpus", ("prepare", "{tmp}/a.wav", "-o", "{tmp}/corpus", "--force", "--rate", "8000"),
         ("8,000 symbols",), code=0, setup=steps(wav("a.wav"), copy_corpus),
         replaced=("{tmp}/corpus/data.u8", "{tmp}/corpus/meta.json")),
    Case("prepare-over-a-file", ("prepare", "{tmp}/a.wav", "-o", "{tmp}/a.wav", "--force"), ("a file, not a folder",),
         unsaid=("add --force",), setup=wav("a.wav")),
    Case("prepare-below-a-file", ("prepare", "{tmp}/a.wav", "-o", "{tmp}/a.wav/c"), ("a file, not a folder",),
         setup=wav("a.wav")),
    Case("prepare-into-dev-null", ("prepare", "{tmp}/a.wav", "-o", "/dev/null", "--force"), ("character device",),
         setup=wav("a.wav")),

    # -- 7. every command makes the missing folders of its outputs (and removes them again if it fails)
    Case("encode-makes-folders", ("encode", "{tmp}/a.wav", "-o", "{tmp}/x/y/a.txt"), (), code=0, setup=wav("a.wav"),
         check=exists("{tmp}/x/y/a.txt")),
    Case("decode-makes-folders", ("decode", "{tmp}/a.txt", "-o", "{tmp}/x/y/a.bin"), (), code=0,
         setup=text("a.txt", "abc"), check=exists("{tmp}/x/y/a.bin")),
    Case("decode-fails-and-removes-its-folders", ("decode", "{tmp}/a.txt", "-o", "{tmp}/x/y/a.bin"),
         ("not one of the 256 characters",), setup=text("a.txt", "abc def"), absent=("{tmp}/x",)),
    Case("sample-makes-folders", (*SAMPLE, "-o", "{tmp}/x/y/o.wav"), (), code=0, check=audio_file("x/y/o.wav", "WAV", 100)),
    Case("plot-makes-folders", ("plot", "{run}/train.csv", "-o", "{tmp}/x/y/p.png"), (), code=0, check=exists("{tmp}/x/y/p.png")),
    Case("encode-below-a-file", ("encode", "{tmp}/a.wav", "-o", "{tmp}/a.wav/x/a.txt"), ("a file, not a folder",),
         setup=wav("a.wav")),

    # -- 8. read-only folders: one line, and nothing left behind
    Case("plot-into-read-only", ("plot", "{run}/train.csv", "-o", "{tmp}/ro/p.png"), ("cannot write", "read-only"),
         setup=folder("ro"), read_only=("{tmp}/ro",)),
    Case("plot-run-read-only", ("plot", "--run", "{tmp}/ro/run"), ("cannot write", "read-only"),
         setup=lambda env: copy_run(env, "ro/run"), read_only=("{tmp}/ro",)),
    Case("encode-into-read-only", ("encode", "{run}/train.csv", "-o", "{tmp}/ro/a.txt"), ("read-only",),
         setup=folder("ro"), read_only=("{tmp}/ro",)),
    Case("decode-into-read-only-subfolder", ("decode", "{tmp}/a.txt", "-o", "{tmp}/ro/x/a.bin"), ("read-only",),
         setup=steps(folder("ro"), text("a.txt", "abc")), read_only=("{tmp}/ro",)),
    Case("prepare-into-read-only", ("prepare", "{tmp}/a.wav", "-o", "{tmp}/ro/c"), ("read-only",),
         setup=steps(folder("ro"), wav("a.wav")), read_only=("{tmp}/ro",)),
    Case("sample-into-read-only", (*SAMPLE, "-o", "{tmp}/ro/o.wav"), ("cannot write", "read-only"),
         setup=folder("ro"), read_only=("{tmp}/ro",)),
    Case("sample-flac-into-read-only", (*SAMPLE, "-o", "{tmp}/ro/o.flac"), ("cannot write", "o.flac", "read-only"),
         unsaid=(".tmp",), setup=folder("ro"), read_only=("{tmp}/ro",)),
    Case("sample-read-only-run", ("sample", "--run", "{tmp}/ro/run", "--length", "100"), ("samples", "read-only"),
         setup=lambda env: copy_run(env, "ro/run"), read_only=("{tmp}/ro",)),
    Case("report-read-only-run", ("report", "--run", "{tmp}/ro/run"), ("read-only",),
         setup=lambda env: copy_run(env, "ro/run"), read_only=("{tmp}/ro",)),

    # -- 10. the neighbours: FIFOs, devices, broken links, folders where files go and files where folders go
    Case("plot-smooth-beyond-int64", ("plot", "{run}/train.csv", "-o", "{tmp}/p.png", "--smooth", str(10**20)), (),
         code=0, check=exists("{tmp}/p.png")),
    Case("plot-a-fifo", ("plot", "{tmp}/log.csv", "-o", "{tmp}/p.png"), ("FIFO",), setup=fifo("log.csv")),
    Case("plot-dev-zero", ("plot", "/dev/zero", "-o", "{tmp}/p.png"), ("character device",)),
    Case("encode-dev-zero", ("encode", "/dev/zero", "-o", "{tmp}/z.txt"), ("character device",)),
    Case("decode-a-fifo", ("decode", "{tmp}/t.txt", "-o", "{tmp}/z.bin"), ("FIFO",), setup=fifo("t.txt")),
    Case("prepare-a-fifo", ("prepare", "{tmp}/f.wav", "-o", "{tmp}/c"), ("FIFO",), setup=fifo("f.wav")),
    Case("prepare-folder-with-a-fifo", ("prepare", "{tmp}/in", "-o", "{tmp}/c", "--codec", "bytes"),
         ("skipped 1", "FIFO"), code=0, setup=steps(text("in/a.bin", "abcdef" * 10), fifo("in/f.bin")),
         check=exists("{tmp}/c/data.u8")),
    Case("prepare-a-broken-link", ("prepare", "{tmp}/l.wav", "-o", "{tmp}/c"), ("broken symbolic link",),
         setup=link("l.wav", "{tmp}/gone.wav")),
    Case("prepare-empty-argument", ("prepare", "", "-o", "{tmp}/c"), ("INPUT", "empty path")),
    Case("sample-prime-a-fifo", (*SAMPLE, "--prime", "{tmp}/p.wav", "-o", "{tmp}/o.wav"), ("FIFO",), setup=fifo("p.wav")),
    Case("sample-prime-dev-zero", (*SAMPLE, "--prime", "/dev/zero", "-o", "{tmp}/o.wav"), ("character device",)),
    Case("sample-prime-a-folder", (*SAMPLE, "--prime", "{tmp}", "-o", "{tmp}/o.wav"), ("a folder",)),
    Case("sample-prime-empty", (*SAMPLE, "--prime", "{tmp}/p.wav", "-o", "{tmp}/o.wav"), ("empty",),
         setup=text("p.wav", b"")),
    Case("sample-to-dev-null", (*SAMPLE, "-o", "/dev/null", "--force"), ("character device",)),
    Case("sample-to-a-folder", (*SAMPLE, "-o", "{tmp}"), ("is a folder",)),
    Case("sample-below-a-file", (*SAMPLE, "-o", "{tmp}/a.wav/o.wav"), ("a file, not a folder",), setup=wav("a.wav")),
    Case("sample-run-is-a-file", ("sample", "--run", "{tmp}/a.wav"), ("is a file, not a folder",), setup=wav("a.wav")),
    Case("sample-output-empty-argument", (*SAMPLE, "-o", ""), ("-o", "empty path")),
    Case("report-run-is-a-file", ("report", "--run", "{tmp}/a.wav"), ("is a file, not a folder",), setup=wav("a.wav")),
    Case("report-html-is-a-folder", ("report", "--run", "{tmp}/run", "--force"), ("report.html is a folder",),
         setup=lambda env: (copy_run(env) / "report.html").mkdir()),

    # -- train, eval and demo: only a jaxvoice run is continued; sizes, seeds and places that cannot work
    Case("train-resume-a-users-folder", ("train", *TRAIN_TINY, "--data", "{corpus}", "--out", "{tmp}/mine", "--resume"),
         ("not a jaxvoice run", "another --out"), setup=steps(text("mine/train.csv", "my,own\n1,2\n"),
                                                              text("mine/notes.txt", "mine")),
         keep=("{tmp}/mine/train.csv", "{tmp}/mine/notes.txt"), absent=("{tmp}/mine/config.toml",)),
    Case("train-resume-a-users-folder-no-data", ("train", "--out", "{tmp}/mine", "--resume"),
         ("not a jaxvoice run",), unsaid=("--data",), setup=text("mine/train.csv", "my,own\n1,2\n"),
         keep=("{tmp}/mine/train.csv",)),
    Case("train-new-run-in-a-users-folder", ("train", *TRAIN_TINY, "--data", "{corpus}", "--out", "{tmp}/mine"),
         ("not a jaxvoice run",), unsaid=("add --resume",), setup=text("mine/config.toml", "[mine]\n"),
         keep=("{tmp}/mine/config.toml",)),
    Case("train-out-is-a-file", ("train", "--out", "{tmp}/a_file", "--resume"), ("is a file", "--out"),
         setup=text("a_file", "mine"), keep=("{tmp}/a_file",)),
    Case("train-out-empty-argument", ("train", *TRAIN_TINY, "--data", "{corpus}", "--out", ""), ("--out", "empty path")),
    Case("train-into-read-only", ("train", *TRAIN_TINY, "--data", "{corpus}", "--out", "{tmp}/ro/a/run"),
         ("cannot create", "--out"), setup=folder("ro"), read_only=("{tmp}/ro",), absent=("{tmp}/ro/a",)),
    Case("train-resume-read-only-run", ("train", "--out", "{tmp}/run", "--resume", "--steps", "6"),
         ("cannot write the logs",), setup=copy_run, read_only=("{tmp}/run",)),
    Case("train-resume-edited-config", ("train", "--out", "{tmp}/run", "--resume", "--steps", "6"),
         ("model.rnn_size", "32 in the checkpoint", "16 in config.toml"), unsaid=("damaged",),
         setup=lambda env: (copy_run(env) / "config.toml").write_text(
             (env.run / "config.toml").read_text().replace("rnn_size = 32", "rnn_size = 16")),
         absent=("{tmp}/run/damaged_checkpoints",)),
    Case("train-resume-every-checkpoint-damaged", ("train", "--out", "{tmp}/run", "--resume", "--steps", "6"),
         ("no intact checkpoint", "step 4", "step 2", "backup"), setup=steps(damage(4), damage(2)),
         absent=("{tmp}/run/damaged_checkpoints",)),
    Case("train-resume-config-lost", ("train", "--out", "{tmp}/run", "--resume"),
         ("looks like a jaxvoice run", "config.toml"), setup=lambda env: (copy_run(env) / "config.toml").unlink()),
    Case("train-resume-deep-corpus-json", ("train", "--out", "{tmp}/run", "--resume"),
         ("looks like a jaxvoice run", "corpus.json"),
         setup=lambda env: (copy_run(env) / "corpus.json").write_text(nested_json())),
    Case("train-seed-too-big", ("train", *TRAIN_TINY, "--data", "{corpus}", "--out", "{tmp}/r",
                                "--set", "train.seed=99999999999999999999"), ("train.seed", "4294967295"),
         absent=("{tmp}/r",)),
    Case("train-size-beyond-int32", ("train", *TRAIN_TINY, "--data", "{corpus}", "--out", "{tmp}/r",
                                     "--set", "train.eval_every=99999999999"), ("train.eval_every", "at most"),
         absent=("{tmp}/r",)),
    Case("train-steps-beyond-int32", ("train", *TRAIN_TINY, "--data", "{corpus}", "--out", "{tmp}/r",
                                      "--steps", "3000000000"), ("--steps",), absent=("{tmp}/r",)),
    Case("train-rnn-size-no-machine-has", ("train", *TRAIN_TINY, "--data", "{corpus}", "--out", "{tmp}/r",
                                           "--set", "model.rnn_size=1000000000"),
         ("needs about", "EiB", "model.rnn_size"), limits=MEMORY_CAP, absent=("{tmp}/r",)),
    Case("train-beyond-the-memory-cap", ("train", *TRAIN_TINY, "--data", "{corpus}", "--out", "{tmp}/r",
                                         "--set", "model.rnn_size=12000"),
         ("needs about", "GiB", "available"), limits=MEMORY_CAP, absent=("{tmp}/r",)),
    Case("train-coordinator-without-port", ("train", *TRAIN_TINY, "--data", "{corpus}", "--out", "{tmp}/r",
                                            "--coordinator", "node0", "--num-processes", "2", "--process-id", "0"),
         ("HOST:PORT",), absent=("{tmp}/r",)),
    Case("train-no-processes", ("train", *TRAIN_TINY, "--data", "{corpus}", "--out", "{tmp}/r",
                                "--coordinator", "node0:1234", "--num-processes", "0", "--process-id", "0"),
         ("--num-processes",), absent=("{tmp}/r",)),
    Case("train-import-missing-module", ("train", "--import", "no_such_cells", *TRAIN_TINY, "--data", "{corpus}",
                                         "--out", "{tmp}/r"), ("no module named 'no_such_cells'",), absent=("{tmp}/r",)),
    Case("train-unknown-cell", ("train", *TRAIN_TINY, "--set", "model.cell=mgu", "--data", "{corpus}", "--out",
                                "{tmp}/r"), ("model.cell 'mgu'", "--import"), absent=("{tmp}/r",)),
    Case("eval-garbage-manifest", ("eval", "--run", "{tmp}/run", "--checkpoint", "4"), ("4", "unverified"), code=0,
         setup=lambda env: (copy_run(env) / "checkpoint_manifests" / "4.json").write_text(nested_json())),
    Case("eval-best-meta-lost", ("eval", "--run", "{tmp}/run"), ("step 4", "meta does not read"), code=0,
         setup=lambda env: shutil.rmtree(copy_run(env) / "checkpoints" / "4" / "meta")),
    Case("eval-moved-corpus", ("eval", "--run", "{run}", "--data", "{tmp}/other"), ("not the one this run",),
         unsaid=("resume",), setup=lambda env: run_jaxvoice(
             "prepare", write_audio(env.tmp / "o.wav", sawtooth(300.0, RATE, 4.0), RATE), "-o", env.tmp / "other",
             "--rate", RATE, "-q", check=True)),
    Case("demo-seed-negative", ("demo", "--out", "{tmp}/d", "--seed", "-5"), ("--seed", "4294967295"),
         absent=("{tmp}/d",)),
    Case("demo-seed-too-big", ("demo", "--out", "{tmp}/d", "--seed", "99999999999999999999"), ("--seed",),
         absent=("{tmp}/d",)),
    Case("demo-out-empty-argument", ("demo", "--out", ""), ("--out", "empty path")),
    # -- model families: sizes a frame-level tier cannot read, names nobody registered
    Case("train-tiered-window-not-whole-frames", ("train", *TRAIN_TINY, "--set", "model.kind=tiered",
                                                  "--set", "train.seq_length=50", "--data", "{corpus}", "--out", "{tmp}/r"),
         ("train.seq_length must be a multiple of 16",), absent=("{tmp}/r",)),
    Case("train-tiered-window-shorter-than-a-frame", ("train", *TRAIN_TINY, "--set", "model.kind=tiered", "--set",
                                                      "model.frame_size=64", "--set", "train.seq_length=32",
                                                      "--data", "{corpus}", "--out", "{tmp}/r"),
         ("multiple of 64",), absent=("{tmp}/r",)),
    Case("train-tiered-four-tiers", ("train", *TRAIN_TINY, "--set", "model.kind=tiered", "--set", "model.tiers=4",
                                     "--data", "{corpus}", "--out", "{tmp}/r"), ("model.tiers must be 2 or 3",),
         absent=("{tmp}/r",)),
    Case("train-tiered-top-frame-not-whole-frames", ("train", *TRAIN_TINY, "--set", "model.kind=tiered", "--set",
                                                     "model.tiers=3", "--set", "model.top_frame_size=24",
                                                     "--data", "{corpus}", "--out", "{tmp}/r"),
         ("model.top_frame_size must be a multiple of model.frame_size (16)",), absent=("{tmp}/r",)),
    Case("train-tiered-unknown-upsampling", ("train", *TRAIN_TINY, "--set", "model.kind=tiered", "--set",
                                             "model.upsampling=nearest", "--data", "{corpus}", "--out", "{tmp}/r"),
         ("model.upsampling must be one of per_position, shared",), absent=("{tmp}/r",)),
    Case("train-tiered-unknown-sample-input", ("train", *TRAIN_TINY, "--set", "model.kind=tiered", "--set",
                                               "model.sample_input=mulaw", "--data", "{corpus}", "--out",
                                               "{tmp}/r"),
         ("model.sample_input must be one of embedded, scaled, both",), absent=("{tmp}/r",)),
    Case("train-tiered-unknown-conditioning", ("train", *TRAIN_TINY, "--set", "model.kind=tiered", "--set",
                                               "model.sample_conditioning=all", "--data", "{corpus}", "--out",
                                               "{tmp}/r"),
         ("model.sample_conditioning must be one of first, every",), absent=("{tmp}/r",)),
    Case("train-tiered-rnn-every", ("train", *TRAIN_TINY, "--set", "model.kind=tiered", "--set",
                                    "model.sample_level=rnn", "--set", "model.sample_conditioning=every", "--data",
                                    "{corpus}", "--out", "{tmp}/r"),
         ('model.sample_conditioning = "every" conditions the layers of an MLP',), absent=("{tmp}/r",)),
    Case("train-tiered-negative-history", ("train", *TRAIN_TINY, "--set", "model.kind=tiered", "--set",
                                           "model.sample_history=-16", "--data", "{corpus}", "--out", "{tmp}/r"),
         ("model.sample_history must be >= 0",), absent=("{tmp}/r",)),
    Case("train-tiered-history-rank-without-history", ("train", *TRAIN_TINY, "--set", "model.kind=tiered", "--set",
                                                       "model.sample_history_rank=32", "--data", "{corpus}",
                                                       "--out", "{tmp}/r"),
         ("model.sample_history_rank needs", "model.sample_history > 0"), absent=("{tmp}/r",)),
    Case("train-tiered-negative-history-rank", ("train", *TRAIN_TINY, "--set", "model.kind=tiered", "--set",
                                                "model.sample_history=64", "--set", "model.sample_history_rank=-1",
                                                "--data", "{corpus}", "--out", "{tmp}/r"),
         ("model.sample_history_rank must be >= 0",), absent=("{tmp}/r",)),
    Case("train-negative-weight-decay", ("train", *TRAIN_TINY, "--set", "train.weight_decay=-0.1", "--data",
                                         "{corpus}", "--out", "{tmp}/r"),
         ("train.weight_decay must be >= 0",), absent=("{tmp}/r",)),
    Case("train-state-reset-prob-one", ("train", *TRAIN_TINY, "--set", "train.state_reset_prob=1", "--data",
                                        "{corpus}", "--out", "{tmp}/r"),
         ("train.state_reset_prob must be in [0, 1)",), absent=("{tmp}/r",)),
    Case("train-tiered-unknown-cell", ("train", *TRAIN_TINY, "--set", "model.kind=tiered", "--set", "model.cell=mgu",
                                       "--data", "{corpus}", "--out", "{tmp}/r"), ("model.cell 'mgu'", "--import"),
         absent=("{tmp}/r",)),
    Case("train-unknown-family", ("train", *TRAIN_TINY, "--set", "model.kind=wavenet", "--data", "{corpus}", "--out",
                                  "{tmp}/r"), ("model.kind 'wavenet'", "stack", "tiered"), absent=("{tmp}/r",)),
    Case("train-sampling-a-bytes-corpus", ("train", *TRAIN_TINY, "--set", "train.sample_seconds=1", "--data", "{tmp}/c",
                                           "--out", "{tmp}/r"), ("train.sample_seconds", "audio corpus"),
         setup=lambda env: run_jaxvoice("prepare", text("t.txt", "hello " * 2000)(env), "-o", env.tmp / "c",
                                        "--codec", "bytes", "-q", check=True), absent=("{tmp}/r",)),
]  # fmt: skip


# ---- running a case ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shared(tmp_path_factory) -> Env:
    """A 4 s sawtooth prepared at 8000 Hz and a tiny run trained on it (4 steps, checkpoints at 2 and 4)."""
    root = tmp_path_factory.mktemp("bad_input_shared")
    source = write_audio(root / "saw.wav", sawtooth(250.0, RATE, 4.0), RATE)
    run_jaxvoice("prepare", source, "-o", root / "corpus", "--rate", RATE, "--quiet", check=True)
    run_jaxvoice(
        "train", "--config", "tiny", "--data", root / "corpus", "--out", root / "run",
        "--set", "model.rnn_size=32", "--set", "train.batch_size=8", "--set", "train.seq_length=16",
        "--steps", 4, "--set", "train.checkpoint_every=2", "--quiet", check=True,
    )  # fmt: skip
    return Env(root / "unused", root / "corpus", root / "run")


def _read_only_method() -> str | None:
    """`mount` where this process may bind-mount a folder read-only in a private namespace (root), `chmod`
    where a folder without write permission stops it (not root), else None."""
    if os.geteuid() != 0:
        return "chmod"
    probe = Path(os.environ.get("TMPDIR", "/tmp")) / f"jaxvoice-ro-probe-{os.getpid()}"
    probe.mkdir(exist_ok=True)
    try:
        q = shlex.quote(str(probe))
        proc = subprocess.run(
            ["unshare", "-m", "--propagation", "private", "sh", "-c",
             f"mount --bind -o ro {q} {q} && ! touch {q}/x 2>/dev/null"],
            capture_output=True,
        )  # fmt: skip
        return "mount" if proc.returncode == 0 and not (probe / "x").exists() else None
    except OSError:
        return None
    finally:
        shutil.rmtree(probe, ignore_errors=True)


READ_ONLY = _read_only_method()


def snapshot(*roots: Path) -> dict[str, str]:
    """sha256 of every file (and "dir"/"link" for folders and symlinks) under `roots`, by path."""
    found = {}
    for root in roots:
        for folder, dirs, names in os.walk(root):
            for name in dirs + names:
                path = Path(folder) / name
                if path.is_symlink():
                    found[str(path)] = f"link to {os.readlink(path)}"
                elif path.is_dir():
                    found[str(path)] = "dir"
                elif path.is_file():
                    found[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
                else:
                    found[str(path)] = "special"
    return found


_WITH_LIMITS = """
import json, os, resource, sys
for kind, value in json.loads(sys.argv[1]):
    resource.setrlimit(kind, (value, value))
os.execvp(sys.argv[2], sys.argv[2:])
"""


def run_case(case: Case, env: Env) -> subprocess.CompletedProcess:
    args = [a.format(tmp=env.tmp, corpus=env.corpus, run=env.run) for a in case.args]
    cmd = [*jaxvoice_cmd(), *args]
    folders = [env.path(f) for f in case.read_only]
    if folders and READ_ONLY == "mount":
        script = "".join(
            f"mount --bind -o ro {shlex.quote(str(f))} {shlex.quote(str(f))} && " for f in folders
        )
        cmd = ["unshare", "-m", "--propagation", "private", "sh", "-c", script + 'exec "$@"', "sh", *cmd]

    if case.limits:  # set in a fresh Python that then becomes the command: no preexec_fn (fork) in a
        # test process whose other threads (JAX's, in this worker) could hold a lock the child needs
        cmd = [sys.executable, "-c", _WITH_LIMITS, json.dumps(case.limits), *cmd]
    modes = {f: f.stat().st_mode for f in folders} if READ_ONLY == "chmod" else {}
    for f in modes:
        f.chmod(0o555)
    try:
        return subprocess.run(
            cmd, capture_output=True, encoding="utf-8", errors="backslashreplace", timeout=600,
            stdin=subprocess.DEVNULL, env={**os.environ, **dict(case.environ)},
        )  # fmt: skip
    finally:
        for f, mode in modes.items():
            f.chmod(mode)


@pytest.mark.parametrize(
    "case", [pytest.param(c, id=c.id, marks=[pytest.mark.slow] if c.slow else []) for c in CASES]
)
def test_bad_input(case: Case, shared: Env, tmp_path: Path):
    env = shared._replace(tmp=tmp_path)
    if case.read_only and READ_ONLY is None:
        pytest.skip("no way to make a folder read-only here: root without mount namespaces")
    if case.setup is not None:
        case.setup(env)
    kept = {p: hashlib.sha256(env.path(p).read_bytes()).hexdigest() for p in case.keep}
    before = snapshot(tmp_path, shared.corpus, shared.run)

    proc = run_case(case, env)

    where = f"exit {proc.returncode}\nstdout: {proc.stdout[-3000:]}\nstderr: {proc.stderr[-3000:]}"
    assert proc.returncode == case.code, where
    assert "Traceback" not in proc.stderr, where
    after = snapshot(tmp_path, shared.corpus, shared.run)
    if case.code == 2:
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        assert len(lines) == 1, where
        assert lines[0].startswith(f"jaxvoice {case.args[0]}: error: "), where
        for phrase in case.phrases:
            assert phrase.lower() in lines[0].lower(), (phrase, lines[0])
        for phrase in case.unsaid:
            assert phrase.lower() not in lines[0].lower(), (phrase, lines[0])
        assert after == before, "an error changed files:\n" + _diff(before, after)
    else:
        told = proc.stderr + proc.stdout
        for phrase in case.phrases:
            assert phrase.lower() in told.lower(), (phrase, where)
        for phrase in case.unsaid:
            assert phrase.lower() not in told.lower(), (phrase, where)
        replaced = {str(env.path(p)) for p in case.replaced}
        changed = {p for p, h in before.items() if after.get(p) != h and p not in replaced}
        assert not changed, "files changed or lost:\n" + _diff(before, after)
        if case.check is not None:
            case.check(env, proc)
    for p, digest in kept.items():
        assert env.path(p).is_file() and hashlib.sha256(env.path(p).read_bytes()).hexdigest() == digest, p
    for p in case.absent:
        assert not os.path.lexists(env.path(p)), f"{p} exists"


def _diff(before: dict, after: dict) -> str:
    lines = [f"  lost {p}" for p in before if p not in after]
    lines += [f"  new {p}" for p in after if p not in before]
    lines += [f"  changed {p}" for p in before if p in after and before[p] != after[p]]
    return "\n".join(lines)


def test_the_table_has_no_duplicate_ids():
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids)), sorted(i for i in ids if ids.count(i) > 1)
