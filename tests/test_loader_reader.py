"""The minimal tar member reader agrees with Python's tarfile and rejects what is not a tar."""
from __future__ import annotations

import io
import tarfile

import pytest

from lfvila.data.reader import TarFormatError, iter_tar_members


def tar_bytes(fmt: int, members: list[tuple[str, bytes]], with_dir: bool = True) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        if with_dir:  # non-file members are skipped
            info = tarfile.TarInfo("somedir")
            info.type = tarfile.DIRTYPE
            tar.addfile(info)
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


MEMBERS = [
    ("k1.json", b'{"a": 1}'),
    ("k1.0000.jpg", bytes(range(256)) * 3),
    ("d" * 120 + "/k2.json", b"x" * 513),  # needs a long-name mechanism (GNU 'L', pax, or ustar prefix)
    ("k3." + "0" * 150 + ".jpg", b""),
    ("naïve-ключ.json", b"{}"),
]


@pytest.mark.parametrize("fmt", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_members_match_tarfile(fmt):
    members = MEMBERS if fmt != tarfile.USTAR_FORMAT else [m for m in MEMBERS if len(m[0]) < 100 or "/" in m[0]]
    data = tar_bytes(fmt, members)
    assert list(iter_tar_members(io.BytesIO(data))) == members


def test_corrupt_truncated_and_empty_streams_raise():
    data = tar_bytes(tarfile.PAX_FORMAT, MEMBERS[:2])
    broken = bytearray(data)
    broken[1026] ^= 0xFF  # inside k1.json's data (after the directory and k1 headers): not detectable
    assert len(list(iter_tar_members(io.BytesIO(bytes(broken))))) == 2
    broken[5] ^= 0xFF  # first header's name
    with pytest.raises(TarFormatError, match="checksum"):
        list(iter_tar_members(io.BytesIO(bytes(broken))))
    with pytest.raises(TarFormatError, match="end of data"):
        list(iter_tar_members(io.BytesIO(data[:700])))
    with pytest.raises(TarFormatError, match="empty"):
        list(iter_tar_members(io.BytesIO(b"")))
    assert list(iter_tar_members(io.BytesIO(b"\0" * 1024))) == []  # an empty archive is fine


class TrickleStream:
    """A pipe-like stream: short reads of at most 7 bytes and no ``readinto``."""

    def __init__(self, data: bytes):
        self.data, self.pos = data, 0

    def read(self, n: int) -> bytes:
        chunk = self.data[self.pos:self.pos + min(n, 7)]
        self.pos += len(chunk)
        return chunk


def test_short_reads_and_members_larger_than_the_read_buffer():
    members = [("k1.json", b"{}"), ("k1.0000.jpg", bytes(range(256)) * 12), ("k2.json", b"y" * 1500)]
    data = tar_bytes(tarfile.PAX_FORMAT, members)
    assert list(iter_tar_members(TrickleStream(data), chunk_bytes=1024)) == members
    with pytest.raises(TarFormatError, match="end of data"):
        list(iter_tar_members(TrickleStream(data[:2500]), chunk_bytes=1024))
