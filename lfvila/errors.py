"""Errors that are the user's to fix (a wrong option, input file or config value), not bugs.

The library raises them with a message that says what is wrong and how to fix it; ``lfvila``
prints ``lfvila <command>: error: <message>`` and exits 2 without a traceback (``--debug`` shows
it). So does ``TaskFailure``: work the environment stopped (disk full, a lost worker), named with its
cause. Any other exception is a bug and keeps its traceback.
"""
from __future__ import annotations


class UserError(Exception):
    """A mistake in what was asked for: bad option, missing or unusable input, conflicting settings."""


class ConfigError(UserError, ValueError):
    """A config value or key is wrong (a ``ValueError`` too, for callers that catch that)."""


class InputError(UserError, FileNotFoundError):
    """An input path is missing or is not what the command needs (a ``FileNotFoundError`` too)."""


class TaskFailure(UserError, RuntimeError):
    """Tasks that failed as a whole (disk full, read-only output, a lost worker): the message names them
    and their causes; finished tasks are kept and a rerun of the same command redoes only these."""


class CheckpointError(UserError, ValueError):
    """A checkpoint is incomplete, damaged, tampered with or cannot be loaded without running code."""
