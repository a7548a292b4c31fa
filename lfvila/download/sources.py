"""Which videos a source names, and where each one can be fetched: ``(video_id, url)`` pairs.

``video_id`` is the id the manifest stage gives the video (so ``build --videos`` finds the file
``VIDEOS/<video_id>.<ext>``); the URL is

- ``hdvila``: the metadata line's ``url`` field (HD-VILA-100M gives a YouTube watch URL per video);
- ``activitynet``: YouTube, the id without ActivityNet's ``v_`` prefix;
- ``youcook2``, ``howto100m``: YouTube, the id as is (YouCook2 database keys, HowTo100M file names);
- ``urls:FILE``: a plain list, CSV or TSV with a ``video_id,url`` header (or no header), or JSON lines
  ``{"video_id": ..., "url": ...}``.

``download.url_template`` replaces every URL (mirrors, tests). Records that cannot be read are
returned as ``Unreadable`` entries (file, line, why), never dropped silently.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Iterator, NamedTuple
from urllib.parse import quote

from lfvila.errors import InputError
from lfvila.manifest.records import RawVideo

DOWNLOAD_FORMATS = ("hdvila", "activitynet", "youcook2", "howto100m", "urls")
YOUTUBE_WATCH = "https://www.youtube.com/watch?v={id}"


class VideoRequest(NamedTuple):
    video_id: str
    url: str | None  # None: the source gives no URL for this video (a "no_url" failure)
    source: str


class Unreadable(NamedTuple):
    source: str
    file: str
    line: int | None
    detail: str


def youtube_url(youtube_id: str) -> str:
    return YOUTUBE_WATCH.format(id=quote(youtube_id, safe="-_"))


def _youtube_id(fmt: str, video_id: str) -> str:
    if fmt == "activitynet" and video_id.startswith("v_"):
        return video_id[2:]  # ActivityNet names YouTube video X as v_X
    return video_id


def _from_manifest_adapter(fmt: str, path: Path) -> Iterator[VideoRequest | Unreadable]:
    # The manifest's own adapter reads the file, so ids are exactly those the manifest stage makes.
    from lfvila.manifest.sources import get_adapter

    adapter = get_adapter(fmt)
    for item in adapter.read(path, {}, None, {}):
        if isinstance(item, RawVideo):
            yield VideoRequest(item.video_id, youtube_url(_youtube_id(fmt, item.video_id)), fmt)
        elif item.clip_id is None and item.video_id is None:
            yield Unreadable(fmt, item.file, item.line, item.detail)


def _hdvila(path: Path) -> Iterator[VideoRequest | Unreadable]:
    files = sorted(p for p in path.iterdir() if p.suffix in (".jsonl", ".json")) if path.is_dir() else [path]
    for file in files:
        with open(file, encoding="utf-8", errors="replace") as f:
            for line_no, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except ValueError as e:
                    yield Unreadable("hdvila", str(file), line_no, f"invalid JSON ({e})")
                    continue
                if not isinstance(obj, dict) or not isinstance(obj.get("video_id"), str):
                    yield Unreadable("hdvila", str(file), line_no, "expected an object with a string video_id")
                    continue
                url = obj.get("url")
                yield VideoRequest(obj["video_id"], url if isinstance(url, str) and url else None, "hdvila")


def _urls(path: Path) -> Iterator[VideoRequest | Unreadable]:
    with open(path, encoding="utf-8", errors="replace", newline="") as f:
        first = f.readline()
        f.seek(0)
        if first.lstrip().startswith("{"):
            for line_no, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                    video_id, url = obj["video_id"], obj["url"]
                    if not (isinstance(video_id, str) and isinstance(url, str)):
                        raise TypeError
                except (ValueError, KeyError, TypeError):
                    yield Unreadable("urls", str(path), line_no, "expected {\"video_id\": str, \"url\": str}")
                    continue
                yield VideoRequest(video_id, url, "urls")
            return
        delimiter = "\t" if "\t" in first else ","
        for line_no, row in enumerate(csv.reader(f, delimiter=delimiter), 1):
            if not row or not "".join(row).strip():
                continue
            if line_no == 1 and [c.strip().lower() for c in row[:2]] == ["video_id", "url"]:
                continue
            if len(row) < 2 or not row[0].strip() or not row[1].strip():
                yield Unreadable("urls", str(path), line_no, "expected video_id,url")
                continue
            yield VideoRequest(row[0].strip(), row[1].strip(), "urls")


def read_requests(spec: str) -> Iterator[VideoRequest | Unreadable]:
    """The videos named by one ``FORMAT:PATH`` source, in file order."""
    from lfvila.manifest.sources import split_source_spec

    # The manifest's form rule plus the urls: format; manifest options (?text=...) do not matter here.
    fmt, path, _ = split_source_spec(spec, DOWNLOAD_FORMATS)
    path = Path(path)
    if not path.exists():
        raise InputError(f"source {spec!r}: {path} does not exist")
    if fmt == "hdvila":
        return _hdvila(path)
    if fmt == "urls":
        return _urls(path)
    return _from_manifest_adapter(fmt, path)


def apply_template(request: VideoRequest, url_template: str | None) -> VideoRequest:
    if url_template is None:
        return request
    return request._replace(url=url_template.replace("{video_id}", quote(request.video_id, safe="")))
