"""Making a corpus: every input streamed into `data.u8`, described by `meta.json` (see corpus.py, the reader).

`prepare` streams every input through audio.py + codec.py (or takes files as raw bytes) into data.u8,
hashing as it writes, then splits the stream contiguously like torch-rnn: first train, then val, then test.
It writes into a hidden temporary folder next to the target and renames it at the end, so a corpus is
either complete or absent, and it replaces an old corpus only while that holds nothing but its own two files.
This module defines the format's names and version; corpus.py reads what it writes.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import logging
import math
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from jaxvoice import __version__, audio, files, paths
from jaxvoice import codec as _codec
from jaxvoice.errors import UserError

_log = logging.getLogger(__name__)
FORMAT_VERSION = 1
DATA_FILE = "data.u8"
META_FILE = "meta.json"
SPLITS = ("train", "val", "test")
MIN_SPLIT_SYMBOLS = 2  # an input and its target
_BYTES_BLOCK = 1 << 20


# ---- inputs ------------------------------------------------------------------------------------------------


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def collect_inputs(
    inputs: Sequence[str | os.PathLike], codec: str, exclude: Path | None = None
) -> list[Path]:
    """Files in order: each input as given; a folder's files recursively, sorted by their path inside it
    (like `find | sort`: "b/c.wav" before "d.wav"), skipping hidden names, `exclude` (the output corpus),
    what is not a regular file (FIFOs, sockets, devices, broken links: named in one warning) and, for the
    audio codecs, files without an audio extension (files named explicitly are always taken)."""
    if not inputs:
        raise UserError("no inputs: give audio files or folders to prepare")
    collected: list[Path] = []
    for item in inputs:
        path = Path(item)
        found = paths.kind(path)
        if found == "a file":
            collected.append(path)
            continue
        if found == "missing":
            raise UserError(f"{path}: no such file or folder")
        if found != "a folder":
            raise UserError(f"{path} is {found}, not a file or folder: give audio files or folders")
        taken, other, special = [], [], []
        for root, dirs, names in os.walk(path):
            dirs[:] = [d for d in dirs if not d.startswith(".")]
            for name in names:
                file = Path(root) / name
                if name.startswith(".") or (exclude is not None and _inside(file.resolve(), exclude)):
                    continue
                if paths.kind(file) != "a file":
                    special.append(file)
                elif codec != "bytes" and file.suffix.lower() not in audio.AUDIO_EXTENSIONS:
                    other.append(file)
                else:
                    taken.append(file)
        if special:
            shown = ", ".join(f"{f} ({paths.kind(f)})" for f in special[:3])
            _log.warning(f"skipped {len(special)} name(s) in {path} that are not regular files: {shown}")
        if not taken:
            raise UserError(_nothing_in(path, codec, other))
        collected += sorted(taken, key=lambda f: f.relative_to(path).parts)
    return collected


def _nothing_in(folder: Path, codec: str, other: list[Path]) -> str:
    """Why a folder gave no inputs, and the advice that applies."""
    if codec == "bytes":
        return f"folder {folder} holds no files (hidden ones are skipped): give a folder with files in it"
    kinds = "audio files (.wav, .flac, .ogg, .mp3, ...)"
    if not other:
        return f"folder {folder} holds no files (hidden ones are skipped): give a folder with {kinds}"
    names = ", ".join(f.name for f in sorted(other)[:3])
    return (
        f"folder {folder} holds no {kinds}, only {len(other)} other file{'s' * (len(other) != 1)} "
        f"({names}{', ...' if len(other) > 3 else ''}); to take any files as raw bytes use --codec bytes"
    )


def check_fractions(val_frac: float, test_frac: float) -> None:
    if not (math.isfinite(val_frac) and math.isfinite(test_frac) and val_frac >= 0 and test_frac >= 0):
        raise UserError(f"--val-frac and --test-frac must be >= 0, got {val_frac} and {test_frac}")
    if val_frac + test_frac >= 1:
        raise UserError(
            f"--val-frac + --test-frac must be below 1 to leave data for training, got {val_frac} + {test_frac}"
        )


def split_offsets(length: int, val_frac: float, test_frac: float) -> dict[str, list[int]]:
    """torch-rnn's contiguous split of `length` symbols: val and test get floor(frac * length) each."""
    check_fractions(val_frac, test_frac)
    n_val, n_test = int(length * val_frac), int(length * test_frac)
    n_train = length - n_val - n_test
    sizes = {"train": n_train, "val": n_val, "test": n_test}
    fracs = {"train": 1.0, "val": val_frac, "test": test_frac}
    if any(fracs[s] > 0 and sizes[s] < MIN_SPLIT_SYMBOLS for s in SPLITS):
        raise UserError(
            f"corpus too short for the splits: {length} symbols give train {n_train} / val {n_val} / "
            f"test {n_test}, and each needs at least {MIN_SPLIT_SYMBOLS}: add more input or lower the fractions"
        )
    ends = np.cumsum([n_train, n_val, n_test]).tolist()
    return {"train": [0, ends[0]], "val": [ends[0], ends[1]], "test": [ends[1], ends[2]]}


# ---- prepare -----------------------------------------------------------------------------------------------


class _Sink:
    """Appends uint8 blocks to data.u8 and hashes them on the way (so no second pass over the data)."""

    def __init__(self, path: Path):
        self.file = open(path, "wb")  # noqa: SIM115 (closed in close())
        self.sha = hashlib.sha256()
        self.length = 0

    def write(self, symbols: np.ndarray) -> None:
        data = np.ascontiguousarray(symbols, dtype=np.uint8)
        self.file.write(data)
        self.sha.update(data)
        self.length += len(data)

    def close(self) -> None:
        self.file.close()


def _add_audio(sink: _Sink, info: audio.AudioInfo, rate: int, codec: str, progress) -> dict:
    start = sink.length
    size = os.path.getsize(info.path)
    frames_done = 0

    def on_read(frames: int) -> None:  # progress in input bytes, spread evenly over the frames
        nonlocal frames_done
        before = size * frames_done // info.frames
        frames_done = min(frames_done + frames, info.frames)
        progress.update(size * frames_done // info.frames - before)

    for block in audio.stream_mono(info.path, rate, on_read=on_read):
        sink.write(_codec.encode(codec, block))
    progress.update(size - size * frames_done // info.frames)  # an estimated frame count may fall short
    symbols = sink.length - start
    return {
        "path": str(Path(info.path).resolve()), "bytes": symbols, "seconds": round(symbols / rate, 6),
        "rate": info.rate, "channels": info.channels, "frames": info.frames, "format": info.format,
        "subtype": info.subtype,
    }  # fmt: skip


def _add_bytes(sink: _Sink, path: Path, progress) -> dict:
    start = sink.length
    try:
        with open(path, "rb") as f:
            while block := f.read(_BYTES_BLOCK):
                sink.write(np.frombuffer(block, dtype=np.uint8))
                progress.update(len(block))
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror}") from None
    return {"path": str(path.resolve()), "bytes": sink.length - start, "seconds": None}


def _check_out_dir(out_dir: Path, force: bool) -> None:
    """UserError unless `out_dir` is new, or (with `force`) a corpus folder holding only what prepare wrote.

    A folder with any other file in it is never replaced, even with --force: replacing means removing the
    old folder, and the user's notes or recordings in it would go with it."""
    found = paths.kind(out_dir)
    if found == "missing":
        above = paths.existing_ancestor(out_dir)
        if not above.is_dir():
            raise UserError(
                f"{above} is {paths.kind(above)}, not a folder, so {out_dir} cannot be made in it"
            )
        return
    if out_dir.is_symlink() or found != "a folder":
        what = "a symbolic link" if out_dir.is_symlink() else found
        raise UserError(f"{out_dir} is {what}, not a folder: choose another -o folder")
    contents = sorted(out_dir.iterdir())
    if contents and not (out_dir / META_FILE).is_file():
        raise UserError(
            f"{out_dir} is a folder but not a jaxvoice corpus (no {META_FILE}), so --force will not replace it: "
            "choose another -o folder"
        )
    others = [p.name for p in contents if p.name not in (DATA_FILE, META_FILE)]
    if others:
        shown = ", ".join(others[:3]) + (f" and {len(others) - 3} more" if len(others) > 3 else "")
        raise UserError(
            f"{out_dir} holds files prepare did not write ({shown}), so it will not be replaced: move them "
            "out of it, or choose another -o folder"
        )
    if not force:
        raise UserError(f"{out_dir} already exists: choose another -o folder or add --force to replace it")


def _replace_dir(new: Path, target: Path) -> None:
    """Put the finished `new` at `target`; an old corpus there is moved aside first and removed last."""
    if not target.exists():
        os.rename(new, target)
        return
    old = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.old-"))
    os.rename(target, old / target.name)
    try:
        os.rename(new, target)
    except BaseException:
        os.rename(old / target.name, target)
        raise
    finally:
        shutil.rmtree(old, ignore_errors=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def prepare(
    inputs: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    *,
    rate: int = 11025,
    codec: str = "linear",
    val_frac: float = 0.1,
    test_frac: float = 0.1,
    force: bool = False,
    quiet: bool = False,
) -> dict:
    """Turn `inputs` (files and folders, concatenated in order) into the corpus folder `out_dir`; returns the
    meta. With codec "bytes" every file is taken as raw bytes and `rate` is ignored (meta rate is null)."""
    from tqdm import tqdm

    codec = _codec.check_codec(codec)
    is_audio = codec in _codec.AUDIO_CODECS
    rate = audio.check_rate(rate) if is_audio else None
    check_fractions(val_frac, test_frac)
    out_dir = Path(out_dir)
    _check_out_dir(out_dir, force)
    input_files = collect_inputs(inputs, codec, exclude=out_dir.resolve())
    if is_audio:  # check every file before the long part starts
        try:
            infos = [audio.probe(f) for f in input_files]
        except audio.NotAudio as e:
            raise audio.NotAudio(
                e.path,
                e.reason,
                "give a WAV, FLAC, OGG or MP3 file, or use --codec bytes to take any file as raw bytes",
            ) from None
    else:
        for f in input_files:
            if f.stat().st_size == 0:
                raise UserError(f"{f} is empty (0 bytes): remove it from the inputs")

    def fill(sink: _Sink) -> list[dict]:
        total = sum(f.stat().st_size for f in input_files)
        # disable=None: a bar only when stderr is a terminal, so logs and error messages stay clean.
        off = True if quiet else None
        progress = tqdm(total=total, unit="B", unit_scale=True, desc="prepare", file=sys.stderr, disable=off)
        with progress:
            if is_audio:
                return [_add_audio(sink, info, rate, codec, progress) for info in infos]
            return [_add_bytes(sink, f, progress) for f in input_files]

    return _write(out_dir, fill, codec, rate, val_frac, test_frac)


def describe_symbols(
    length: int, sha256: str, codec: str, rate: int | None, val_frac: float, test_frac: float, sources: list
) -> dict:
    """The meta.json of a corpus of `length` symbols (checked: the splits must be able to hold data)."""
    is_audio = codec in _codec.AUDIO_CODECS
    return {
        "format_version": FORMAT_VERSION,
        "codec": codec,
        "rate": rate,
        "num_symbols": _codec.NUM_SYMBOLS,
        "length": length,
        "seconds": round(length / rate, 6) if is_audio else None,
        "splits": split_offsets(length, val_frac, test_frac),
        "val_frac": val_frac,
        "test_frac": test_frac,
        "sources": sources,
        "sha256": sha256,
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "jaxvoice_version": __version__,
    }


def _write(out_dir: Path, fill, codec: str, rate: int | None, val_frac: float, test_frac: float) -> dict:
    """Write a corpus into a temporary folder beside `out_dir` and rename it into place: `fill(sink)` writes
    the symbols and returns the sources' descriptions. A failure leaves nothing (not even made parents)."""
    made_parents = files.missing_parents(out_dir)
    tmp = None
    try:
        files.make_parents(out_dir)
        tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.tmp-"))
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes it private; a corpus is an ordinary folder
        sink = _Sink(tmp / DATA_FILE)
        with contextlib.closing(sink):
            sources = fill(sink)
        meta = describe_symbols(sink.length, sink.sha.hexdigest(), codec, rate, val_frac, test_frac, sources)
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        _replace_dir(tmp, out_dir)
    except BaseException as e:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        files.remove_made(made_parents)
        if isinstance(e, OSError):  # disk full, no permission: the user's to fix
            raise UserError(
                f"cannot write corpus {out_dir} ({e.strerror or e}): check free space and the folder's permissions"
            ) from None
        raise
    return meta


def write_corpus(corpus, out_dir: str | os.PathLike) -> dict:
    """Write a corpus made in memory (`corpus.from_array`) as the folder `out_dir`; returns its meta."""
    meta = corpus.meta
    out_dir = Path(out_dir)
    _check_out_dir(out_dir, force=False)

    def fill(sink: _Sink) -> list[dict]:
        sink.write(corpus.data)
        return meta["sources"]

    return _write(out_dir, fill, meta["codec"], meta["rate"], meta["val_frac"], meta["test_frac"])
