"""Atomic, durable outputs: write under a temporary name beside the target, then rename it into place.

Every file lfvila promises is either complete or absent after a crash (manifest tables, shard tars
and their status and stats, corpus indexes, configs, evaluation and download outputs, the demo's
videos) goes through this module, so the promise has one implementation:

1. the bytes go to a temporary in the target's own directory (a rename is atomic only within one
   file system), named ``.NAME.<32 hex digits>.tmp``: hidden, ending in ``.tmp`` (never taken for
   an output: the shard stage and the video lookup skip such names), with a random part so that
   concurrent writers of the same target (two ranks, two array jobs) never share a temporary;
2. the temporary is fsynced, then ``os.replace``\\ d onto the target, then the directory is fsynced,
   so after a power loss the target holds either its old content or the whole new one;
3. on any exception (a full disk, a Ctrl-C) the temporary is removed and the target is untouched.

A kill -9 between 1 and 2 leaves the temporary behind, never a complete-looking target. Stages that
own a directory remove the temporaries of their outputs left by a killed run
(:func:`remove_temporaries`); :func:`temporaries_pattern` is the glob for them.

Three forms: :func:`atomic_write` (a context manager yielding the open file),
:func:`atomic_write_bytes` / :func:`atomic_write_text`, and :class:`AtomicPath` for writers that
need a path or live longer than one ``with`` block (``pyarrow.parquet.ParquetWriter``, an ffmpeg
subprocess, ``savefig``, the shard tar writer, a directory built in place). A finished file made
elsewhere (a download's work folder) is moved into place with :func:`replace_durably`.
"""
from __future__ import annotations

import contextlib
import glob
import logging
import os
import shutil
import uuid
from pathlib import Path
from typing import IO, Iterator

log = logging.getLogger(__name__)

TMP_SUFFIX = ".tmp"


def temporary_path(path: str | os.PathLike) -> Path:
    """A fresh temporary name for ``path``: ``.NAME.<uuid4 hex>.tmp`` in the same directory."""
    path = Path(path)
    return path.with_name(f".{path.name}.{uuid.uuid4().hex}{TMP_SUFFIX}")


def temporaries_pattern(name: str) -> str:
    """The glob (relative to the directory) matching every temporary of target file name ``name``;
    ``name`` itself may hold glob syntax (``[``, ``*``) and is matched literally."""
    return f".{glob.escape(name)}.*{TMP_SUFFIX}"


def remove_temporaries(directory: str | os.PathLike, name: str) -> int:
    """Remove the temporaries of ``directory/name`` left by killed writers; returns how many went.
    Only for a directory whose writer is not running concurrently (its own stage owns it)."""
    removed = 0
    for stale in Path(directory).glob(temporaries_pattern(name)):
        _remove_quietly(stale)
        removed += 1
    return removed


def fsync_dir(path: str | os.PathLike) -> None:
    """Make the entries of directory ``path`` (creations, renames) durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def replace_durably(src: str | os.PathLike, dst: str | os.PathLike, *, synced: bool = False) -> None:
    """Give the complete file or directory ``src`` the name ``dst`` (same file system), durably:
    ``src``'s data (or a directory's entries) reach the disk first, then the rename, then ``dst``'s
    directory entry. ``synced``: the caller already fsynced ``src``'s data."""
    src, dst = Path(src), Path(dst)
    if not synced:
        fsync_dir(src) if src.is_dir() else _fsync_file(src)
    os.replace(src, dst)
    fsync_dir(dst.parent)


def _remove_quietly(path: Path) -> None:
    """Remove a temporary after a failure without raising (the disk may be failing; a rerun cleans up)."""
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
    except OSError as e:
        log.warning("could not remove %s: %s", path, e)


class AtomicPath:
    """The temporary of one output, for writers that take a path: write ``self.tmp``, then
    :meth:`commit` (durable rename onto ``self.path``) or :meth:`discard`.

    As a context manager it yields the temporary path and commits when the block ends normally,
    discards on an exception::

        with AtomicPath(out / "index.parquet") as tmp:
            pq.write_table(table, tmp)
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.tmp = temporary_path(self.path)

    def commit(self, *, synced: bool = False) -> None:
        """Rename the finished temporary onto the target (see :func:`replace_durably`); on failure the
        temporary is removed and the error raised."""
        try:
            replace_durably(self.tmp, self.path, synced=synced)
        except BaseException:
            self.discard()
            raise

    def discard(self) -> None:
        """Remove the temporary, if any; never raises for its own I/O errors."""
        _remove_quietly(self.tmp)

    def __enter__(self) -> Path:
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.discard()


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb", *, encoding: str | None = None,
                 newline: str | None = None) -> Iterator[IO]:
    """Open a temporary for ``path`` (``mode`` "w"/"wb"/"wt"), yield the file, and when the block ends
    normally flush, fsync and rename it onto ``path``; on an exception remove it (``path`` untouched)."""
    if mode not in ("w", "wt", "wb"):
        raise ValueError(f"atomic_write writes a whole new file: mode 'w', 'wt' or 'wb', got {mode!r}")
    target = AtomicPath(path)
    try:
        # "x": the name is fresh, and a clash would mean two writers (never overwrite theirs)
        with open(target.tmp, mode.replace("w", "x"), encoding=encoding, newline=newline) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        target.discard()
        raise
    target.commit(synced=True)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` as the whole of ``path`` through :func:`atomic_write`."""
    with atomic_write(path, "wb") as f:
        f.write(data)


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> None:
    """Write ``text`` (``encoding``; no newline translation) as the whole of ``path`` through :func:`atomic_write`."""
    with atomic_write(path, "w", encoding=encoding, newline="") as f:
        f.write(text)
