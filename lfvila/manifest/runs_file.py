"""The released LF-VILA-8M runs (``lfvila8m_clipid.jsonl``): make exactly the listed long-form videos.

One long-form video per line, its clip ids in any of three spellings:

- a JSON list of clip ids: ``["QMi8x8o55Ns.1.mp4", "QMi8x8o55Ns.2.mp4", ...]`` (the release);
- a JSON list of objects with a ``clip_id``: ``[{"clip_id": "QMi8x8o55Ns.1.mp4", "text": ...}, ...]``
  (the released training data; other keys are ignored);
- plain ids separated by whitespace and/or commas: ``QMi8x8o55Ns.1.mp4, QMi8x8o55Ns.2.mp4``.

A run belongs to the video of its first well-formed clip id (``<video_id>.<n>.mp4``). The file is
indexed once in a temporary SQLite database on disk (one row per run, so memory stays bounded for
the release's 8.5M lines) and each video's runs are fetched, then deleted, when the metadata reaches
that video; runs whose video never appears are reported at the end.

Every clip id a run names ends either in that run's long-form video or in ``rejects.parquet``
(stage ``runs``) with one of ``RUN_CLIP_REASONS``; a line that names no clip id is a
``malformed_record`` there too. The rejects of stage ``runs`` are references, not input clips: the
input accounting (every metadata clip kept or rejected, every kept clip in a long-form video or a
merge reject) is unchanged, with ``not_in_runs`` for kept clips that no listed run names.
"""
from __future__ import annotations

import re
import sqlite3
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

from lfvila.errors import InputError
from lfvila.manifest.jsonstream import loads_line
from lfvila.manifest.records import (
    MALFORMED_RECORD, MAX_LINE_BYTES, RUN_CLIP_DUPLICATE, RUN_CLIP_MISSING, RUN_CLIP_OTHER_VIDEO, RUN_CLIP_REJECTED,
)
from lfvila.manifest.sources._io import iter_lines

_CLIP_ID = re.compile(r"(.+)\.(\d+)\.mp4").fullmatch
_SEPARATORS = re.compile(r"[\s,]+")
_BATCH = 50_000


class ListedRun(NamedTuple):
    """One line of the runs file: its line number and clip ids as listed."""

    line: int
    clip_ids: list[str]


class RunProblem(NamedTuple):
    """A clip id (or a whole line) of the runs file that did not make it into its run."""

    video_id: str | None
    clip_id: str | None
    reason: str
    detail: str
    line: int


def video_of(clip_id: str) -> str | None:
    """``V`` of a release clip id ``V.<n>.mp4``, None when the id has another shape."""
    m = _CLIP_ID(clip_id)
    return m.group(1) if m else None


def parse_line(text: str | None) -> list[str]:
    """The clip ids of one runs-file line (any of the three spellings); ValueError when malformed."""
    if text is None:
        raise ValueError(f"line over the cap of {MAX_LINE_BYTES} bytes (not read)")
    stripped = text.strip()
    if stripped.startswith("["):
        items = loads_line(stripped)
        if not isinstance(items, list):
            raise ValueError("expected a JSON list")
        ids = []
        for item in items:
            if isinstance(item, dict):
                item = item.get("clip_id")
            if not isinstance(item, str):
                raise ValueError("expected clip ids (strings) or objects with a string clip_id")
            ids.append(item)
        return ids
    return [t for t in _SEPARATORS.split(stripped) if t]


class RunsIndex:
    """The runs file indexed by video id; ``problems`` collects what could not be placed."""

    def __init__(self, path: Path):
        self.path = Path(path)
        if not self.path.is_file():
            raise InputError(f"manifest.runs_file: {self.path}: no such file")
        self._tmp = tempfile.TemporaryDirectory(prefix="lfvila-runs-")
        self._conn = sqlite3.connect(Path(self._tmp.name) / "runs.sqlite")
        self.lines = 0  # runs read (non-empty, well-formed lines)
        self.clip_ids = 0  # clip ids on those lines
        self.placed = 0  # of those, placed in their run (kept clips of the run's video; counted by the build)
        self.problems: list[RunProblem] = []  # malformed lines (few; the rest go through take())
        try:
            self._load()
        except BaseException:  # e.g. interrupted while indexing: no temporary database left behind
            self.close()
            raise

    def _load(self) -> None:
        conn = self._conn
        conn.execute("PRAGMA journal_mode = OFF")
        conn.execute("PRAGMA synchronous = OFF")
        conn.execute("CREATE TABLE runs (video_id TEXT, line INTEGER, clip_ids TEXT)")
        batch: list[tuple] = []
        for line_no, text in iter_lines(self.path, None):
            if text is not None and not text.strip():
                continue
            try:
                clip_ids = parse_line(text)
                video_id = next((v for v in map(video_of, clip_ids) if v is not None), None)
                if video_id is None:
                    raise ValueError("no clip id of the form <video_id>.<n>.mp4")
            except ValueError as e:
                self.problems.append(RunProblem(None, None, MALFORMED_RECORD, f"runs file line {line_no}: {e}", line_no))
                continue
            batch.append((video_id, line_no, "\n".join(clip_ids)))
            self.lines += 1
            self.clip_ids += len(clip_ids)
            if len(batch) >= _BATCH:
                conn.executemany("INSERT INTO runs VALUES (?, ?, ?)", batch)
                batch.clear()
        conn.executemany("INSERT INTO runs VALUES (?, ?, ?)", batch)
        conn.execute("CREATE INDEX runs_video ON runs (video_id)")

    def take(self, video_id: str) -> list[ListedRun]:
        """The runs of ``video_id`` in file order, removed from the index (a video is read once)."""
        rows = self._conn.execute("SELECT line, clip_ids FROM runs WHERE video_id = ? ORDER BY line",
                                  (video_id,)).fetchall()
        if rows:
            self._conn.execute("DELETE FROM runs WHERE video_id = ?", (video_id,))
        return [ListedRun(line, ids.split("\n")) for line, ids in rows]

    def never_seen(self) -> Iterator[RunProblem]:
        """Every clip id of the runs whose video the metadata never had (call after all sources)."""
        for video_id, line, ids in self._conn.execute("SELECT video_id, line, clip_ids FROM runs ORDER BY line"):
            for clip_id in ids.split("\n"):
                yield RunProblem(video_id, clip_id, RUN_CLIP_MISSING,
                                 f"runs file line {line}: video {video_id} is not in the metadata", line)

    def close(self) -> None:
        self._conn.close()
        self._tmp.cleanup()


class PlacedRun(NamedTuple):
    """A listed run resolved against a video's kept clips."""

    line: int
    clip_ids: list[str]  # the kept clips of the run, in clip-number order
    listed: int  # clip ids on the line


def place_runs(video_id: str, runs: list[ListedRun], kept: dict[str, int],
               raw_ids: set[str] | None) -> tuple[list[PlacedRun], list[RunProblem]]:
    """Resolve a video's listed runs against its kept clips (clip_id -> clip number).

    ``raw_ids``: every clip id the metadata had for the video (kept or rejected); None when all were
    kept. A clip id is placed in the first run that names it; later mentions are duplicates.
    """
    placed: list[PlacedRun] = []
    problems: list[RunProblem] = []
    taken: set[str] = set()
    for run in runs:
        members = []
        for clip_id in run.clip_ids:
            where = f"runs file line {run.line}"
            if video_of(clip_id) != video_id:
                problems.append(RunProblem(video_id, clip_id, RUN_CLIP_OTHER_VIDEO,
                                           f"{where}: clip of another video in a run of {video_id}", run.line))
            elif clip_id in taken:
                problems.append(RunProblem(video_id, clip_id, RUN_CLIP_DUPLICATE,
                                           f"{where}: clip already in an earlier run (or earlier on the line)", run.line))
            elif clip_id in kept:
                taken.add(clip_id)
                members.append(clip_id)
            elif raw_ids is not None and clip_id in raw_ids:
                problems.append(RunProblem(video_id, clip_id, RUN_CLIP_REJECTED,
                                           f"{where}: clip rejected by validation (see its own reject row)", run.line))
            else:
                problems.append(RunProblem(video_id, clip_id, RUN_CLIP_MISSING,
                                           f"{where}: clip not in the metadata", run.line))
        members.sort(key=kept.__getitem__)
        placed.append(PlacedRun(run.line, members, len(run.clip_ids)))
    return placed, problems
