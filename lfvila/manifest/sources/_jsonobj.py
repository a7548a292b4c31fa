"""Shared reading loop for sources stored as one JSON object keyed by video id."""
from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

from lfvila.errors import InputError
from lfvila.manifest.jsonstream import EntryProblem, JsonStreamError, MissingKeyError, iter_object_items
from lfvila.manifest.records import MALFORMED_RECORD, RawVideo, Reject

# parse_entry(video_id, value, line, file) -> RawVideo, raising ValueError for a malformed entry.
EntryParser = Callable[[str, object, int, str], RawVideo]


def read_json_object(source: str, path: Path, object_path: tuple[str, ...], parse_entry: EntryParser,
                     progress: Callable[[int], None] | None) -> Iterator[RawVideo | Reject]:
    """One RawVideo per entry; a malformed, oversized or too deeply nested entry is one Reject; broken
    JSON ends the file with a Reject. A file whose object lacks ``object_path`` is an InputError."""
    file = str(path)
    entries = 0
    with open(path, "rb") as f:
        try:
            for video_id, value, line in iter_object_items(f, object_path, progress=progress):
                entries += 1
                if isinstance(value, EntryProblem):
                    yield Reject(source, video_id, None, "parse", value.reason, f"line {line}: {value.detail}",
                                 None, file, line)
                    continue
                try:
                    yield parse_entry(video_id, value, line, file)
                except ValueError as e:
                    yield Reject(source, video_id, None, "parse", MALFORMED_RECORD, f"line {line}: {e}",
                                 repr(value)[:500], file, line)
        except MissingKeyError as e:
            if not entries:
                raise InputError(f"{source} source {file}: {e} (is it a {source} file?)") from None
            yield Reject(source, None, None, "parse", MALFORMED_RECORD, f"line {e.line}: {e}; "
                         "the rest of the file was not read", None, file, e.line)
        except JsonStreamError as e:
            # The rest of the file cannot be resynchronised: one reject stands for it, with the line.
            yield Reject(source, None, None, "parse", MALFORMED_RECORD, f"line {e.line}: invalid JSON ({e}); "
                         "the rest of the file was not read", None, file, e.line)
