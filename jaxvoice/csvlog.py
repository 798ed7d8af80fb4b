"""Read numeric columns of a big CSV log fast, and survive the ways a log goes wrong.

A training log (train.csv: one row per step, hundreds of thousands of rows) may be read while it is being
appended to, may hold a row torn by a kill and a resume, NaN losses, or a stray line of text. The fast path
checks every line's field count with numpy (one pass over the bytes), then hands the well-formed lines to
numpy's C `loadtxt`, converting only the requested columns. Only if that fails (a field that is not a
number) are the lines re-read in chunks, and only a chunk that fails is parsed line by line in Python, so a
few bad rows cost milliseconds, not a slow parser for the whole file.

Rules (the same on both paths):
- the first line is the header: comma-separated names (spaces, quotes and a UTF-8 BOM stripped);
- a last line without a trailing newline is still being written and is ignored (not counted);
- empty lines are ignored (not counted);
- a row is skipped and counted if it has the wrong number of fields, if a requested field is not a plain
  decimal number, or (by default) if a requested field is NaN or infinite.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import NamedTuple

import numpy as np

from jaxvoice import memory, paths
from jaxvoice.errors import UserError

_NL, _CR, _COMMA = ord("\n"), ord("\r"), ord(",")
CHUNK_LINES = 512  # lines per loadtxt call on the slow path: a chunk with a bad row costs ~0.5 ms
BLOCK_BYTES = 1 << 20  # bytes per step of the line-structure scan


class NoRowsError(UserError):
    """The CSV exists and has a header but not one complete, usable data row (yet)."""

    def __init__(self, message: str, n_skipped: int = 0):
        super().__init__(message)
        self.n_skipped = n_skipped  # bad rows it does have


class Columns(NamedTuple):
    """What `read_columns` returns: unpack as `data, n_skipped = read_columns(...)`."""

    data: dict[str, np.ndarray]  # column name -> float64 array, one value per kept row, file order
    n_skipped: int  # complete, non-empty data rows left out (bad field count, not a number, NaN/inf)


def parse_header(line: bytes | str) -> list[str]:
    """The column names of a header line."""
    if isinstance(line, bytes):
        line = line.decode("utf-8", errors="replace")
    line = line.removeprefix("\ufeff").rstrip("\r\n")
    return [name.strip().strip('"').strip("'").strip() for name in line.split(",")]


def _read_bytes(path: Path) -> bytes:
    found = paths.kind(path)  # before opening: a FIFO would wait for a writer, /dev/zero never end
    if found == "a folder":
        raise UserError(f"{path} is a directory, not a CSV file; name the CSV file inside it")
    if found not in ("a file", "missing"):
        raise UserError(f"{path} is {found}, not a CSV file; pass a CSV log")
    try:
        # The bytes, then about as much again for the line index and the values (see _parse_body).
        size = path.stat().st_size
        memory.check_fits({"the file": size, "its index": 2 * size}, memory.host_available(),
                          "plot a smaller log", f"reading {path}")  # fmt: skip
        return path.read_bytes()
    except FileNotFoundError:
        raise UserError(f"{path}: no such file; check the path") from None
    except OSError as e:
        raise UserError(
            f"cannot read {path}: {e.strerror or e}; check the path and its permissions"
        ) from None


def read_columns(
    path: str | Path, columns: list[str] | tuple[str, ...], *, drop_nonfinite: bool = True
) -> Columns:
    """Read `columns` of the CSV at `path` as float64 arrays, skipping and counting bad rows.

    Raises UserError (one line naming the problem and the fix) for a missing or unreadable file, an empty
    file, a requested column the header lacks (listing the columns it has); NoRowsError (a UserError) if no
    complete data row exists yet, or none is usable.
    """
    path = Path(path)
    wanted = list(dict.fromkeys(columns))  # order kept, duplicates dropped
    data = _read_bytes(path)
    if not data.strip():
        raise UserError(f"{path} is empty (no header, no rows); pass a CSV log with a header line")
    if b"\0" in data[:4096]:
        raise UserError(f"{path} is not a text CSV file (it holds NUL bytes); pass a CSV log")
    header_end = data.find(b"\n")
    header = parse_header(data if header_end < 0 else data[:header_end])
    missing = [c for c in wanted if c not in header]
    if missing:
        names = ", ".join(repr(c) for c in missing)
        raise UserError(
            f"{path} has no column {names}; its columns are: {', '.join(header)}; pick one of those"
        )
    body_end = data.rfind(b"\n") + 1  # a last line without its newline is still being written
    if header_end < 0 or body_end <= header_end + 1:
        raise NoRowsError(f"{path} has a header but no complete data rows yet; plot it once rows are logged")
    usecols = [header.index(c) for c in wanted]
    try:
        values, n_skipped = _parse_body(data, header_end + 1, body_end, len(header), usecols)
    except MemoryError:  # lines far shorter than a log's (e.g. only newlines): an index bigger than guessed
        raise UserError(
            f"{path} has too many lines to index in the memory left; plot a smaller log"
        ) from None
    del data
    if drop_nonfinite and len(values):
        finite = np.isfinite(values).all(axis=1)
        if not finite.all():
            n_skipped += int(len(finite) - np.count_nonzero(finite))
            values = values[finite]
    if len(values) == 0:
        if n_skipped == 0:
            raise NoRowsError(f"{path} has a header but no data rows yet; plot it once rows are logged")
        raise NoRowsError(
            f"{path}: none of its {n_skipped} rows is usable (wrong number of fields, or no finite "
            f"number in {', '.join(wanted)}); check the file or pick other columns",
            n_skipped,
        )
    return Columns({c: np.ascontiguousarray(values[:, i]) for i, c in enumerate(wanted)}, n_skipped)


def _line_ends_and_commas(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Index of each newline in `raw`, and how many commas each line holds; in 1 MB blocks, so the byte
    masks stay in cache and no file-sized temporaries are allocated (page faults are slow here)."""
    ends, per_line, total = [], [], 0
    for b0 in range(0, len(raw), BLOCK_BYTES):
        block = raw[b0 : b0 + BLOCK_BYTES]
        newlines = np.flatnonzero(block == _NL)
        commas = np.flatnonzero(block == _COMMA)
        ends.append(newlines + b0)
        per_line.append(np.searchsorted(commas, newlines) + total)  # commas so far, at each newline
        total += len(commas)
    cumulative = np.concatenate(per_line)
    return np.concatenate(ends), np.diff(cumulative, prepend=0)


def _parse_body(
    data: bytes, start: int, end: int, n_fields: int, usecols: list[int]
) -> tuple[np.ndarray, int]:
    """Parse the complete lines data[start:end] (ending with a newline) -> (values [rows, cols], skipped)."""
    raw = np.frombuffer(data, np.uint8, count=end - start, offset=start)
    ends, per_line = _line_ends_and_commas(raw)
    starts = np.empty_like(ends)
    starts[0] = 0
    starts[1:] = ends[:-1] + 1
    length = ends - starts  # without the newline
    blank = (length == 0) | ((length == 1) & (raw[starts] == _CR))
    good = (per_line == n_fields - 1) & ~blank
    n_good = int(np.count_nonzero(good))
    n_skipped = len(good) - n_good - int(np.count_nonzero(blank))
    if n_good == 0:
        return np.empty((0, len(usecols))), n_skipped
    if n_good == len(good):  # the usual case: parse straight from the file's bytes, no copy
        stream = io.BytesIO(data)
        stream.seek(start)
        try:
            return _loadtxt(stream, usecols, max_rows=n_good), n_skipped
        except ValueError:  # a field that is not a number somewhere: find it chunk by chunk
            body = data[start:end]
    else:  # drop blank and wrong-width lines, keeping the bytes of the others
        body = raw[np.repeat(good, length + 1)].tobytes()
        ends = np.cumsum(length[good] + 1) - 1
        starts = ends - length[good]
        try:
            return _loadtxt(io.BytesIO(body), usecols), n_skipped
        except ValueError:
            pass
    parts = []
    for first in range(0, len(ends), CHUNK_LINES):
        last = min(first + CHUNK_LINES, len(ends)) - 1
        chunk = body[starts[first] : ends[last] + 1]
        try:
            parts.append(_loadtxt(io.BytesIO(chunk), usecols))
        except ValueError:
            values, bad = _parse_lines(chunk, usecols)
            parts.append(values)
            n_skipped += bad
    return np.concatenate(parts), n_skipped


def _loadtxt(stream: io.BytesIO, usecols: list[int], max_rows: int | None = None) -> np.ndarray:
    return np.loadtxt(
        stream, delimiter=",", usecols=usecols, dtype=np.float64, ndmin=2, comments=None, quotechar=None,
        encoding="utf-8", max_rows=max_rows,
    )  # fmt: skip


def _parse_lines(chunk: bytes, usecols: list[int]) -> tuple[np.ndarray, int]:
    """The slow path for one chunk of well-formed-width lines: Python floats, bad lines skipped."""
    rows, bad = [], 0
    for line in chunk.split(b"\n")[:-1]:
        fields = line.split(b",")
        try:
            row = [_strict_float(fields[i]) for i in usecols]
        except ValueError:
            bad += 1
            continue
        rows.append(row)
    return np.array(rows, dtype=np.float64).reshape(len(rows), len(usecols)), bad


def _strict_float(field: bytes) -> float:
    """float(), minus what numpy's loadtxt refuses too (digit-group underscores)."""
    if b"_" in field:
        raise ValueError(field)
    return float(field)
