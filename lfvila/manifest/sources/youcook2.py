"""youcook2: ``youcookii_annotations_trainval.json``: ``{database: {id: {duration, subset, annotations: [...]}}}``.

Each annotation is ``{segment: [s, e], id, sentence}``; clip ids are ``<video_id>.<id>``.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

from lfvila.manifest.records import RawClip, RawVideo, Reject
from lfvila.manifest.sources._jsonobj import read_json_object

IS_ASR = False
OPTIONS = ()
SOURCE = "youcook2"


def input_files(path: Path, options: dict) -> list[Path]:
    return [path]


def parse_entry(video_id: str, value: object, line: int, file: str) -> RawVideo:
    if not isinstance(value, dict) or not isinstance(value.get("annotations"), list):
        raise ValueError("entry needs an annotations list")
    clips = []
    for i, ann in enumerate(value["annotations"]):
        if not isinstance(ann, dict):
            ann = {}
        segment = ann.get("segment")
        start, end = (segment[0], segment[1]) if isinstance(segment, list) and len(segment) == 2 else (segment, None)
        ann_id = ann.get("id", i)
        clips.append(RawClip(f"{video_id}.{ann_id}", i, start, end, ann.get("sentence"), line))
    return RawVideo(video_id, value.get("duration"), clips, file)


def read(path: Path, options: dict, progress: Callable[[int], None] | None, stats: dict) -> Iterator[RawVideo | Reject]:
    return read_json_object(SOURCE, path, ("database",), parse_entry, progress)
