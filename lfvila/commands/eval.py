"""lfvila eval (not implemented yet)."""
from __future__ import annotations


def add_arguments(parser) -> None:
    pass


def run(args) -> int:
    raise SystemExit("lfvila eval: not implemented yet")
