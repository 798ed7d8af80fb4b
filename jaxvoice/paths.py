"""Paths given on the command line, checked before any work: the message says what the path really is.

"does not exist" for a file that is there, or "empty" for a FIFO, sends a user the wrong way. These checks
name what was found (a folder, a FIFO, a device, a broken symbolic link, a file where a folder must be) and
what to give instead, and they never open anything: opening a FIFO would wait forever for a writer, and
reading a device such as /dev/zero would never end.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from jaxvoice.errors import UserError

_SPECIAL = {
    stat.S_IFIFO: "a FIFO (named pipe)",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFSOCK: "a socket",
}


def check_given(**named: str | list[str] | None) -> None:
    """UserError for a path argument given as "" (say, an unset shell variable): Python would take it as the
    current folder, so `prepare "$DIR"` would read everything there. `named`: flag -> value(s)."""
    for flag, value in named.items():
        values = value if isinstance(value, list) else [value]
        if any(v is not None and os.fspath(v) == "" for v in values):
            raise UserError(f"{flag} is an empty path (an unset shell variable?): give a file or folder name")


def shown(text) -> str:
    """`text` for a picture or a page: the bytes of a file name that are not UTF-8 (which Python holds as
    lone surrogates, e.g. from b"voice\\xff.wav") become U+FFFD, which fonts and UTF-8 files can hold."""
    return str(text).encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def kind(path: str | os.PathLike) -> str:
    """What is at `path`, in words: "missing", "a broken symbolic link (to X)", "a folder", "a file", a FIFO..."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        if os.path.islink(path):
            return f"a broken symbolic link (to {os.readlink(path)})"
        return "missing"
    except NotADirectoryError:  # a/b where a is a file
        return "missing"
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISREG(mode):
        return "a file"
    return _SPECIAL.get(stat.S_IFMT(mode), "not a regular file")


def check_input_file(path: str | os.PathLike, what: str = "", give: str = "a file") -> Path:
    """`path` as a Path if it is a regular file this process can read; else a UserError saying what it is.

    `what` names the role in the message ("prime file"); `give` says what to give instead ("an audio file")."""
    path = Path(path)
    label = f"{what} {path}".strip()
    found = kind(path)
    if found == "missing":
        raise UserError(f"{label}: no such file")
    if found != "a file":
        raise UserError(f"{label} is {found}, not a regular file: give {give}")
    if not os.access(path, os.R_OK):
        raise UserError(f"cannot read {label}: permission denied")
    return path


def existing_ancestor(path: str | os.PathLike) -> Path:
    """The nearest folder above `path` that exists (or the nearest thing that exists there, maybe a file)."""
    for parent in Path(path).absolute().parents:
        if os.path.lexists(parent):
            return parent
    return Path(Path(path).absolute().anchor)


def check_output_file(path: str | os.PathLike, *, force: bool = False) -> Path:
    """`path` as a Path if a file may be written there; else a UserError. Refused: a folder, a FIFO or device
    (replacing one would destroy it), a broken symbolic link, an existing file without `force`, and a path
    below a file. Missing parent folders are fine: the writer makes them (files.make_parents)."""
    path = Path(path)
    found = kind(path)
    if found == "a folder":
        raise UserError(f"{path} is a folder: give a file name for the output")
    if found not in ("missing", "a file"):
        raise UserError(f"{path} is {found}: give the name of a regular file to write")
    if found == "a file" and not force:
        raise UserError(f"{path} already exists: choose another output name or add --force to replace it")
    above = existing_ancestor(path)
    if not above.is_dir():
        raise UserError(f"{above} is {kind(above)}, not a folder, so {path} cannot be written inside it")
    return path
