"""Subcommands of the lfvila console script: each is add_arguments(parser) + run(args)."""

import sys


def user_error(command: str, message: str, status: int = 2) -> int:
    """Print ``lfvila COMMAND: error: MESSAGE`` (argparse's form) to stderr; return the exit status
    (2, argparse's, for a usage error)."""
    print(f"lfvila {command}: error: {message}", file=sys.stderr)
    return status
