"""A corpus: one folder with `data.u8` (the symbol stream, raw uint8) and `meta.json` (how it was made).

preparing.py makes one (its names are re-exported here: `corpus.prepare`, `corpus.split_offsets`, ...); this
module reads it: `read_meta` checks meta.json against data.u8, `open_corpus` maps data.u8 read-only
(np.memmap) so splits are views, not copies, and `describe` / `summary` put a meta into words.
"""

from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from jaxvoice import audio, files, memory, paths
from jaxvoice import codec as _codec
from jaxvoice.errors import UserError
from jaxvoice.preparing import (  # noqa: F401 (the writer's names, reachable from the corpus module as before)
    DATA_FILE,
    FORMAT_VERSION,
    META_FILE,
    MIN_SPLIT_SYMBOLS,
    SPLITS,
    check_fractions,
    collect_inputs,
    prepare,
    split_offsets,
)


def summary(meta: dict, out_dir: str | os.PathLike) -> str:
    """One line for the end of `jaxvoice prepare`."""
    n = meta["length"]
    sizes = " / ".join(f"{s} {_span(meta, s):,}" for s in SPLITS)
    what = f"{duration_text(meta['seconds'])} at {meta['rate']} Hz" if meta["rate"] else "raw bytes"
    n_files = len(meta["sources"])
    return (
        f"prepared {out_dir}: {what}, {n:,} symbols ({_size(n)}) from {n_files} file{'s' * (n_files != 1)}, "
        f"codec {meta['codec']}, splits {sizes}"
    )


# ---- reading -----------------------------------------------------------------------------------------------


def _span(meta: dict, split: str) -> int:
    start, end = meta["splits"][split]
    return end - start


def duration_text(seconds: float) -> str:
    """A length of audio or time as people read it: 4.2 s, 3 min 05.0 s, 1 h 02 min 03.0 s."""
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
        lines.append(f"length    {n:,} symbols = {duration_text(n / meta['rate'])} ({_size(n)})")
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
                duration_text(seconds) if isinstance(seconds, int | float) and math.isfinite(seconds) else "?"
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
    """An opened corpus: `data` is the whole stream, memory-mapped read-only; `split(name)` is a view of it.
    A corpus made in memory (`from_array`) has no `path` until a run writes it (`Run.create`)."""

    path: Path | None
    meta: dict
    data: np.ndarray

    def split(self, name: str) -> np.ndarray:
        if name not in SPLITS:
            raise UserError(f"unknown split '{name}': choose one of {', '.join(SPLITS)}")
        start, end = self.meta["splits"][name]
        return self.data[start:end]

    def verify(self) -> None:
        """Recompute data.u8's sha256 (reads the whole file); a mismatch -> UserError."""
        if self.path is None:
            return  # in memory: its meta was computed from these very bytes
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


def from_array(
    symbols, *, codec: str = "linear", rate: int | None = 11025, val_frac: float = 0.1, test_frac: float = 0.1
) -> Corpus:
    """A corpus of symbols already in memory (uint8, 1-D; e.g. `codec.encode("linear", audio)`), split like a
    prepared one, for experiments: `jaxvoice.fit` on a `Run.create`d run writes it into RUN/corpus/ so the
    command line can read the run too. (The lower-level `train_streams` takes any uint8 array as it is.)"""
    from jaxvoice import preparing

    data = np.asarray(symbols)
    if data.ndim != 1 or data.dtype != np.uint8 or data.size == 0:
        raise UserError("a corpus from memory must be a non-empty 1-D array of uint8 symbols")
    codec = _codec.check_codec(codec)
    rate = audio.check_rate(rate) if codec in _codec.AUDIO_CODECS else None
    sha = hashlib.sha256(np.ascontiguousarray(data)).hexdigest()
    source = [
        {"path": "an array", "bytes": int(data.size), "seconds": round(data.size / rate, 6) if rate else None}
    ]
    meta = preparing.describe_symbols(int(data.size), sha, codec, rate, val_frac, test_frac, source)
    return Corpus(path=None, meta=meta, data=data)


def load_audio_symbols(path: str | os.PathLike, rate: int | None, codec: str) -> np.ndarray:
    """A file as uint8 symbols the way a corpus with this rate and codec holds them (sampling primes).

    Encoded block by block, so a long prime costs 2 bytes a sample at most, not its float audio; one that
    cannot fit in memory is refused before it is read."""
    codec = _codec.check_codec(codec)
    path = paths.check_input_file(path, give="a file")
    if codec == "bytes":
        size = path.stat().st_size
        memory.check_fits(
            {"its bytes": size}, memory.host_available(), "give a shorter file", f"reading {path}"
        )
        return np.fromfile(path, dtype=np.uint8)
    info = audio.probe(path)
    symbols = math.ceil(info.frames * rate / info.rate) + 1
    memory.check_fits(
        {"its symbols": 2 * symbols}, memory.host_available(), "give a shorter file", f"reading {path}"
    )
    blocks = [_codec.encode(codec, block) for block in audio.stream_mono(path, rate)]
    return np.concatenate(blocks) if blocks else np.zeros(0, dtype=np.uint8)


def decode_symbols(symbols: np.ndarray, codec: str) -> np.ndarray:
    """uint8 symbols -> float32 audio (codec.decode; the bytes codec has no audio meaning)."""
    return _codec.decode(codec, symbols)
