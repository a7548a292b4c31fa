"""Source adapters: one small module per raw format, each yielding ``RawVideo`` / ``Reject`` records.

A source is named on the command line as ``FORMAT:PATH`` (optionally ``FORMAT:PATH?key=value&...``,
e.g. ``hdvila:meta.jsonl?text=texts.tsv``). Each adapter module provides:

- ``IS_ASR``: True when its records are raw ASR fragments that become sentences (lfvila.manifest.asr);
- ``input_files(path, options) -> list[Path]``: the files it will read, in reading order;
- ``read(path, options, progress, stats) -> Iterator[RawVideo | Reject]``: one ``RawVideo`` per video,
  ``Reject`` for records that cannot be parsed; ``progress(nbytes)`` is called as bytes are read;
  ``stats`` (a dict) receives adapter-specific counts that go to corpus.json.
"""
from __future__ import annotations

import importlib
from pathlib import Path
from typing import NamedTuple
from urllib.parse import parse_qsl

from lfvila.errors import ConfigError

FORMATS = ("hdvila", "activitynet", "youcook2", "howto100m", "subtitles", "didemo", "queryd", "condensed_movies")


class SourceSpec(NamedTuple):
    format: str
    path: Path
    options: dict
    spec: str  # the string as given


def split_source_spec(spec: str, formats: tuple[str, ...] = FORMATS) -> tuple[str, str, str]:
    """``FORMAT:PATH[?QUERY]`` -> (format in lower case, path, query); ConfigError naming the problem.
    The form rule of every ``--source`` (``lfvila download`` passes its own list of formats)."""
    fmt, sep, rest = spec.partition(":")
    if not sep or not rest:
        raise ConfigError(f"source {spec!r} is not of the form FORMAT:PATH")
    fmt = fmt.lower()
    if fmt not in formats:
        raise ConfigError(f"source {spec!r}: unknown format {fmt!r}; known: {', '.join(formats)}")
    path, _, query = rest.partition("?")
    return fmt, path, query


def parse_source_spec(spec: str) -> SourceSpec:
    """Parse ``FORMAT:PATH[?key=value&...]`` (FORMAT in any case); ConfigError naming the problem."""
    fmt, path, query = split_source_spec(spec)
    options = dict(parse_qsl(query, keep_blank_values=True)) if query else {}
    adapter = get_adapter(fmt)
    unknown = sorted(set(options) - set(getattr(adapter, "OPTIONS", ())))
    if unknown:
        raise ConfigError(f"source {spec!r}: unknown option(s) {unknown}")
    return SourceSpec(fmt, Path(path), options, spec)


def get_adapter(fmt: str):
    """The adapter module of a format."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown source format {fmt!r}; known: {', '.join(FORMATS)}")
    return importlib.import_module(f"lfvila.manifest.sources.{fmt}")
