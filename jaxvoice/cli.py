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
from pathlib import Path

import jaxvoice.commands
from jaxvoice import __version__
from jaxvoice.errors import UserError

# The order `jaxvoice --help` lists them in, the order of the flow; any other module comes after.
ORDER = ["demo", "prepare", "info", "encode", "decode", "train", "eval", "sample", "plot", "report"]


# Commands that run XLA: it takes fresh 100-300 MB buffers every training step, tens of thousands of page
# faults per step with glibc's default malloc. glibc's huge-page tunable removes ~99% of them (+14-24%
# tokens/s here, ../PERF_NOTES), but glibc reads GLIBC_TUNABLES only when a process starts.
HUGE_PAGE_COMMANDS = {"demo", "train", "eval", "sample"}
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
        module.add_arguments(command)
        command.set_defaults(_module=module)
    return parser


class _WarningLine(logging.Formatter):
    """The library's warnings (logger "jaxvoice") as the command's own lines: `warning: ...` on stderr."""

    def format(self, record: logging.LogRecord) -> str:
        text = record.getMessage().replace("\n", "\\n")
        return text if record.levelno < logging.WARNING else f"warning: {text}"


def _show_library_warnings() -> None:
    logger = logging.getLogger("jaxvoice")
    if not any(getattr(h, "_jaxvoice_cli", False) for h in logger.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(_WarningLine())
        handler._jaxvoice_cli = True
        logger.addHandler(handler)
    logger.setLevel(logging.WARNING)
    logger.propagate = False  # shown once, here, not again by a handler of the root logger


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    if argv is None and args.command in HUGE_PAGE_COMMANDS:  # the real command line, not a caller's list
        reexec_with_huge_pages()
    _show_library_warnings()
    # A file name that is not UTF-8 prints as its own bytes (as `ls` does) in any locale, not as a traceback.
    reconfigure = getattr(sys.stdout, "reconfigure", None)
    if reconfigure is not None:
        reconfigure(errors="surrogateescape")
    try:
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
