"""`ropekit bench` (not implemented yet)."""

from __future__ import annotations

from ..errors import RopeError


def register(subparsers) -> None:
    p = subparsers.add_parser("bench", help="(not implemented yet)")
    p.set_defaults(func=run)


def run(args) -> int:
    raise RopeError("'ropekit bench' is not implemented yet")
