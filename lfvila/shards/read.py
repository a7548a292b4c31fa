"""Read samples back from shards: sequentially from a tar, or one sample by key through the index."""
from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path
from typing import Iterator


def _group(members: Iterator[tuple[str, bytes]]) -> Iterator[dict]:
    """Group ``KEY.json`` / ``KEY.NNNN.jpg`` members (consecutive per key) into sample dicts."""
    current: dict | None = None
    for name, data in members:
        key, _, ext = name.partition(".")
        if current is None or current["key"] != key:
            if current is not None:
                yield current
            current = {"key": key, "meta": None, "frames": []}
        if ext == "json":
            current["meta"] = json.loads(data)
        elif ext == "h264":  # shards.frames: h264: the frames as one stream (lfvila.video.h264.decode_all)
            current["h264"] = data
        else:
            current["frames"].append(data)  # members are written in frame order
    if current is not None:
        yield current


def iter_samples(tar_path: str | Path) -> Iterator[dict]:
    """Yield ``{"key", "meta" (the KEY.json dict), "frames" (JPEG bytes in time order)}`` per sample;
    an H.264 sample has ``"h264"`` (the stream) and no frames."""
    with tarfile.open(tar_path, "r") as tar:
        def members():
            for info in tar:
                if info.isfile():
                    yield info.name, tar.extractfile(info).read()
        yield from _group(members())


def read_sample(out: str | Path, key: str) -> dict:
    """One sample by key: seeks to its byte range in its shard using ``OUT/shards/index.parquet``."""
    import pyarrow.parquet as pq

    shard_dir = Path(out) / "shards"
    index = pq.read_table(shard_dir / "index.parquet", filters=[("key", "=", key)])
    if index.num_rows == 0:
        raise KeyError(f"{key!r} is not in {shard_dir / 'index.parquet'}")
    row = index.slice(0, 1).to_pylist()[0]
    with open(shard_dir / row["shard"], "rb") as f:
        f.seek(row["offset"])
        blob = f.read(row["size"])
    # The byte range is a sequence of complete tar members: read it as a (truncated) tar stream.
    with tarfile.open(fileobj=io.BytesIO(blob + b"\0" * 1024), mode="r") as tar:
        samples = list(_group((i.name, tar.extractfile(i).read()) for i in tar if i.isfile()))
    if len(samples) != 1 or samples[0]["key"] != key:
        raise ValueError(f"index entry of {key!r} does not point at that sample in {row['shard']}")
    return samples[0]
