"""Reading a built corpus directory (the layout in README, "Corpus layout") for the viz commands.

Every reader tolerates a missing table (a corpus built with ``--stage manifest`` has no shards
yet) and returns ``None`` or an empty result, so ``inspect`` can describe a half-built corpus.
"""
from __future__ import annotations

import io
import json
import tarfile
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq


@dataclass(frozen=True)
class CorpusPaths:
    """The files of a corpus directory ``root``."""

    root: Path

    @property
    def corpus_json(self) -> Path:
        return self.root / "corpus.json"

    @property
    def clips(self) -> Path:
        return self.root / "clips.parquet"

    @property
    def rejects(self) -> Path:
        return self.root / "rejects.parquet"

    @property
    def longform(self) -> Path:
        return self.root / "longform.parquet"

    @property
    def shards_dir(self) -> Path:
        return self.root / "shards"

    @property
    def index(self) -> Path:
        return self.shards_dir / "index.parquet"


def read_table(path: Path, columns: list[str] | None = None) -> pa.Table | None:
    """A parquet table, only the ``columns`` it has of those asked for; ``None`` when absent."""
    if not path.exists():
        return None
    if columns is not None:
        present = set(pq.read_schema(path).names)
        columns = [c for c in columns if c in present]
    return pq.read_table(path, columns=columns)


def read_corpus_json(paths: CorpusPaths) -> dict:
    return json.loads(paths.corpus_json.read_text()) if paths.corpus_json.exists() else {}


def shard_tars(paths: CorpusPaths) -> list[Path]:
    """Complete shards: ``{split}-NNNNNN.tar`` (temporary names start with a dot), and when the
    corpus writes per-shard ``NAME.stats.json`` files (written last), only tars that have one."""
    tars = sorted(p for p in paths.shards_dir.glob("*.tar") if not p.name.startswith("."))
    if any(paths.shards_dir.glob("*.stats.json")):
        tars = [t for t in tars if t.with_suffix(".stats.json").exists()]
    return tars


def split_of_shard(path: Path) -> str:
    """``train-000003.tar`` -> ``train``."""
    return path.name.rsplit("-", 1)[0]


def key_splits(paths: CorpusPaths) -> dict[str, str]:
    """Manifest key -> split, from ``longform.parquet``."""
    table = read_table(paths.longform, ["key", "split"])
    if table is None or "split" not in table.column_names:
        return {}
    return dict(zip(table.column("key").to_pylist(), table.column("split").to_pylist()))


def shard_status(paths: CorpusPaths) -> list[dict]:
    """Per-sample status rows of the video stage (key, split, shard, status, reason, ...), one per key.

    Found by content rather than by name: every parquet file under ``shards/`` other than the
    index that has ``key`` and ``status`` columns (per-shard files and a combined one). A key seen
    twice keeps its row from the per-shard file, which is rewritten when a shard is redone.
    """
    by_key: dict[str, dict] = {}
    if not paths.shards_dir.is_dir():
        return []
    files = sorted(p for p in paths.shards_dir.rglob("*.parquet") if p != paths.index and not p.name.startswith("."))
    # Combined tables (no shard name in the file name) first, so per-shard rows override them.
    files.sort(key=lambda p: p.name.count(".") > 1)
    for path in files:
        if not {"key", "status"} <= set(pq.read_schema(path).names):
            continue
        for row in pq.read_table(path).to_pylist():
            row.setdefault("shard", path.name.split(".", 1)[0])
            by_key[row["key"]] = row
    return list(by_key.values())


def shard_path(paths: CorpusPaths, shard: str) -> Path:
    """Resolve the ``shard`` column of the index (a name, a path relative to the corpus, or absolute)."""
    given = Path(shard)
    candidates = [given] if given.is_absolute() else [paths.shards_dir / given, paths.root / given]
    candidates += [paths.shards_dir / given.name, paths.shards_dir / f"{given.name}.tar"]
    for candidate in candidates:
        if candidate.exists():
            return candidate
    raise FileNotFoundError(f"shard {shard!r} of the index not found under {paths.shards_dir}")


def _read_members(fileobj, key: str) -> dict[str, bytes]:
    """Members of ``key`` (``KEY.json``, ``KEY.NNNN.jpg``) from a tar stream.

    Stops at the first member of another key (a sample's members are contiguous) and at a
    truncated stream (reading a byte range may cut the next sample), keeping what was read.
    """
    members: dict[str, bytes] = {}
    try:
        with tarfile.open(fileobj=fileobj, mode="r|") as tar:
            for info in tar:
                if not info.isfile():
                    continue
                if info.name.split(".", 1)[0] != key:  # keys contain no dots
                    if members:
                        break
                    continue
                members[info.name] = tar.extractfile(info).read()
    except tarfile.TarError:
        pass
    return members


def _complete_sample(members: dict[str, bytes], key: str) -> tuple[dict, list[bytes]] | None:
    """(meta, frames in order) when ``members`` hold the whole sample, else ``None``."""
    if f"{key}.json" not in members:
        return None
    meta = json.loads(members[f"{key}.json"])
    if meta.get("codec") == "h264":  # shards.frames: h264: the frames, decoded, as JPEGs for viewing
        return _h264_sample(members, key, meta)
    names = sorted(n for n in members if n.endswith(".jpg"))
    if len(names) != len(meta.get("frame_times", [])):
        return None
    return meta, [members[n] for n in names]


def _h264_sample(members: dict[str, bytes], key: str, meta: dict) -> tuple[dict, list[bytes]] | None:
    import simplejpeg

    from lfvila.video.h264 import decode_all

    stream = members.get(f"{key}.h264")
    if stream is None or sum(meta.get("packet_bytes", [])) != len(stream):
        return None
    try:
        frames = [simplejpeg.encode_jpeg(rgb, quality=95) for rgb in
                  decode_all(stream, meta["packet_bytes"], (meta["height"], meta["width"]))]
    except ValueError:
        return None
    return meta, frames


def read_sample_at(tar_path: Path, offset: int, size: int, key: str) -> tuple[dict, list[bytes]] | None:
    """Sample ``key`` from the byte range ``[offset, offset + size)`` of a shard (``offset`` is its
    first tar header, as in ``index.parquet``); ``None`` when the range does not hold it whole."""
    with open(tar_path, "rb") as f:
        f.seek(offset)
        chunk = f.read(size)
    return _complete_sample(_read_members(io.BytesIO(chunk), key), key)


def read_sample(root: Path, key: str) -> tuple[dict, list[bytes]]:
    """One sample's ``KEY.json`` (parsed) and its JPEG frames in order.

    Reads only the sample's byte range given by ``shards/index.parquet``; without an index (a
    build still running) or when the range does not hold the sample, it scans the shards.
    """
    paths = CorpusPaths(Path(root))
    index = read_table(paths.index, ["key", "shard", "offset", "size"])
    tars = shard_tars(paths)
    if index is not None:
        rows = index.filter(pc.equal(index.column("key"), key)).to_pylist()
        if not rows:
            raise KeyError(f"sample {key!r} is not in {paths.index}")
        tar_path = shard_path(paths, rows[0]["shard"])
        sample = read_sample_at(tar_path, rows[0]["offset"], rows[0]["size"], key)
        if sample is not None:
            return sample
        tars = [tar_path]
    for tar_path in tars:
        with open(tar_path, "rb") as f:
            sample = _complete_sample(_read_members(f, key), key)
        if sample is not None:
            return sample
    raise KeyError(f"sample {key!r} not found in the shards under {paths.shards_dir}")
