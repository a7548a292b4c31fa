"""A byte-deterministic tar writer that can take back a half-written sample.

Every member header has fixed fields (mtime 0, uid/gid 0, empty user/group names, mode 0o444), so
the same members in the same order always give the same bytes. ``write_sample`` holds a sample's
JPEGs in memory and writes the whole sample (``KEY.json`` first) once it is accepted; ``rollback``
truncates the file to a mark when writing a sample fails part-way (an exception, e.g. disk full).

Layout a reader can rely on (docs/shards.md, "Sample format"): a member is its header block(s),
then its data padded with zeros to a multiple of 512 bytes. ``member_header`` writes PAX format,
which for a name of at most 100 ASCII characters and a size under 8 GiB is one plain ustar block
(512 bytes); only a longer or non-ASCII name (or a larger size) gets PAX extended-header blocks in
front. ``frame_header_offsets`` computes where every frame member of a sample lies from the sizes
recorded in its JSON.
"""
from __future__ import annotations

import json
import logging
import os
import tarfile
from pathlib import Path

log = logging.getLogger(__name__)

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


def padded(size: int) -> int:
    """Bytes that ``size`` bytes of member data take in the tar (rounded up to whole 512-byte blocks)."""
    return -(-size // BLOCK) * BLOCK


def frame_header_offsets(json_header_offset: int, json_member_bytes: int, frame_bytes: list[int]) -> list[int]:
    """Byte offsets of the frame members' headers of one sample (``KEY.json`` first, then the frames).

    ``json_header_offset`` is where the ``KEY.json`` member starts (its header; the sample's offset in
    ``index.parquet``), ``json_member_bytes`` the bytes the whole JSON member takes (header block(s) plus
    padded data: ``512 + padded(json size)`` for a single-block header), ``frame_bytes`` the JSON's list.
    Exact when every frame member has a single 512-byte header, which holds when ``KEY.NNNN.jpg`` is at
    most 100 ASCII characters; readers must check the header they jump to (``read_member_header``).
    """
    offsets = []
    at = json_header_offset + json_member_bytes
    for size in frame_bytes:
        offsets.append(at)
        at += BLOCK + padded(size)
    return offsets


def read_member_header(block: bytes) -> tuple[str, int]:
    """``(name, size)`` of the plain ustar header in ``block`` (512 bytes); ValueError when it is not one.

    A PAX extended header (type ``x``, written for long or non-ASCII names) is not a plain header: the
    caller must fall back to parsing members in order.
    """
    try:
        info = tarfile.TarInfo.frombuf(block[:BLOCK], "utf-8", "surrogateescape")  # checks the checksum
    except tarfile.HeaderError as e:
        raise ValueError(f"no valid tar header: {e}") from None
    if info.type != tarfile.REGTYPE:
        raise ValueError(f"tar header of {info.name!r} has type {info.type!r}, not a regular file")
    return info.name, info.size


class DeterministicTarWriter:
    """Append-only tar file with ``mark``/``rollback``; ``close`` writes the end-of-archive blocks."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.file = open(self.path, "wb")

    def tell(self) -> int:
        return self.file.tell()

    def add(self, name: str, data: bytes) -> None:
        """Append one regular file member: header, ``data``, zero padding to a 512-byte boundary."""
        self.file.write(member_header(name, len(data)))
        self.file.write(data)
        pad = -len(data) % BLOCK
        if pad:
            self.file.write(b"\0" * pad)

    def add_sample(self, key: str, meta: dict, jpegs: list[bytes], digits: int = 4) -> tuple[int, int]:
        """Append one sample: ``KEY.json`` (``meta`` with ``frame_bytes`` set right after ``frame_times``),
        then ``KEY.{i:0{digits}d}.jpg`` for every frame; returns ``(offset, size)`` of the sample in the tar.

        ``meta`` must hold ``frame_times`` (one per JPEG); the JSON is compact UTF-8 in ``meta``'s key order.
        """
        if len(meta["frame_times"]) != len(jpegs):
            raise ValueError(f"{key}: {len(meta['frame_times'])} frame_times for {len(jpegs)} frames")
        ordered = {}
        for name, value in meta.items():
            if name != "frame_bytes":
                ordered[name] = value
            if name == "frame_times":
                ordered["frame_bytes"] = [len(jpeg) for jpeg in jpegs]  # data length of each frame member
        offset = self.tell()
        self.add(f"{key}.json", json.dumps(ordered, ensure_ascii=False, separators=(",", ":")).encode("utf-8"))
        for i, jpeg in enumerate(jpegs):
            self.add(f"{key}.{i:0{digits}d}.jpg", jpeg)
        return offset, self.tell() - offset

    def add_stream_sample(self, key: str, meta: dict, extension: str, data: bytes) -> tuple[int, int]:
        """Append one sample stored as a single stream: ``KEY.json`` (``meta``, compact UTF-8, in its
        key order), then ``KEY.{extension}`` holding ``data``; returns ``(offset, size)`` as add_sample."""
        offset = self.tell()
        self.add(f"{key}.json", json.dumps(meta, ensure_ascii=False, separators=(",", ":")).encode("utf-8"))
        self.add(f"{key}.{extension}", data)
        return offset, self.tell() - offset

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
        """Close and remove the file; never raises for the file's own I/O errors.

        Abort follows a failure, often of the disk (full, quota, read-only, I/O error): closing then
        fails again on the buffered tail, and that must neither hide the first error nor keep the
        temporary file from being removed (it would hold the space a rerun needs).
        """
        try:
            self.file.close()  # closes the descriptor even when flushing the buffer fails
        except OSError:
            pass
        try:
            self.path.unlink(missing_ok=True)
        except OSError as e:  # the next attempt at this shard removes it (lfvila.shards.task removes its shard's temporaries)
            log.warning("could not remove %s: %s", self.path, e)
