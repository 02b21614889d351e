"""`ropekit doctor` (not implemented yet)."""

from __future__ import annotations

from ..errors import RopeError


def register(subparsers) -> None:
    p = subparsers.add_parser("doctor", help="(not implemented yet)")
    p.set_defaults(func=run)


def run(args) -> int:
    raise RopeError("'ropekit doctor' is not implemented yet")
