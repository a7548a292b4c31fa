"""The minimal tar member reader agrees with Python's tarfile and rejects what is not a tar."""
from __future__ import annotations

import io
import random
import tarfile

import numpy as np
import pytest

from lfvila.data import DataConfig
from lfvila.data.reader import TarFormatError, _ShardDescriptor, iter_tar_members, read_shard
from lfvila.data.sampling import plan_sample
from lfvila.testing import write_synthetic_shards


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


def test_a_large_archive_over_many_chunks_matches_tarfile_and_members_outlive_refills():
    """Random sizes (some larger than a chunk) read with a small chunk: every member, held
    while later chunks are read, still holds its own bytes (the reader recycles idle chunks)."""
    rng = random.Random(0)
    members = [(f"k{i // 7}.{i:04d}.jpg", rng.randbytes(rng.choice([0, 1, 511, 512, 513, 3000, 9000])))
               for i in range(300)]
    data = tar_bytes(tarfile.GNU_FORMAT, members)
    held = list(iter_tar_members(io.BytesIO(data), chunk_bytes=4096))
    held += list(iter_tar_members(TrickleStream(data), chunk_bytes=4096))  # reuses idle chunks
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        expected = [(m.name, tar.extractfile(m).read()) for m in tar.getmembers() if m.isfile()]
    assert held == expected * 2


def test_a_corrupt_header_among_many_in_one_chunk():
    """Members before the corrupt header come out; the corrupt one raises; nothing after it."""
    members = [(f"k{i}.json", b"x" * 100) for i in range(20)]
    broken = bytearray(tar_bytes(tarfile.USTAR_FORMAT, members, with_dir=False))
    broken[12 * 1024 + 3] ^= 0x01  # header of member 12 (each member: header + one data block)
    got = []
    with pytest.raises(TarFormatError, match="checksum"):
        for name, data in iter_tar_members(io.BytesIO(bytes(broken))):
            got.append(name)
    assert got == [name for name, _ in members[:12]]
    broken = bytearray(tar_bytes(tarfile.USTAR_FORMAT, members, with_dir=False))
    broken[5 * 1024 + 124:5 * 1024 + 136] = b"not a size!\0"  # unparseable size: invalid before checksum
    with pytest.raises(TarFormatError, match="invalid header$"):
        assert [n for n, _ in iter_tar_members(io.BytesIO(bytes(broken)))] == []


def test_planned_samples_hold_copies_of_their_frames_only(tmp_path):
    """read_shard hands frames out as views into its read buffers; a plan (which may sit in the
    shuffle buffer for long) must own plain bytes of just its frames, or it would pin whole chunks."""
    paths = write_synthetic_shards(tmp_path, n_samples=2, samples_per_shard=2)
    cfg = DataConfig(train_shards=paths, num_workers=0, n_sentences=2, frames_per_sentence=2,
                     min_frames_per_sentence=1)
    raws = list(read_shard(paths[0]))
    assert all(type(raw["json"]) is bytes for raw in raws)
    for i, raw in enumerate(raws):
        plan = plan_sample(raw, cfg, np.random.default_rng(i), True, (i,))
        frames = {bytes(v) for v in raw["__frames__"]}  # read by offsets (the shard stage's layout)
        assert all(type(j) is bytes and j in frames for j in plan.jpegs)
        assert len(plan.jpegs) <= cfg.n_sentences * cfg.frames_per_sentence < len(frames)


@pytest.mark.parametrize("spelling", [b"%07o\0", b"%06o  ", b" %06o\0", b"%o\0"])
def test_other_checksum_spellings_are_read(spelling):
    """tarfile writes "%06o\\0 "; other writers pad differently: all parse as octal up to a NUL."""
    members = [("k1.json", b"{}"), ("k1.0000.jpg", b"jpeg")]
    data = bytearray(tar_bytes(tarfile.USTAR_FORMAT, members, with_dir=False))
    checksum = int(data[1024 + 148:1024 + 154], 8)  # the second header's
    data[1024 + 148:1024 + 156] = (spelling % checksum).ljust(8, b"\0")
    assert list(iter_tar_members(io.BytesIO(bytes(data)))) == members
    data[1024 + 148:1024 + 156] = b"garbage\0"
    with pytest.raises(TarFormatError, match="invalid header$"):
        list(iter_tar_members(io.BytesIO(bytes(data))))


def test_local_files_are_read_alike(tmp_path):
    """A regular file read from its start is also read with pread (for samples read by offsets);
    other streams and a file opened part-way only in chunks. All give tarfile's members."""
    rng = random.Random(1)
    members = [(f"k{i // 5}.{i:04d}.jpg", rng.randbytes(rng.randrange(0, 20000))) for i in range(60)]
    path = tmp_path / "a.tar"
    path.write_bytes(b"x" * 512 + tar_bytes(tarfile.PAX_FORMAT, members))
    with open(path, "rb") as f:
        f.seek(512)  # part-way: not read by offsets
        assert list(iter_tar_members(f, chunk_bytes=4096)) == members
    path.write_bytes(tar_bytes(tarfile.PAX_FORMAT, members))
    with open(path, "rb") as f:
        assert _ShardDescriptor.of(f) is not None
        held = list(iter_tar_members(f))
    assert held == members  # still readable after the file is closed
    path.write_bytes(path.read_bytes()[:30000])  # truncated inside a member
    with open(path, "rb") as f, pytest.raises(TarFormatError, match="end of data"):
        list(iter_tar_members(f))
    path.write_bytes(b"")
    with open(path, "rb") as f, pytest.raises(TarFormatError, match="empty"):
        list(iter_tar_members(f))
