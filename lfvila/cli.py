"""The ``lfvila`` console script: a thin argparse layer over the library.

Each subcommand lives in ``lfvila/commands/<name>.py`` with ``add_arguments(parser)`` and
``run(args) -> int``; heavy imports happen inside ``run`` so ``--help`` stays fast.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys

COMMANDS = {
    "build": "build the corpus: sources -> manifests -> WebDataset shards",
    "inspect": "summarise a built corpus",
    "preview": "draw a contact sheet of one sample's frames and sentences",
    "report": "plots and a markdown summary of a built corpus",
    "train": "pre-train LF-VILA from shards",
    "eval": "evaluate a checkpoint on held-out shards",
    "demo": "render the embedded sample, build it, train tiny, evaluate",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lfvila", description="LF-VILA corpus builder and trainer.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--debug", action="store_true", help="show the traceback of user errors too")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, help_text in COMMANDS.items():
        module = importlib.import_module(f"lfvila.commands.{name}")
        p = sub.add_parser(name, help=help_text, description=(module.__doc__ or help_text).strip(),
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    from lfvila.errors import UserError

    try:
        return int(args._run(args) or 0)
    except UserError as exc:
        if args.debug:
            raise
        # A mistake in what was asked for: the message says what to change, a traceback would hide it.
        print(f"lfvila {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
