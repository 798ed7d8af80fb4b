"""A corpus: one folder with `data.u8` (the symbol stream, raw uint8) and `meta.json` (how it was made).

`prepare` streams every input through audio.py + codec.py (or takes files as raw bytes) into data.u8,
hashing as it writes, then splits the stream contiguously like torch-rnn: first train, then val, then test.
It writes into a hidden temporary folder next to the target and renames it at the end, so a corpus is
either complete or absent. `open_corpus` maps data.u8 read-only (np.memmap) so splits are views, not copies.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import math
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from jaxvoice import __version__, audio, files
from jaxvoice import codec as _codec
from jaxvoice.errors import UserError

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
    (like `find | sort`: "b/c.wav" before "d.wav"), skipping hidden names, `exclude` (the output corpus)
    and, for the audio codecs, files without an audio extension (files named explicitly are always taken)."""
    if not inputs:
        raise UserError("no inputs: give audio files or folders to prepare")
    files: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_file():
            files.append(path)
            continue
        if not path.is_dir():
            raise UserError(f"{path}: no such file or folder")
        found = []
        for root, dirs, names in os.walk(path):
            dirs[:] = [d for d in dirs if not d.startswith(".")]
            for name in names:
                file = Path(root) / name
                if name.startswith(".") or (exclude is not None and _inside(file.resolve(), exclude)):
                    continue
                if codec != "bytes" and file.suffix.lower() not in audio.AUDIO_EXTENSIONS:
                    continue
                found.append(file)
        if not found:
            kind = "files" if codec == "bytes" else "audio files (.wav, .flac, .ogg, .mp3, ...)"
            raise UserError(f"folder {path} holds no {kind}; for any files as raw bytes use --codec bytes")
        files += sorted(found, key=lambda f: f.relative_to(path).parts)
    return files


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
    if not (out_dir.exists() or out_dir.is_symlink()):
        return
    if not force:
        raise UserError(f"{out_dir} already exists: choose another -o folder or add --force to replace it")
    if out_dir.is_symlink() or not out_dir.is_dir():
        raise UserError(f"{out_dir} exists and is not a folder; --force replaces only a corpus folder")
    if any(out_dir.iterdir()) and not (out_dir / META_FILE).is_file():
        raise UserError(
            f"{out_dir} is a folder but not a jaxvoice corpus (no {META_FILE}), so --force will not replace it: "
            "choose another -o folder"
        )


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
    files = collect_inputs(inputs, codec, exclude=out_dir.resolve())
    if is_audio:  # check every file before the long part starts
        infos = [audio.probe(f) for f in files]
    else:
        for f in files:
            if f.stat().st_size == 0:
                raise UserError(f"{f} is empty (0 bytes): remove it from the inputs")

    made_parents = [p for p in out_dir.absolute().parents if not p.exists()]
    tmp = None
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.tmp-"))
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes it private; a corpus is an ordinary folder
        sources = []
        total = sum(f.stat().st_size for f in files)
        # disable=None: a bar only when stderr is a terminal, so logs and error messages stay clean.
        off = True if quiet else None
        progress = tqdm(total=total, unit="B", unit_scale=True, desc="prepare", file=sys.stderr, disable=off)
        sink = _Sink(tmp / DATA_FILE)
        with progress, contextlib.closing(sink):
            for i, f in enumerate(files):
                if is_audio:
                    sources.append(_add_audio(sink, infos[i], rate, codec, progress))
                else:
                    sources.append(_add_bytes(sink, f, progress))
        meta = {
            "format_version": FORMAT_VERSION,
            "codec": codec,
            "rate": rate,
            "num_symbols": _codec.NUM_SYMBOLS,
            "length": sink.length,
            "seconds": round(sink.length / rate, 6) if is_audio else None,
            "splits": split_offsets(sink.length, val_frac, test_frac),
            "val_frac": val_frac,
            "test_frac": test_frac,
            "sources": sources,
            "sha256": sink.sha.hexdigest(),
            "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "jaxvoice_version": __version__,
        }
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        _replace_dir(tmp, out_dir)
    except BaseException as e:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        for parent in made_parents:  # deepest first
            with contextlib.suppress(OSError):
                parent.rmdir()
        if isinstance(e, OSError):  # disk full, no permission: the user's to fix
            raise UserError(
                f"cannot write corpus {out_dir} ({e.strerror or e}): check free space and the folder's permissions"
            ) from None
        raise
    return meta


def summary(meta: dict, out_dir: str | os.PathLike) -> str:
    """One line for the end of `jaxvoice prepare`."""
    n = meta["length"]
    sizes = " / ".join(f"{s} {_span(meta, s):,}" for s in SPLITS)
    what = f"{_duration(meta['seconds'])} at {meta['rate']} Hz" if meta["rate"] else "raw bytes"
    files = len(meta["sources"])
    return (
        f"prepared {out_dir}: {what}, {n:,} symbols ({_size(n)}) from {files} file{'s' * (files != 1)}, "
        f"codec {meta['codec']}, splits {sizes}"
    )


# ---- reading -----------------------------------------------------------------------------------------------


def _span(meta: dict, split: str) -> int:
    start, end = meta["splits"][split]
    return end - start


def _duration(seconds: float) -> str:
    minutes, secs = divmod(seconds, 60)
    hours, minutes = divmod(int(minutes), 60)
    if hours:
        return f"{hours} h {minutes:02d} min {secs:04.1f} s"
    return f"{minutes} min {secs:04.1f} s" if minutes else f"{secs:.1f} s"


def _size(n: int) -> str:
    if n < 1024:
        return f"{n} bytes"
    value, unit = n / 1024, "KiB"
    for bigger in ("MiB", "GiB"):
        if value >= 1024:
            value, unit = value / 1024, bigger
    return f"{value:.1f} {unit}"


_REQUIRED = {
    "format_version": int, "codec": str, "num_symbols": int, "length": int, "splits": dict, "sources": list,
    "sha256": str,
}  # fmt: skip


def _not_a_folder(path: Path) -> str:
    """Why `path` (which is not a folder) is no corpus, and what to give instead."""
    if path.is_symlink() and not path.exists():
        return (
            f"corpus {path} is a broken symbolic link (to {os.readlink(path)}): point it at a corpus folder"
        )
    if not path.exists():
        return f"corpus {path} does not exist: make one with `jaxvoice prepare INPUT... -o {path}`"
    if path.name in (META_FILE, DATA_FILE) and (path.parent / META_FILE).is_file():
        return f"{path} is a file of the corpus {path.parent}: give the folder itself"
    return (
        f"{path} is a file, not a corpus folder: give the folder `jaxvoice prepare` wrote "
        f"(to make one from this file: jaxvoice prepare {path} -o CORPUS_DIR)"
    )


def read_meta(corpus_dir: str | os.PathLike) -> dict:
    """meta.json of a corpus, checked against data.u8; anything wrong -> UserError saying how to fix it."""
    folder = Path(corpus_dir)
    redo = "prepare it again with `jaxvoice prepare INPUT... -o " + str(folder) + " --force`"
    if not folder.is_dir():
        raise UserError(_not_a_folder(folder))
    meta_path = folder / META_FILE
    if not meta_path.is_file():
        raise UserError(
            f"{folder} is not a jaxvoice corpus (no {META_FILE}): point at a folder made by prepare"
        )
    try:
        meta = files.read_json(meta_path)
    except OSError as e:
        raise UserError(f"cannot read {meta_path}: {e.strerror or e}") from None
    except ValueError as e:  # not UTF-8, not JSON, or nested too deeply to parse
        raise UserError(f"{meta_path} is not valid JSON ({e}): {redo}") from None
    if not isinstance(meta, dict):
        raise UserError(f"{meta_path} does not hold a JSON object: {redo}")
    version = meta.get("format_version")
    if isinstance(version, int) and version > FORMAT_VERSION:
        raise UserError(
            f"{meta_path} has format_version {version}, newer than this jaxvoice reads ({FORMAT_VERSION}): "
            "upgrade jaxvoice"
        )
    for key, kind in _REQUIRED.items():
        if not isinstance(meta.get(key), kind) or isinstance(meta.get(key), bool):
            raise UserError(f"{meta_path}: '{key}' is missing or not a {kind.__name__}: {redo}")
    if version != FORMAT_VERSION:
        raise UserError(f"{meta_path} has format_version {version}, expected {FORMAT_VERSION}: {redo}")
    for i, src in enumerate(meta["sources"]):
        if not (isinstance(src, dict) and isinstance(src.get("path"), str) and type(src.get("bytes")) is int):
            raise UserError(f"{meta_path}: source {i} is not an object with a 'path' and 'bytes': {redo}")
    if meta["codec"] not in _codec.CODECS or meta["num_symbols"] != _codec.NUM_SYMBOLS:
        raise UserError(
            f"{meta_path}: unknown codec '{meta['codec']}' or num_symbols {meta['num_symbols']}: {redo}"
        )
    rate = meta.get("rate")
    if meta["codec"] in _codec.AUDIO_CODECS and (
        not isinstance(rate, int) or isinstance(rate, bool) or rate <= 0
    ):
        raise UserError(
            f"{meta_path}: 'rate' must be a positive number of Hz for codec {meta['codec']}: {redo}"
        )
    n = meta["length"]
    splits = meta["splits"]
    try:
        spans = [list(splits[s]) for s in SPLITS]
        edges = [v for span in spans for v in span]  # train start, end, val start, end, test start, end
        ok = all(len(span) == 2 for span in spans) and all(type(v) is int for v in edges)
        ok = (
            ok
            and edges[0] == 0
            and edges[-1] == n
            and edges[1:5:2] == edges[2:5:2]
            and edges == sorted(edges)
        )
    except (KeyError, TypeError):
        ok = False
    if not ok:
        raise UserError(f"{meta_path}: 'splits' must be contiguous train/val/test spans of [0, {n}): {redo}")
    data_path = folder / DATA_FILE
    if not data_path.is_file():
        raise UserError(f"corpus {folder} has no {DATA_FILE}: {redo}")
    size = data_path.stat().st_size
    if size != n:
        raise UserError(
            f"{data_path} has {size} bytes but {META_FILE} says {n}: the corpus is incomplete or was changed; {redo}"
        )
    return meta


_CODEC_TEXT = {
    "linear": "linear (8-bit unsigned PCM, 128 = silence)",
    "mulaw": "mulaw (μ = 255 companding)",
    "bytes": "bytes (files taken as raw bytes)",
}


def describe(meta: dict, path: str | os.PathLike | None = None) -> str:
    """Readable multi-line text of a corpus meta (for `jaxvoice info`)."""
    n = meta["length"]
    lines = [f"corpus    {path}"] if path is not None else []
    codec_text = _CODEC_TEXT.get(meta["codec"], meta["codec"])
    lines.append(f"codec     {codec_text}, {meta['num_symbols']} symbols")
    if meta.get("rate"):
        lines.append(f"rate      {meta['rate']} Hz")
        lines.append(f"length    {n:,} symbols = {_duration(n / meta['rate'])} ({_size(n)})")
    else:
        lines.append(f"length    {n:,} symbols ({_size(n)})")
    for i, split in enumerate(SPLITS):
        start, end = meta["splits"][split]
        share = 100.0 * (end - start) / n if n else 0.0
        lines.append(
            f"{'splits' if i == 0 else '':10s}{split:5s} [{start:,}, {end:,})  {end - start:,} ({share:.1f}%)"
        )
    sources = meta["sources"]
    lines.append(f"sources   {len(sources)} file{'s' * (len(sources) != 1)}")
    for src in sources:
        detail = f"{src['bytes']:,} symbols"
        if src.get("rate"):  # an audio file's details (shown as stored: read_meta checks only path and bytes)
            seconds = src.get("seconds")
            length = (
                _duration(seconds) if isinstance(seconds, int | float) and math.isfinite(seconds) else "?"
            )
            detail = (
                f"{src['rate']} Hz {src.get('channels', '?')} ch {src.get('format', '?')} "
                f"{src.get('subtype', '?')}, {length}, {detail}"
            )
        lines.append(f"          {src['path']}  ({detail})")
    lines.append(f"sha256    {meta['sha256']}")
    if "created" in meta:
        lines.append(f"created   {meta['created']} by jaxvoice {meta.get('jaxvoice_version', '?')}")
    return "\n".join(lines)


@dataclass(frozen=True, eq=False)
class Corpus:
    """An opened corpus: `data` is the whole stream, memory-mapped read-only; `split(name)` is a view of it."""

    path: Path
    meta: dict
    data: np.memmap

    def split(self, name: str) -> np.ndarray:
        if name not in SPLITS:
            raise UserError(f"unknown split '{name}': choose one of {', '.join(SPLITS)}")
        start, end = self.meta["splits"][name]
        return self.data[start:end]

    def verify(self) -> None:
        """Recompute data.u8's sha256 (reads the whole file); a mismatch -> UserError."""
        sha = hashlib.sha256()
        with open(self.path / DATA_FILE, "rb") as f:
            while block := f.read(1 << 22):
                sha.update(block)
        if sha.hexdigest() != self.meta["sha256"]:
            raise UserError(
                f"{self.path / DATA_FILE} does not match the sha256 in {META_FILE}: the data was changed or "
                "damaged; prepare the corpus again"
            )


def open_corpus(corpus_dir: str | os.PathLike) -> Corpus:
    """Open a prepared corpus (checked by read_meta; the checksum only by Corpus.verify)."""
    path = Path(corpus_dir)
    meta = read_meta(path)
    if meta["length"] == 0:
        raise UserError(f"corpus {path} is empty: prepare it again from inputs with audio in them")
    data = np.memmap(path / DATA_FILE, dtype=np.uint8, mode="r")
    return Corpus(path=path, meta=meta, data=data)


def load_audio_symbols(path: str | os.PathLike, rate: int | None, codec: str) -> np.ndarray:
    """A (short) file as uint8 symbols the way a corpus with this rate and codec holds them (sampling primes)."""
    codec = _codec.check_codec(codec)
    if codec == "bytes":
        path = Path(path)
        if not path.is_file():
            raise UserError(f"{path}: no such file")
        return np.fromfile(path, dtype=np.uint8)
    return _codec.encode(codec, audio.read_mono(path, rate))


def decode_symbols(symbols: np.ndarray, codec: str) -> np.ndarray:
    """uint8 symbols -> float32 audio (codec.decode; the bytes codec has no audio meaning)."""
    return _codec.decode(codec, symbols)
