"""The `jaxvoice` command: parses arguments, calls the library, turns user errors into one line + exit 2.

Each subcommand lives in `jaxvoice/commands/NAME.py` (found there, no list to edit) with `HELP` (one line), `add_arguments(parser)` and
`run(args) -> int | None`. Those modules import only the standard library at the top, so `--help` and
JAX-free commands such as `plot` start fast; the heavy imports happen inside `run`.
"""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import sys

import jaxvoice.commands
from jaxvoice import __version__
from jaxvoice.errors import UserError

# The order `jaxvoice --help` lists them in, the order of the flow; any other module comes after.
ORDER = ["demo", "prepare", "info", "encode", "decode", "train", "eval", "sample", "plot", "report"]


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


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
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
