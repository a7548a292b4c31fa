"""A byte-deterministic tar writer that can take back a half-written sample.

Every member header has fixed fields (mtime 0, uid/gid 0, empty user/group names, mode 0o444), so
the same members in the same order always give the same bytes. Members are written as they come
(frames stream straight to disk, memory stays bounded); ``rollback`` truncates the file to a mark
when a sample turns out to be rejected after some of its frames were written.
"""
from __future__ import annotations

import os
import tarfile
from pathlib import Path

BLOCK = tarfile.BLOCKSIZE  # 512


def member_header(name: str, size: int) -> bytes:
    """The tar header block(s) of a regular file member with fixed metadata."""
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = 0
    info.mode = 0o444
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.type = tarfile.REGTYPE
    return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


class DeterministicTarWriter:
    """Append-only tar file with ``mark``/``rollback``; ``close`` writes the end-of-archive blocks."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.file = open(self.path, "wb")

    def tell(self) -> int:
        return self.file.tell()

    def add(self, name: str, data: bytes) -> None:
        self.file.write(member_header(name, len(data)))
        self.file.write(data)
        pad = -len(data) % BLOCK
        if pad:
            self.file.write(b"\0" * pad)

    def rollback(self, offset: int) -> None:
        """Drop everything written after ``offset`` (a value of ``tell()``)."""
        self.file.seek(offset)
        self.file.truncate(offset)

    def close(self) -> None:
        """Finish the archive (two zero blocks) and flush it to disk."""
        self.file.write(b"\0" * (2 * BLOCK))
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()

    def abort(self) -> None:
        self.file.close()
        self.path.unlink(missing_ok=True)
