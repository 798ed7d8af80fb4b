"""The `jaxvoice` command: parses arguments, calls the library, turns user errors into one line + exit 2.

Each subcommand lives in `jaxvoice/commands/NAME.py` (found there, no list to edit) with `HELP` (one line), `add_arguments(parser)` and
`run(args) -> int | None`. Those modules import only the standard library at the top, so `--help` and
JAX-free commands such as `plot` start fast; the heavy imports happen inside `run`.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import pkgutil
import platform
import sys
import traceback
import warnings
from pathlib import Path

import jaxvoice.commands
from jaxvoice import __version__
from jaxvoice.errors import UserError

# The order `jaxvoice --help` lists them in, the order of the flow; any other module comes after.
ORDER = ["demo", "prepare", "info", "encode", "decode", "train", "eval", "sample", "plot", "report", "video"]


# Commands that run XLA: it takes fresh 100-300 MB buffers every training step, tens of thousands of page
# faults per step with glibc's default malloc. glibc's huge-page tunable removes nearly all of them
# (docs/performance.md), but glibc reads GLIBC_TUNABLES only when a process starts.
HUGE_PAGE_COMMANDS = {"demo", "train", "eval", "sample"}
# Commands that build a model: they can load the user's cells and model families (--import MODULE).
IMPORT_COMMANDS = {"train", "eval", "sample", "report", "video"}
HUGE_PAGE_TUNABLE = "glibc.malloc.hugetlb=1"


def huge_pages_supported() -> bool:
    """Linux with glibc >= 2.35 (the hugetlb tunable) and transparent huge pages not "never"."""
    if sys.platform != "linux":
        return False
    libc, version = platform.libc_ver()
    if libc != "glibc" or tuple(int(p) for p in version.split(".")[:2] if p.isdigit()) < (2, 35):
        return False
    try:
        return "[never]" not in Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text()
    except OSError:
        return False


def reexec_with_huge_pages() -> None:
    """Run this same command again (same pid, argv and exit code) with glibc's malloc on transparent huge
    pages, where `huge_pages_supported`. A GLIBC_TUNABLES already set, by the user or by this, is left as
    it is."""
    if "GLIBC_TUNABLES" in os.environ or not sys.executable or not huge_pages_supported():
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, sys.orig_argv, {**os.environ, "GLIBC_TUNABLES": HUGE_PAGE_TUNABLE})


def command_names() -> list[str]:
    found = [m.name for m in pkgutil.iter_modules(jaxvoice.commands.__path__) if not m.name.startswith("_")]
    return sorted(found, key=lambda n: (ORDER.index(n) if n in ORDER else len(ORDER), n))


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (and still exit code 2)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="jaxvoice", description="Teach recurrent networks raw audio.")
    parser.add_argument("--version", action="version", version=f"jaxvoice {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name in command_names():
        module = importlib.import_module(f"jaxvoice.commands.{name}")
        command = sub.add_parser(name, help=module.HELP, description=module.HELP)
        command.add_argument("--quiet", "-q", action="store_true", help="no progress bars or summaries")
        if name in IMPORT_COMMANDS:
            command.add_argument(
                "--import", dest="imports", action="append", default=[], metavar="MODULE",
                help="a Python module (name, or path to a .py file) to import first, e.g. one that registers a "
                "cell with jaxvoice.register_cell (repeatable)",
            )  # fmt: skip
        module.add_arguments(command)
        command.set_defaults(_module=module)
    return parser


class _WarningLine(logging.Formatter):
    """The library's warnings (logger "jaxvoice") as the command's own lines: `warning: ...` on stderr."""

    def format(self, record: logging.LogRecord) -> str:
        text = record.getMessage().replace("\n", "\\n")
        return text if record.levelno < logging.WARNING else f"warning: {text}"


def _show_library_warnings(quiet: bool) -> None:
    logger = logging.getLogger("jaxvoice")
    if not any(getattr(h, "_jaxvoice_cli", False) for h in logger.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(_WarningLine())
        handler._jaxvoice_cli = True
        logger.addHandler(handler)
    logger.setLevel(logging.ERROR if quiet else logging.WARNING)
    logger.propagate = False  # shown once, here, not again by a handler of the root logger


# orbax logs each save (INFO), read-only opens (WARNING) and, when a write or read fails, the same error with
# tracebacks from each of its threads and tasks (ERROR, through absl, concurrent.futures and asyncio; jaxvoice
# itself uses no asyncio). The command reports a failed save or a damaged step itself, in one line.
QUIET_LOGGERS = ("absl", "concurrent.futures", "asyncio")


def _hide_orbax_leftovers(unraisable, previous=sys.unraisablehook) -> None:
    """When one array of a checkpoint fails to read (damage) or to write (a full disk), orbax's other reads
    or writes of that step are left behind: as coroutines that Python reports ("Exception ignored in ...")
    when they are collected, maybe at exit, and as tensorstore's callbacks that finish after orbax's event
    loop has closed ("RuntimeError: Event loop is closed", from a tensorstore thread). The command has
    reported the failure once; every other unraisable exception is shown as usual."""
    code = getattr(unraisable.object, "cr_code", None)
    if code is not None and "orbax" in code.co_filename:
        return
    if unraisable.object is None and _raised_in_closed_event_loop(unraisable.exc_value):
        return  # jaxvoice uses no asyncio itself: this loop was orbax's
    previous(unraisable)


def _raised_in_closed_event_loop(error: BaseException | None) -> bool:
    if not isinstance(error, RuntimeError) or str(error) != "Event loop is closed":
        return False
    frames = traceback.extract_tb(error.__traceback__)
    return bool(frames) and frames[0].name == "call_soon_threadsafe"


def _own_the_process(quiet: bool) -> None:
    """What the command (not the library) sets for its process: how warnings and leftovers show."""
    _show_library_warnings(quiet)
    # A file name that is not UTF-8 prints as its own bytes (as `ls` does) in any locale, not as a traceback.
    reconfigure = getattr(sys.stdout, "reconfigure", None)
    if reconfigure is not None:
        reconfigure(errors="surrogateescape")
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.CRITICAL)
    sys.unraisablehook = _hide_orbax_leftovers
    # The coroutines of a failed orbax write that were never started are reported when collected at exit.
    warnings.filterwarnings("ignore", r"coroutine '.*' was never awaited", RuntimeWarning)


def import_user_module(spec: str) -> None:
    """Import a module the user named on the command line: a dotted name (looked up in the current folder
    first) or a path to a .py file. Only ever what the user typed: never a name read from a run or config.
    An error inside the module is the user's code's: its traceback is shown."""
    import importlib.util

    try:
        if spec.endswith(".py") or os.sep in spec:
            path = Path(spec)
            if not path.is_file():
                raise UserError(f"--import {spec}: no such file")
            module_spec = importlib.util.spec_from_file_location(path.stem, path)
            module = importlib.util.module_from_spec(module_spec)
            sys.modules[path.stem] = module
            module_spec.loader.exec_module(module)
            return
        sys.path.insert(0, os.getcwd())
        try:
            importlib.import_module(spec)
        finally:
            sys.path.remove(os.getcwd())
    except ModuleNotFoundError as e:
        if e.name is None or not spec.startswith(e.name):
            raise  # a module that the user's module imports is missing: their traceback says where
        raise UserError(
            f"--import {spec}: no module named '{e.name}' here: give a module on the Python path (or in the "
            "current folder), or the path of a .py file"
        ) from None


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    if argv is None and args.command in HUGE_PAGE_COMMANDS:  # the real command line, not a caller's list
        reexec_with_huge_pages()
    _own_the_process(getattr(args, "quiet", False))
    try:
        for spec in getattr(args, "imports", []):
            import_user_module(spec)
        return int(args._module.run(args) or 0)
    except UserError as e:
        print(f"jaxvoice {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"jaxvoice {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # `jaxvoice info ... | head`: the reader left; not an error worth a traceback.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
