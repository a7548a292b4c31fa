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
    "download": "download the videos (and captions) of sources, every one accounted for",
    "build": "build the corpus: sources -> manifests -> WebDataset shards",
    "inspect": "summarise a built corpus",
    "preview": "draw a contact sheet of one sample's frames and sentences",
    "report": "plots and a markdown summary of a built corpus",
    "train": "pre-train LF-VILA from shards",
    "eval": "evaluate a checkpoint on held-out shards",
    "demo": "render the embedded sample, build it, train tiny, evaluate",
}


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions as written (their examples keep their lines), and each option's default shown
    unless its help already states it (ArgumentDefaultsHelpFormatter would repeat it)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" in text or action.default in (None, False, [], argparse.SUPPRESS) or not action.option_strings:
            return text
        return f"{text} (default: %(default)s)"


def build_parser() -> argparse.ArgumentParser:
    from lfvila import __version__

    parser = argparse.ArgumentParser(prog="lfvila", description="LF-VILA corpus builder and trainer.")
    parser.add_argument("--version", action="version", version=f"lfvila {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--debug", action="store_true", help="show the traceback of user errors too")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, help_text in COMMANDS.items():
        module = importlib.import_module(f"lfvila.commands.{name}")
        p = sub.add_parser(name, help=help_text, description=(module.__doc__ or help_text).strip(),
                           formatter_class=_HelpFormatter)
        module.add_arguments(p)
        p.set_defaults(_run=module.run, _interrupted=getattr(module, "interrupted", None))
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
    except KeyboardInterrupt:
        if args.debug or args._interrupted is None:
            raise
        # Ctrl-C is not a bug: say what is complete and how to go on, not where Python was.
        print(f"\nlfvila {args.command}: interrupted. {args._interrupted(args)}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
