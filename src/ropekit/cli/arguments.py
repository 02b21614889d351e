"""What the subcommands' parsers share: how a subcommand is declared, on/off switches, and the
options that say how a config is read.  Not a subcommand itself (``COMMANDS`` lists those).

>>> import argparse
>>> sub = argparse.ArgumentParser(prog="ropekit").add_subparsers()
>>> p = add_command(sub, "demo", lambda args: 0, help="a demo", description="Demo.", epilog="examples:\\n  x")
>>> add_switches(p, {"--force": "replace DST", "--dry-run": "write nothing"})
>>> args = p.parse_args(["--dry-run"])
>>> args.force, args.dry_run, args.func(args)
(False, True, 0)
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

__all__ = ["add_command", "add_switches", "add_config_reading"]


def add_command(
    subparsers,
    name: str,
    run: Callable[[argparse.Namespace], int],
    *,
    help: str,
    description: str,
    epilog: str | None = None,
) -> argparse.ArgumentParser:
    """The parser of subcommand ``name``, whose arguments go to ``run(args) -> exit code``.

    The description and the examples epilog are shown as written: their line breaks are the layout.
    """
    parser = subparsers.add_parser(
        name,
        help=help,
        description=description,
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.set_defaults(func=run)
    return parser


def add_switches(parser: argparse.ArgumentParser, helps: dict[str, str]) -> None:
    """One off-by-default flag per ``{"--flag": help}`` entry, in the order given."""
    for flag, text in helps.items():
        parser.add_argument(flag, action="store_true", help=text)


def add_config_reading(parser: argparse.ArgumentParser) -> None:
    """The options that say how a config operand is read, for every command that reads one."""
    parser.add_argument("--layer-type", default=None, help="for per-layer-type configs (e.g. sliding_attention)")
    parser.add_argument("--layout", default=None, help="half|interleaved, for families whose config does not say it")
