"""The small files of corpora and runs: JSON and TOML read safely, written atomically, and output folders.

One place for what every reader and writer needs: a hostile or damaged file (nested ten thousand deep, not
UTF-8, not JSON) is a `ValueError` the caller turns into one line, never a `RecursionError` traceback; a file
is written to a temporary name beside it and renamed into place, so it is either complete or absent.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def loads_json(text: str | bytes) -> Any:
    """`json.loads`, with nesting too deep to parse reported as a ValueError like any other bad JSON."""
    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError("nested too deeply to be a jaxvoice file") from None


def read_json(path: str | os.PathLike) -> Any:
    """The JSON value in a UTF-8 file. OSError if it does not read; ValueError if it is not JSON."""
    data = Path(path).read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"not UTF-8 text ({e.reason} at byte {e.start})") from None
    return loads_json(text)


def loads_toml(text: str) -> dict:
    """`tomllib.loads`; bad or too deeply nested TOML is a ValueError (TOMLDecodeError is one)."""
    try:
        return tomllib.loads(text)
    except RecursionError:
        raise ValueError("nested too deeply to be a jaxvoice config") from None


def temporary_path(path: str | os.PathLike) -> Path:
    """A fresh hidden name beside `path` (same folder, so a rename onto `path` is atomic)."""
    path = Path(path)
    return path.parent / f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp"


@contextlib.contextmanager
def replacing(path: str | os.PathLike, *, keep_suffix: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside `path`; when the block succeeds it replaces `path`, when it fails it is
    removed. The caller creates the temporary file (so it gets the umask's permissions). `keep_suffix`: the
    temporary name ends in `path`'s suffix (.tmp.wav) for writers that choose a format by it."""
    tmp = temporary_path(path)
    if keep_suffix:
        tmp = tmp.with_name(tmp.name + Path(path).suffix)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


@contextlib.contextmanager
def new_output(path: str | os.PathLike, *, keep_suffix: bool = False) -> Iterator[Path]:
    """`replacing`, for a command's output: the missing folders above `path` are made first, and on any
    failure removed again with the temporary file; an OSError becomes a UserError naming `path` (or the
    other file it names, e.g. an input read in the block). `keep_suffix`: the temporary name ends in
    `path`'s suffix too (for writers that choose a format by it)."""
    from jaxvoice.errors import UserError

    path, tmp = Path(path), None
    made = missing_parents(path)
    try:
        make_parents(path)
        with replacing(path, keep_suffix=keep_suffix) as tmp:
            yield tmp
    except OSError as e:
        remove_made(made)
        if e.filename not in (None, str(path), str(tmp)):
            raise UserError(f"{e.filename}: {e.strerror or e}") from None
        raise UserError(f"cannot write {path}: {e.strerror or e}") from None
    except BaseException:
        remove_made(made)
        raise


def write_atomic(path: str | os.PathLike, data: str | bytes, *, sync: bool = False) -> Path:
    """Write `data` (text as UTF-8) to `path` through a temporary file and a rename; `sync` fsyncs it first."""
    with replacing(path) as tmp, open(tmp, "xb") as f:
        f.write(data.encode("utf-8") if isinstance(data, str) else data)
        if sync:
            f.flush()
            os.fsync(f.fileno())
    return Path(path)


def write_at(file, offset: int, data: bytes) -> None:
    """Write all of `data` at `offset` of an unbuffered binary file (a raw write may take only part of it).

    The files that grow while they are written (streamed samples) are unbuffered, so that a write the disk
    refuses leaves no bytes in a buffer for close() to fail on again."""
    file.seek(offset)
    view = memoryview(data)
    while view:
        view = view[file.write(view) :]


def missing_parents(path: str | os.PathLike) -> list[Path]:
    """The folders above `path` that do not exist yet, deepest first."""
    return [p for p in Path(path).absolute().parents if not p.exists()]


def make_parents(path: str | os.PathLike) -> list[Path]:
    """Create the missing folders above `path`; returns them deepest first, for `remove_made` on failure.
    If one cannot be made, those made before it are removed again and the OSError raised."""
    made: list[Path] = []
    try:
        for folder in reversed(missing_parents(path)):  # outermost first
            folder.mkdir()
            made.insert(0, folder)
    except OSError:
        remove_made(made)
        raise
    return made


def remove_made(folders: list[Path]) -> None:
    """Remove folders made by `make_parents` again, deepest first, where they are still empty."""
    for folder in folders:
        with contextlib.suppress(OSError):
            folder.rmdir()
