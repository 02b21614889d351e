"""The ``ropekit`` command.  Each subcommand lives in its own module under ``ropekit.cli`` and
exposes ``register(subparsers)``, which adds its parser and sets ``func`` to a function
``(args) -> int`` (the exit code).

Exit codes: 0 success (doctor: equivalent), 1 doctor found a difference, 2 bad input.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from .. import __version__
from ..errors import RopeError

__all__ = ["main", "build_parser"]

#: subcommand modules, in the order `ropekit --help` lists them
COMMANDS = ("doctor", "spec", "convert", "bench", "plot")


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line and exit code 2, like every other bad input
        self.exit(2, f"ropekit: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="ropekit",
        description="Exact, convention-aware rotary position embeddings: inspect, compare, convert, benchmark.",
        epilog="Run 'ropekit COMMAND --help' for a command's options and an example.",
    )
    parser.add_argument("--version", action="version", version=f"ropekit {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    subparsers.required = True
    for name in COMMANDS:
        importlib.import_module(f"{__name__}.{name}").register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (RopeError, FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError) as exc:
        print(f"ropekit: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ropekit: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # `ropekit doctor | head`: the reader left; stop quietly.  Point stdout at devnull so the
        # interpreter's final flush does not raise a second time (Python docs, "SIGPIPE").
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
