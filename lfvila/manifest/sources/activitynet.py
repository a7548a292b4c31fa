"""activitynet: ActivityNet Captions ``{video_id: {duration, timestamps: [[s, e], ...], sentences: [...]}}``.

Clip ids are ``<video_id>.<i>`` with i the segment's 0-based position in the release.
``?split_list=FILE`` keeps only the listed videos (e.g. collaborative-experts ``train_list.txt`` /
``val_1_list.txt``, ids as in the release: ``v_<youtube id>``); see ``_splitlist``.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

from lfvila.manifest.records import RawClip, RawVideo, Reject
from lfvila.manifest.sources._jsonobj import read_json_object
from lfvila.manifest.sources._splitlist import OPTION as SPLIT_LIST
from lfvila.manifest.sources._splitlist import keep_listed, split_list_files

IS_ASR = False
OPTIONS = (SPLIT_LIST,)
SOURCE = "activitynet"


def input_files(path: Path, options: dict) -> list[Path]:
    return [path] + split_list_files(options)


def parse_entry(video_id: str, value: object, line: int, file: str) -> RawVideo:
    if not isinstance(value, dict):
        raise ValueError("entry is not an object")
    timestamps, sentences = value.get("timestamps"), value.get("sentences")
    if not isinstance(timestamps, list) or not isinstance(sentences, list) or len(timestamps) != len(sentences):
        raise ValueError("needs timestamps and sentences lists of equal length")
    clips = []
    for i, (span, text) in enumerate(zip(timestamps, sentences)):
        start, end = (span[0], span[1]) if isinstance(span, list) and len(span) == 2 else (span, None)
        clips.append(RawClip(f"{video_id}.{i}", i, start, end, text, line))
    return RawVideo(video_id, value.get("duration"), clips, file)


def read(path: Path, options: dict, progress: Callable[[int], None] | None, stats: dict) -> Iterator[RawVideo | Reject]:
    return keep_listed(SOURCE, read_json_object(SOURCE, path, (), parse_entry, progress), options, stats)
